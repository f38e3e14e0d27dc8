# The README's two commands: `make repro` (the main job) and `make test` (the suite).
# Both set up .venv from requirements.lock first; a second run reuses it.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# Prefect keeps its database and logs inside the repo unless the user set PREFECT_HOME.
export PREFECT_HOME ?= $(CURDIR)/.prefect
export HF_HUB_OFFLINE ?= 1
export PYTHONUNBUFFERED := 1
# Stage commands run `python -m flows.<stage>`: the venv must come first on PATH.
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup repro test lint test-scale clean-venv plots-template

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip==25.3"
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

# One Prefect server for all stages (about 1 s per stage instead of about 8 s): see flows/local_server.py.
# Then the scorecard (tasks/reporting/scorecard.py): each stage's headline figure against its target,
# the image to look at, one verdict line; also in scorecard.md. make repro keeps dvc repro's exit status.
repro: $(STAMP)
	$(BIN)/python -m flows.local_server $(BIN)/dvc repro; status=$$?; \
	$(BIN)/python -m tasks.reporting.scorecard --repro-status $$status; exit $$status

# Two pytest processes (pytest-xdist), each taking whole test files (module fixtures are built once):
# the end-to-end files spend much of their time in dvc, git and Prefect start-ups. The 12 slowest tests are listed at the end.
test: $(STAMP) lint
	$(BIN)/python -m pytest -q -rs -n 2 --dist loadfile --durations=12

# ruff (pyproject.toml [tool.ruff]): lint, and the formatter's check (`ruff format .` fixes it).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The scale profiles' chains at full network size (tests marked `scale`: configs/ffhq256_ldm.yaml
# through DreamBooth and evaluation, about 6 minutes and 10 GB of models and checkpoints on 2 cores).
# Not in `make test`, which would then pass its 15-minute budget; CI runs both.
test-scale: $(STAMP)
	$(BIN)/python -m pytest -q -rs -m scale --durations=3

clean-venv:
	rm -rf $(VENV)

# Offline page template for `dvc plots diff --html-template` (vega from npm, inlined; README
# "Comparing runs"). About 15 s the first time.
plots-template: plots_template/offline.html

plots_template/offline.html: plots_template/package-lock.json plots_template/build.py
	cd plots_template && npm ci --no-audit --no-fund --loglevel=error
	$(PY) plots_template/build.py
