# One place for the commands the README promises. Everything runs from a fresh clone:
# the first target that needs the virtualenv creates it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install engines serve test lint format docs bench agent-wheel clean

# Debian packages of the engines the tests start as throwaway processes.
ENGINE_PKGS := influxdb victoria-metrics chromium

$(STAMP): pyproject.toml agent/pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,postgresql]' -e ./agent
	touch $(STAMP)

install: $(STAMP)

## Set up (first time) and run monapi on the embedded default (SQLite), on 127.0.0.1:8000.
serve: $(STAMP)
	$(BIN)/monapi serve

## Install the InfluxDB, VictoriaMetrics, Chromium and sqlite3 packages the tests need, if
## missing (as
## root or with sudo); PostgreSQL and Redis are expected to be running already. Also the
## docker-compose CLI (tests/test_deploy.py validates docker-compose.yml with it), without its
## recommended docker.io: no Docker engine is installed or needed.
engines:
	@missing=""; norec=""; \
	command -v influxd >/dev/null 2>&1 || missing="$$missing influxdb"; \
	command -v victoria-metrics >/dev/null 2>&1 || missing="$$missing victoria-metrics"; \
	test -x /usr/bin/chromium || missing="$$missing chromium"; \
	command -v sqlite3 >/dev/null 2>&1 || missing="$$missing sqlite3"; \
	command -v docker-compose >/dev/null 2>&1 || norec="docker-compose"; \
	if [ -n "$$missing$$norec" ]; then \
	  echo "installing Debian packages:$$missing $$norec"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO="sudo"; \
	  else echo "cannot install$$missing $$norec: not root and no sudo (the tests will say so)"; exit 0; fi; \
	  apt_install() { \
	    $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$$@" \
	      || { $$SUDO apt-get update -q && \
	           $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$$@"; }; }; \
	  if [ -n "$$missing" ]; then apt_install $$missing || exit 1; fi; \
	  if [ -n "$$norec" ]; then apt_install --no-install-recommends $$norec || exit 1; fi; \
	fi

## Set up (first time), lint, type-check and run the whole test suite.
test: lint engines
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check src agent tests bench
	$(BIN)/ruff format --check src agent tests bench
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format src agent tests bench
	$(BIN)/ruff check --fix src agent tests bench

## Regenerate docs/configuration.md, docs/api.md and docs/openapi.json from the code (a test
## fails when they are out of date).
docs: $(STAMP)
	$(BIN)/python -m monapi.docgen

## Benchmark: gunicorn on loopback, bulk JSON ingestion and agent-sized requests.
bench: $(STAMP)
	$(BIN)/python bench/run.py

## The monapi-agent wheel (dist/), to copy to servers that have no copy of this repository.
agent-wheel: $(STAMP)
	$(BIN)/python -m pip wheel --quiet --no-deps --wheel-dir dist ./agent
	@ls dist/monapi_agent-*.whl

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
