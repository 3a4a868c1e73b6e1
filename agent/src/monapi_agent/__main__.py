"""`python -m monapi_agent`: the same as the monapi-agent command."""

from .cli import main

main()
