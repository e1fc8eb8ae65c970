# The two commands of the README: `make demo` and `make test`. Each sets up the virtual
# environment with the pinned requirements first (once; redone when the requirements change).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# When make started: the demo's own timing then includes the set-up of the environment.
STARTED := $(shell date +%s)

.PHONY: demo demo-deformable demo-detr demo-dino test test-fast lint format venv clean

$(STAMP): requirements.txt requirements-dev.txt requirements-extra.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

venv: $(STAMP)

## Train and evaluate a small Deformable DETR on the embedded synthetic data set (outputs/demo/).
demo: $(STAMP)
	$(PY) tools/demo.py --started $(STARTED)

## The same model trained twice as long (outputs/demo_deformable/).
demo-deformable: $(STAMP)
	$(PY) tools/demo.py --model deformable_detr --started $(STARTED)

## The original DETR on the same data, 10 epochs (outputs/demo_detr/).
demo-detr: $(STAMP)
	$(PY) tools/demo.py --model detr --started $(STARTED)

## DINO on the same data with the demo's backbone and budget, 5 epochs (outputs/demo_dino/).
demo-dino: $(STAMP)
	$(PY) tools/demo.py --model dino --started $(STARTED)

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
