# The two commands of the README: `make demo` and `make test`. Each sets up the virtual
# environment with the pinned requirements first (once; redone when the requirements change).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo demo-deformable test test-fast lint format venv clean

$(STAMP): requirements.txt requirements-dev.txt requirements-extra.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

venv: $(STAMP)

## Train and evaluate a small DETR on the embedded synthetic data set (outputs/demo/).
demo: $(STAMP)
	$(PY) tools/demo.py

## The same with Deformable DETR (outputs/demo_deformable/).
demo-deformable: $(STAMP)
	$(PY) tools/demo.py --model deformable_detr

## Lint, format check, then the whole test suite.
test: $(STAMP) lint
	$(PY) -m pytest -q

## Everything but the end-to-end command-line runs.
test-fast: $(STAMP) lint
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf outputs .pytest_cache .ruff_cache
