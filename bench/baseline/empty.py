"""The framework's own ceiling for ``bench/agents.py`` (issue 7), not monapi.

One Flask route, the same as monapi's ingestion route, ``POST /api/v1/data``, which reads the
request body (``request.get_data()``: the body must be consumed for the connection to stay
usable for the next keep-alive request, as monapi does) and answers 204 with no body. No key
check, no decoding, no storage. The benchmark runs it under monapi's own gunicorn settings
(``src/monapi/gunicorn_conf.py``: gthread, workers = cores, 8 threads, keep-alive 30 s), so
monapi's requests/s divided by this app's is the share of the framework's ceiling monapi keeps.
"""

from __future__ import annotations

from flask import Flask, Response, request

app = Flask(__name__)


@app.route("/api/v1/data", methods=["POST"])
def submit_data() -> Response:
    request.get_data()
    return Response(status=204)
