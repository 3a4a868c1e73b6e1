"""Gunicorn settings for monapi: ``gunicorn -c python:monapi.gunicorn_conf`` (what ``monapi
serve``, the Dockerfile, the Procfile and the systemd unit run).

gthread workers keep agents' connections alive cheaply; the worker count follows the cores
(MONAPI_WORKERS), threads per worker follow MONAPI_THREADS. Every value comes from the same
validated settings as the app. Flags given to gunicorn (``--bind 0.0.0.0:$PORT``) override them.

Before the workers start, the master also:

* migrates the configuration store and, on an empty one, adds the default fields and a first
  admin token, printed once (what ``monapi serve`` does), so that plain gunicorn starts on a new
  database;
* gives /metrics a directory for the workers' values (``PROMETHEUS_MULTIPROC_DIR``, see
  :mod:`monapi.observability`): a fresh one of its own unless the variable is set, wiped at
  start either way; a worker that exits takes its live gauges with it;
* logs in monapi's format (JSON by default), to MONAPI_LOG_FILE as well when it is set.
"""

import os
import shutil
import sys
import tempfile

from gunicorn.glogging import Logger

from monapi.settings import ConfigError, load_settings

# monapi.observability.MULTIPROC_ENV; importing that module would import prometheus_client here,
# before the variable is set, and every worker would inherit the single-process mode.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

try:
    _settings = load_settings()
except ConfigError as _exc:  # the message names the variable; a traceback would bury it
    sys.exit(f"monapi: {_exc}")

# prometheus-client picks its mode when first imported, in each worker (the app imports it):
# the variable must be set here, in the master, before any fork.
_own_metrics_dir = MULTIPROC_ENV not in os.environ
if _own_metrics_dir:
    os.environ[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="monapi-metrics-")


class MonapiGunicornLogger(Logger):  # type: ignore[misc]
    """gunicorn's own messages (start, signals, worker timeouts) in monapi's format, and in
    MONAPI_LOG_FILE too when it is set."""

    def setup(self, cfg):  # type: ignore[no-untyped-def]
        from monapi.logs import file_handler, formatter

        super().setup(cfg)
        for handler in self.error_log.handlers:
            handler.setFormatter(formatter(_settings.log_format))
        if _settings.log_file is not None:
            handler = file_handler(
                _settings.log_file,
                _settings.log_file_max_bytes,
                _settings.log_file_backups,
                _settings.log_format,
            )
            # gunicorn removes it before it sets up again (a reload)
            handler._gunicorn = True  # type: ignore[attr-defined]
            self.error_log.addHandler(handler)


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
logger_class = MonapiGunicornLogger
proc_name = "monapi"
# Gunicorn 25+ opens a control socket in ~/.gunicorn by default, and a second instance on the
# same machine would take it over. monapi does not use it.
control_socket_disable = True
preload_app = False  # each worker builds its own app: no connections cross a fork


def on_starting(server):  # type: ignore[no-untyped-def]
    """Empty the metrics directory (values of an earlier run would be added to this one's),
    then migrate and set up the configuration store."""
    from monapi.bootstrap import first_start_message, initialize

    path = os.environ[MULTIPROC_ENV]
    os.makedirs(path, exist_ok=True)
    for name in os.listdir(path):
        if name.endswith(".db"):
            os.unlink(os.path.join(path, name))
    try:
        token = initialize(_settings)
    except ConfigError as exc:
        sys.exit(f"monapi: {exc}")
    if token:
        print(first_start_message(token, f"http://{server.cfg.bind[0]}"), flush=True)


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


def child_exit(server, worker):  # type: ignore[no-untyped-def]
    """A worker is gone (exited or killed): its live gauges (writes in progress) go with it;
    its counters stay, so that totals never go down."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def on_exit(server):  # type: ignore[no-untyped-def]
    """Remove the metrics directory this configuration made."""
    if _own_metrics_dir:
        shutil.rmtree(os.environ[MULTIPROC_ENV], ignore_errors=True)
