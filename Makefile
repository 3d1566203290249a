# Quick start:  make run   (set up .venv, run the default experiment)
#               make test  (set up .venv, run the tests)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Metaflow refuses to run as root or an unknown user.
export USERNAME ?= monollm
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup run test clean

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

test: setup
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) .metaflow .pytest_cache
