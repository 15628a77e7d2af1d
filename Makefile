# The loyalty suite's commands. `make run` and `make test` work on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BUF := npx --yes @bufbuild/buf@1.75.0
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: venv run test soak lint protos protos-check buf-lint bench up down migration clean citus-ddl

$(VENV)/.installed: requirements.lock requirements-dev.lock pyproject.toml protos/python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.lock
	$(PY) -m pip install --quiet --no-deps -e protos/python -e .
	touch $@

venv: $(VENV)/.installed

protos/python/loyalty/__init__.py: | venv
	$(PY) tools/gen_protos.py

## Start the four services on the embedded SQLite default (Ctrl-C stops them).
run: venv protos/python/loyalty/__init__.py
	$(PY) -m tools.run_local

## The whole test suite, on SQLite and PostgreSQL.
test: venv
	$(PY) -m pytest tests

## A longer kill -9 soak of the compose stack on PostgreSQL (3,000 operations, 10 SIGKILLs; minutes).
soak: venv
	$(PY) -m tests.soak

## ruff, mypy --strict, generated stubs up to date, buf lint.
lint: venv protos-check buf-lint
	ruff check .
	ruff format --check .
	mypy services tests tools bench

protos: venv
	$(PY) tools/gen_protos.py

## Rewrite deploy/citus/<service>.sql (table placement on Citus) from the models and services/common/citus.py.
citus-ddl: venv
	$(PY) -m tools.citus_ddl

protos-check: venv
	$(PY) tools/gen_protos.py --check

buf-lint:
	cd protos && $(BUF) lint

## Benchmarks as ratios to baselines measured in the same run; writes bench/results/.
bench: venv
	$(PY) -m bench

## A new Alembic revision from model changes: make migration SERVICE=points MSG="add tiers"
migration: venv
	$(PY) tools/new_migration.py $(SERVICE) -m "$(MSG)"

## The compose stack under a Docker engine.
up:
	docker compose -f deploy/compose.yaml up --build

down:
	docker compose -f deploy/compose.yaml down

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache .hypothesis
