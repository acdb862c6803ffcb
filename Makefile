# Every entry point of the project; CI calls exactly these. `make` (or `make help`) lists them: a
# target's `## ...` lines above it are what the list says of it.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed
DOCS_STAMP := $(VENV)/.docs-installed
# uv installs exactly what uv.lock pins; the same lock builds the image (deploy/Dockerfile).
UV_VERSION := 0.13.8
UV := $(VENV)/bin/uv
EXTRAS := --extra dev --extra loadtest
TEST_WORKERS ?= 2

.PHONY: help install lock run test coverage lint fmt migrate loadtest soak bench docs docs-build docs-reference clean
.DEFAULT_GOAL := help

## This list: every target and what it does.
help:
	@awk -f scripts/make-help.awk $(MAKEFILE_LIST)

$(UV):
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "$(PYTHON) not found: install Python 3.11 (or run make PYTHON=python3)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "uv==$(UV_VERSION)"

$(STAMP): pyproject.toml uv.lock | $(UV)
	$(UV) sync --locked --inexact $(EXTRAS) || { echo "uv.lock does not match pyproject.toml: run make lock"; exit 1; }
	touch $(STAMP)

## Create .venv with exactly what uv.lock pins (the dev and loadtest extras too); other targets do it first.
install: $(STAMP)

$(BENCH_STAMP): pyproject.toml uv.lock | $(UV)
	$(UV) sync --locked --inexact $(EXTRAS) --extra bench || { echo "uv.lock does not match pyproject.toml: run make lock"; exit 1; }
	touch $(BENCH_STAMP)

$(DOCS_STAMP): pyproject.toml uv.lock | $(UV)
	$(UV) sync --locked --inexact $(EXTRAS) --extra docs || { echo "uv.lock does not match pyproject.toml: run make lock"; exit 1; }
	touch $(DOCS_STAMP)

## Re-resolve uv.lock after a change to the dependencies in pyproject.toml (then commit both).
lock: $(UV)
	$(UV) lock

## Migrate and start the whole system on embedded defaults (SQLite per service, in-process stores).
run: $(STAMP)
	$(PY) -m scripts.run

## The whole suite, against real PostgreSQL and Redis, in TEST_WORKERS processes (default 2; a test
## file runs whole in one of them). make test TEST_WORKERS=0 runs it in this process.
test: $(STAMP)
	$(PY) -m pytest $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile) $(PYTEST_ARGS)

## The suite under coverage, with the processes the tests start measured too (pyproject.toml,
## [tool.coverage]); the data lands in var/coverage/, the report on the terminal and in var/coverage/html.
coverage: $(STAMP)
	rm -rf var/coverage && mkdir -p var/coverage
	$(VENV)/bin/coverage run -m pytest $(PYTEST_ARGS)
	$(VENV)/bin/coverage combine --quiet
	$(VENV)/bin/coverage html --quiet --directory var/coverage/html
	$(VENV)/bin/coverage report

## ruff check, ruff format --check, mypy strict and the import boundaries (import-linter), as CI runs them.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy gateway services shared scripts
	$(VENV)/bin/lint-imports --no-cache

## Format the code and apply ruff's fixes.
fmt: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

## The gateway benchmark (needs wrk, nginx and Redis); options go in BENCH_ARGS, e.g.
## make bench BENCH_ARGS="--seconds 10 --rounds 5" (see python -m bench.gateway --help).
bench: $(BENCH_STAMP)
	$(PY) -m bench.gateway $(BENCH_ARGS)

## The documentation site (docs/, mkdocs.yml), served with live reload at http://127.0.0.1:8080.
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve --dev-addr 127.0.0.1:8080

## The site built into var/site, every warning an error (CI runs this).
docs-build: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir var/site

## Regenerate the reference pages (settings, metrics, errors, headers) from the code; commit them
## with the change (tests/unit/test_reference.py fails while one is out of date).
docs-reference: $(STAMP)
	$(PY) -m scripts.reference

## Migrate every service's database that is not at head (SQLite in ./var unless <SERVICE>_DATABASE_URL says).
migrate: $(STAMP)
	$(PY) -m scripts.devstack migrate

## One minute of mixed traffic against the gateway at LOADTEST_HOST (default: `make run`'s; started
## here when nothing answers there); the report goes to var/loadtest/<time>/.
loadtest: $(STAMP)
	$(PY) -m loadtest $(LOADTEST_ARGS)

## Ten minutes at 70% of the measured capacity, sampling the memory of every process.
soak: $(STAMP)
	$(PY) -m loadtest --soak $(LOADTEST_ARGS)

## Remove .venv, var/ and the tools' caches.
clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
