# HXO on one machine: `make run` (web server + one django-q2 cluster, SQLite, ORM broker),
# `make run-scaled` (PostgreSQL + Redis, several clusters) and `make test`. Each runs
# `make setup` first, which is idempotent and quick the second time.
# See README.md for the environment variables.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
# pip runs again only when pyproject.toml is newer than this stamp.
DEPS_STAMP := $(VENV)/.hxo-deps-installed
HTMX_NPM := node_modules/htmx.org/dist/htmx.min.js
HTMX := static/vendor/htmx.min.js
ADDR ?= 127.0.0.1:8000
PYTEST_ARGS ?=
# Setup and run are for a development machine: DEBUG on unless the environment says otherwise
# (with DEBUG off, settings require a SECRET_KEY).
MANAGE := DEBUG=$${DEBUG:-1} $(PY) manage.py

# Hook for the demo workspace: runs `manage.py hxo_demo` once runs_app has that command
# (a later issue); until then `make demo` is a no-op.
DEMO_COMMAND := runs_app/management/commands/hxo_demo.py

.PHONY: setup run run-scaled test test-real lint demo ci bench bench-readme registry-docs

setup: $(DEPS_STAMP) $(HTMX) .env
	@$(MANAGE) migrate --noinput
	@$(MANAGE) hxo_load_registry
	@$(MANAGE) hxo_demo_users
	@$(MAKE) --no-print-directory demo

$(PY):
	$(PYTHON) -m venv $(VENV)

# A development .env, written once and never overwritten (no prerequisites): DEBUG=1 and a
# random SECRET_KEY that the web server, the workers and every manage.py command of this
# checkout read through settings (python-dotenv). Git-ignored; delete it to get a new key.
.env: | $(PY)
	@umask 077 && $(PY) -c "import secrets; print('# Written by make setup for development; never committed.'); print('DEBUG=1'); print('SECRET_KEY=' + secrets.token_urlsafe(50))" > $@
	@echo "wrote .env (DEBUG=1, a random SECRET_KEY)"

$(DEPS_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --disable-pip-version-check -e ".[dev]"
	@touch $@

# Only when missing: npm gives installed files a fixed 1985 mtime, so timestamps can't tell.
$(HTMX_NPM):
	@command -v npm >/dev/null || { echo "make setup needs npm (Node.js) for htmx"; exit 1; }
	npm ci --no-audit --no-fund

$(HTMX): $(HTMX_NPM)
	@mkdir -p $(@D)
	cp $< $@

demo: $(DEPS_STAMP)
	@if [ -f $(DEMO_COMMAND) ]; then $(MANAGE) hxo_demo; else echo "demo: nothing to set up yet"; fi

run: setup
	@DEBUG=1 $(PY) bin/hxo-run $(ADDR)

# Scaled mode on this machine: PostgreSQL + the Redis broker, HXO_CLUSTERS worker clusters
# (default 2) standing for worker hosts. DATABASE_URL and REDIS_URL are honoured when set; the
# database is created when missing. Ctrl-C drains: each cluster finishes what it holds.
SCALED_DATABASE_URL := $(or $(DATABASE_URL),postgres://postgres@127.0.0.1:5432/hxo)
SCALED_REDIS_URL := $(or $(REDIS_URL),redis://127.0.0.1:6379/0)
HXO_CLUSTERS ?= 2
SCALED_ENV := DATABASE_URL=$(SCALED_DATABASE_URL) HXO_BROKER=redis REDIS_URL=$(SCALED_REDIS_URL)

run-scaled: $(DEPS_STAMP) $(HTMX)
	@$(SCALED_ENV) $(PY) bin/hxo-services
	@$(SCALED_ENV) $(MAKE) --no-print-directory setup
	@$(SCALED_ENV) DEBUG=1 $(PY) bin/hxo-run --clusters $(HXO_CLUSTERS) --web gunicorn $(ADDR)

# The whole suite, the real-material tier included (tests/realmaterial: offline it skips with
# one message; `PYTEST_ARGS="-m 'not real_material'"` leaves it out).
test: setup
	$(BIN)/pytest $(PYTEST_ARGS)

# Only the real-material tier: fetches (or reuses from $$HXO_REAL_MATERIAL_CACHE) the pinned
# packages, then runs every kind over them.
test-real: $(DEPS_STAMP)
	-$(PY) -m tests.realmaterial.material
	$(BIN)/pytest -m real_material tests/realmaterial $(PYTEST_ARGS)

# docs/registry.md from a freshly migrated registry (SQLite in a temporary HXO_VAR_DIR), so it
# documents the registry as shipped rather than this machine's edits; a test fails when it is
# out of date.
registry-docs: $(DEPS_STAMP)
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	export DATABASE_URL= HXO_VAR_DIR="$$tmp" && \
	$(MANAGE) migrate --noinput -v0 && $(MANAGE) hxo_registry docs

lint: $(DEPS_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

ci:
	.ci/run

# Benchmarks as ratios against baselines measured in the same run (bench/run.py);
# QUICK=1 shrinks the generated workloads and Django's docs (a third) to finish within three
# minutes; every goal is met, missed, or not_judged with why (JUDGE_UNDER_LOAD=1 judges
# timed goals even when other processes used more than 25% of the CPU).
bench: setup
	$(PY) bench/run.py $(if $(filter 1,$(QUICK)),--quick,) $(if $(filter 1,$(JUDGE_UNDER_LOAD)),--judge-under-load,)

# The README's Performance table, regenerated from bench/results/latest.json.
bench-readme:
	$(PY) bench/readme.py
