# Two commands for users: `make demo` and `make test` (see README.md).
# Both create .venv on first use and are quick no-ops for the set-up afterwards.
# `make test-min` tests the library against the declared minimum versions (constraints-min.txt,
# the lower bounds of pyproject.toml) in a second environment, .venv-min.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ccg-installed
PYTEST_ARGS ?=
MIN_VENV ?= .venv-min
MIN_PY := $(MIN_VENV)/bin/python
MIN_STAMP := $(MIN_VENV)/.ccg-installed

.PHONY: study demo test test-min lint typecheck pytest format bench clean

$(STAMP): pyproject.toml setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e ".[examples,test]"
	touch $(STAMP)

# The library alone (no `examples` extra) with the minimum torch, numpy, einops, scikit-image:
# not tests/examples, and not the doc blocks that import an examples extra (marker `extras`).
$(MIN_STAMP): pyproject.toml constraints-min.txt
	$(PYTHON) -m venv $(MIN_VENV)
	$(MIN_PY) -m pip install --quiet -c constraints-min.txt -e . \
		pytest pytest-xdist hypothesis mpmath onnx onnxscript setuptools wheel
	touch $(MIN_STAMP)

test-min: $(MIN_STAMP)
	$(MIN_PY) -m pytest -n 2 -m "not extras" --ignore=tests/examples $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) examples/train_ccg.py --preset demo

test: lint typecheck pytest

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck: $(STAMP)
	$(PY) -m mypy

pytest: $(STAMP)
	$(PY) -m pytest -n 2 $(PYTEST_ARGS)

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

bench: $(STAMP)
	for b in $(filter-out benchmarks/ablation_study.py benchmarks/graph_evidence.py,$(wildcard benchmarks/*.py)); do $(PY) $$b || exit 1; done
	$(PY) benchmarks/ablation_study.py --quick --out runs/ablation-study-quick

# The Table 4 study on the synthetic twin (docs/results.md): about 100 min on 2 cores.
study: $(STAMP)
	$(PY) benchmarks/ablation_study.py --holdout-seed 1
	$(PY) benchmarks/graph_evidence.py --glob "runs/ablation-study/*-ir+ik+kr-s*"

clean:
	rm -rf $(VENV) $(MIN_VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
