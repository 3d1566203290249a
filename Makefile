# Quick start:  make run   (set up .venv, run the default experiment; SEED=N, CONFIG=config/other.toml)
#               make test  (set up .venv, run the tests)
#               make test-fast  (the unit tier: no flow runs, torchrun, services or slow tests; 2-3 min)
# After a run:  make card RUN=ID        the experiment card as report.html (RUN left out: your latest run;
#                                       STEP=attack/TASK: an attack's card; OUT=file.html)
#               make cards RUN=ID       every card of the run in cards-ID/, its index.html opening on the experiment
#                                       card, a menu naming each card's step and attack (OUT=folder)
#               make compare            the runs like the latest one, across seeds (RUNS="ID ID ..."; ARGS=...)
#               make resume RUN=ID      go on from the step that failed or was interrupted (RUN left out: the latest)
#               make summary RUN=ID     print a run's console summary, every table, without the log prefixes
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Metaflow refuses to run as root or an unknown user.
export USERNAME ?= monollm
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup run card cards compare resume summary venv test test-fast clean

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
	$(PY) flows/mono_flow.py $(if $(CONFIG),--config config $(CONFIG)) run $(if $(SEED),--seed $(SEED))

# The commands a run prints at its end. They use the venv as it is (no reinstall): `make setup` made it.
venv:
	@test -x $(PY) || { echo "no $(PY): run make setup first" >&2; exit 2; }

card: venv
	$(PY) flows/mono_flow.py card get $(if $(RUN),$(RUN)/)$(or $(STEP),join_attacks) \
		$(if $(filter attack%,$(STEP)),--id attack) $(or $(OUT),$(if $(STEP),$(subst /,-,$(STEP)).html,report.html))

cards: venv
	$(PY) -m monollm.browse $(RUN) $(if $(OUT),--out $(OUT))

compare: venv
	$(PY) -m monollm.compare $(RUNS) $(ARGS)

resume: venv
	$(PY) flows/mono_flow.py resume $(if $(RUN),--origin-run-id $(RUN))

summary: venv
	@test -n "$(RUN)" || { echo "make summary RUN=ID: name the run" >&2; exit 2; }
	$(PY) -c "from metaflow import Run, namespace; namespace(None); print(Run('MonoFlow/$(RUN)').data.summary)"

# every test (CI: .ci/run); the 15 slowest are listed at the end
test: setup
	$(PY) -m pytest -q --durations=15

# the markers are given in tests/conftest.py and registered in pyproject.toml
FAST := not flow and not distributed and not cluster and not slow
test-fast: setup
	$(PY) -m pytest -q -m "$(FAST)"

clean:
	rm -rf $(VENV) .metaflow .pytest_cache
