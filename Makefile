# One place for the commands the README promises. Everything runs from a fresh clone:
# the first target that needs the virtualenv creates it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install serve test lint format bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,postgresql]'
	touch $(STAMP)

install: $(STAMP)

## Set up (first time) and run monapi on the embedded default (SQLite), on 127.0.0.1:8000.
serve: $(STAMP)
	$(BIN)/monapi serve

## Set up (first time), lint, type-check and run the whole test suite.
test: lint
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

## Benchmark: gunicorn on loopback, bulk JSON ingestion and agent-sized requests.
bench: $(STAMP)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
