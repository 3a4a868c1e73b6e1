# monapi container image: gunicorn serving monapi, as an unprivileged user.
#
#   docker build -t monapi .
#   docker run -d -p 127.0.0.1:8000:8000 -v monapi-data:/var/lib/monapi \
#       -e MONAPI_SECRET_KEY=... -e MONAPI_KEY_PEPPER=... monapi
#
# See docs/deployment.md. tests/test_deploy.py parses this file and runs its CMD and HEALTHCHECK.

# Stage 1: build monapi's wheel and the wheels of every dependency (with the PostgreSQL extra).
FROM python:3.11-slim-bookworm AS wheels
WORKDIR /src
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# README.md is the package's long description: setuptools needs it to build the wheel.
COPY pyproject.toml README.md ./
COPY src ./src
RUN python -m pip wheel --wheel-dir /wheels '.[postgresql]'

# Stage 2: the runtime. It installs stage 1's wheels offline; the build tree and pip's cache stay
# behind (the wheel files remain in the COPY layer, about 15 MB).
FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    MONAPI_BIND=0.0.0.0:8000 \
    MONAPI_DATA_DIR=/var/lib/monapi
# A fixed numeric id, so that a volume or bind mount can be prepared for it and Kubernetes'
# runAsNonRoot can check it without reading /etc/passwd.
RUN groupadd --system --gid 10001 monapi \
    && useradd --system --uid 10001 --gid monapi --home-dir /var/lib/monapi \
       --no-create-home --shell /usr/sbin/nologin monapi \
    && install -d -o monapi -g monapi -m 0700 /var/lib/monapi
COPY --from=wheels /wheels /tmp/wheels
# --no-index: only what stage 1 built is installed, nothing is fetched here.
RUN python -m pip install --no-index --find-links /tmp/wheels 'monapi[postgresql]' \
    && rm -rf /tmp/wheels
WORKDIR /var/lib/monapi
VOLUME ["/var/lib/monapi"]
USER 10001:10001
EXPOSE 8000
# The image has no curl: Python asks /healthz on the port of MONAPI_BIND (an HTTP error or a
# refused connection raises, and the exit status 1 marks the container unhealthy).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('MONAPI_BIND', '0.0.0.0:8000').rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4)"]
# gunicorn's master migrates the database and does the first-start set-up before the workers
# start (printing the first admin token to the log), as `monapi serve` does.
CMD ["gunicorn", "-c", "python:monapi.gunicorn_conf"]
