# Quick start:  make run   (set up .venv, run the default experiment)
#               make test  (set up .venv, run the tests)
#               make test-fast  (the unit tier: no flow runs, torchrun, services or slow tests; ~1 min)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Metaflow refuses to run as root or an unknown user.
export USERNAME ?= monollm
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup run test test-fast clean

# The pinned requirements, then the project itself (editable), so that `import monollm` and
# `python -m monollm.compare` work from any directory.
$(VENV)/.installed: requirements.txt requirements-dev.txt requirements-cluster.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet -e .
	touch $@

setup: $(VENV)/.installed

run: setup
	$(PY) flows/mono_flow.py run

# every test (CI: .ci/run); the 15 slowest are listed at the end
test: setup
	$(PY) -m pytest -q --durations=15

# the markers are given in tests/conftest.py and registered in pyproject.toml
FAST := not flow and not distributed and not cluster and not slow
test-fast: setup
	$(PY) -m pytest -q -m "$(FAST)"

clean:
	rm -rf $(VENV) .metaflow .pytest_cache
