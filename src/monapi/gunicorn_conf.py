"""Gunicorn settings for monapi (``monapi serve`` passes this file with -c).

gthread workers keep agents' connections alive cheaply; the worker count follows the cores
(MONAPI_WORKERS), threads per worker follow MONAPI_THREADS. Every value comes from the same
validated settings as the app.
"""

from monapi.settings import load_settings

_settings = load_settings()

wsgi_app = "monapi.wsgi:app"
bind = _settings.bind
workers = _settings.workers
threads = _settings.threads
worker_class = "gthread"
worker_connections = 1000
keepalive = 30  # agents push every few seconds on one connection
timeout = 60
graceful_timeout = 30
max_requests = 0
accesslog = None
errorlog = "-"
loglevel = _settings.log_level.lower()
proc_name = "monapi"
# Gunicorn 25+ opens a control socket in ~/.gunicorn by default, and a second instance on the
# same machine would take it over. monapi does not use it.
control_socket_disable = True
preload_app = False  # each worker builds its own app: no connections cross a fork


def post_worker_init(worker):  # type: ignore[no-untyped-def]
    """The app is built (monapi.wsgi, on load): move everything made so far out of the garbage
    collector's sight. A full collection then scans what requests make, not the ~100,000
    objects of the imports and the app, which cost a request ~50 ms whenever it ran."""
    import gc

    gc.freeze()


def worker_exit(server, worker):  # type: ignore[no-untyped-def]
    """Write buffered last-seen times before the worker goes."""
    import monapi.wsgi as w
    from monapi.app import shutdown

    app = w.__dict__.get("_app")
    if app is not None:
        shutdown(app)
