# `make demo`, `make test`, `make docs` and `make bench` each set up the virtual environment they
# need, then run.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# the demo runs sdessm as a user installs it (a regular, not an editable, install), in its own
# environment, reinstalled when a source file changes
DEMO_VENV ?= .venv-demo
DEMO_BIN := $(DEMO_VENV)/bin
SOURCES := $(shell find src models csrc -name '*.py' -o -name '*.csv' -o -name '*.md' -o -name '*.cc')
# the compiled kernels (sdessm.compiled), built by setup.py when sdessm is installed
KERNELS := setup.py $(shell find csrc -name '*.cc')

.PHONY: demo test lint docs bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(DEMO_BIN)/python:
	$(PYTHON) -m venv $(DEMO_VENV)
	$(DEMO_BIN)/python -m pip install --quiet --upgrade pip

$(DEMO_VENV)/.installed: pyproject.toml setup.py $(SOURCES) | $(DEMO_BIN)/python
	$(DEMO_BIN)/python -m pip install --quiet .
	$(DEMO_BIN)/python -m pip install --quiet --no-deps --force-reinstall .
	touch $@

$(VENV)/.installed-test-docs: pyproject.toml $(KERNELS) | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[test,docs]"
	touch $@

$(VENV)/.installed-bench: pyproject.toml $(KERNELS) | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	touch $@

demo: $(DEMO_VENV)/.installed
	$(DEMO_BIN)/sdessm demo --out demo-output

lint: $(VENV)/.installed-test-docs
	$(BIN)/ruff check src tests models benchmarks docs notebooks

# lint, then the tests, then the documentation (executed notebooks included)
test: $(VENV)/.installed-test-docs lint
	$(BIN)/python -m pytest -n auto --durations=10
	$(MAKE) --no-print-directory docs

# executes every notebook into docs/notebooks/, then builds the site into site/ (warnings fail)
docs: $(VENV)/.installed-test-docs
	$(BIN)/python notebooks/execute.py
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

# sdessm next to dynamax, pykalman and statsmodels, same data (about 15 minutes on 2 cores), then
# the time to the maximum-likelihood estimate (about 40 minutes on one core);
# `make bench BENCH_ARGS=--quick` runs subsets (the other options of BENCH_ARGS are run.py's)
bench: $(VENV)/.installed-bench
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/time_to_mle.py $(filter --quick,$(BENCH_ARGS))

clean:
	rm -rf $(VENV) $(DEMO_VENV) .venv-* demo-output fit-output sample-output compare-output .pytest_cache site \
		docs/notebooks \
		.cache/mkdocs-jupyter
