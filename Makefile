# One place for the commands the README promises. Everything runs from a fresh clone:
# the first target that needs the virtualenv creates it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install engines serve test lint format bench agent-wheel clean

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

## Install the InfluxDB, VictoriaMetrics and Chromium packages the tests need, if missing (as
## root or with sudo); PostgreSQL and Redis are expected to be running already.
engines:
	@missing=""; \
	command -v influxd >/dev/null 2>&1 || missing="$$missing influxdb"; \
	command -v victoria-metrics >/dev/null 2>&1 || missing="$$missing victoria-metrics"; \
	test -x /usr/bin/chromium || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO="sudo"; \
	  else echo "cannot install$$missing: not root and no sudo (the tests will say so)"; exit 0; fi; \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing \
	    || { $$SUDO apt-get update -q && \
	         $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; }; \
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

## Benchmark: gunicorn on loopback, bulk JSON ingestion and agent-sized requests.
bench: $(STAMP)
	$(BIN)/python bench/run.py

## The monapi-agent wheel (dist/), to copy to servers that have no copy of this repository.
agent-wheel: $(STAMP)
	$(BIN)/python -m pip wheel --quiet --no-deps --wheel-dir dist ./agent
	@ls dist/monapi_agent-*.whl

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
