"""monapi-agent: collects a server's metrics and pushes them to monapi (no server imports)."""

__version__ = "0.1.0"
