# `make demo` and `make test` each set up the virtual environment they need, then run.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

demo: $(VENV)/.installed
	$(BIN)/sdessm demo --out demo-output

lint: $(VENV)/.installed-test
	$(BIN)/ruff check src tests models benchmarks

test: $(VENV)/.installed-test lint
	$(BIN)/python -m pytest -n auto --durations=10

clean:
	rm -rf $(VENV) .venv-* demo-output fit-output sample-output .pytest_cache
