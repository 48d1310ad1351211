# The two set-up commands of the README on a fresh machine: `make demo` (the core install)
# and `make test` (the core, the baselines and plots extras, pytest and ruff).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-all lint format install bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Stamps re-run the install whenever pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed

# --overwrite: `make demo` may be run again; it replaces its own earlier output only.
demo: $(VENV)/.installed
	$(BIN)/metaprior demo --overwrite

test: $(VENV)/.installed-dev
	$(BIN)/pytest -m "not slow" -q

test-all: $(VENV)/.installed-dev
	$(BIN)/pytest -q

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests benchmarks examples reproductions

format: $(VENV)/.installed-dev
	$(BIN)/ruff format src tests benchmarks examples reproductions

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/bench_operators.py
