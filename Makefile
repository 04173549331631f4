# The two commands of the README's quick start are `make demo` and `make test`; both set up the
# virtual environment first (once, again when pyproject.toml or constraints.txt change).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test lint test-xla

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

demo: setup
	$(PY) -m lightning_influence.demo

test: setup
	$(PY) -m pytest

# torch-xla needs its own torch (see README "TPU / XLA"): the script builds that environment once
# in ~/.cache/lightning-influence and runs the tests marked `xla` on the PJRT CPU device.
test-xla:
	bash scripts/test_xla.sh

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
