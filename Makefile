# MediaLens: the few commands a person types. `make help` lists them.

.DEFAULT_GOAL := help
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

UV ?= uv
#: Extra pytest arguments, e.g. `make test PYTEST_ARGS="-k upload -x"`.
PYTEST_ARGS ?=
#: pytest-xdist processes to run the tests on (CI's too); 0: the test process alone. Each has its own
#: database, vhost, Redis prefix and MongoDB-wire server; the few tests that stop RabbitMQ run alone
#: (tests/fixtures/alone.py), and each module runs on one (`--dist loadfile`: a module's stack of processes
#: is started once; pytest-xdist 3.8's `xdist_group` does nothing on pytest 9.2). Two halve the run on two
#: cores (13 minutes). A worker lost (pytest-timeout ends a test past 300 s with its process) ends the run
#: (`--max-worker-restart=0`: with `loadfile`, pytest-xdist 3.8 hangs after replacing one) and its stacks
#: are printed (tests/fixtures/stacks.py).
PYTEST_WORKERS ?= 2

.PHONY: help install dev demo test chaos deploy-check bench bench-video bench-audio bench-data bench-platform lint typecheck check migrate up down clean

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

install: ## Install uv if missing, then the workspace and its dev tools into .venv
	@command -v $(UV) >/dev/null || python3 -m pip install --quiet uv
	@# Compiled now, not at each process's first import: where PYTHONDONTWRITEBYTECODE is set (CI's
	@# machines) nothing is ever cached otherwise, and every process compiled its imports from source
	@# (5.6 s before a service's `--help`, 1.7 s with the bytecode; the suite starts hundreds of them).
	@if [ -f uv.lock ]; then $(UV) sync --frozen --compile-bytecode; else $(UV) sync --compile-bytecode; fi
	@$(UV) run --no-sync python -m compileall -q -j 0 shared/src services/*/src scripts >/dev/null

dev: install ## Run the whole stack locally (needs PostgreSQL, Redis, RabbitMQ); Ctrl-C stops it
	$(UV) run python -m scripts.dev

demo: install ## Run a video, an audio and a data job through the stack (starts it if it is not up)
	$(UV) run python -m scripts.demo

test: install ## Run every test against the real local servers, with coverage
	$(UV) run pytest -n $(PYTEST_WORKERS) --dist loadfile --max-worker-restart=0 --cov --cov-report=term-missing:skip-covered --cov-report=xml $(PYTEST_ARGS)

chaos: ## The chaos suite at full size (1,000 jobs, 30 kills, 3 broker cuts and 3 stops, a job past the consumer timeout)
	CHAOS_JOBS=1000 CHAOS_KILLS=30 CHAOS_CUTS=3 CHAOS_BROKER_STOPS=3 CHAOS_BROKER_STOP_S=20 CHAOS_LONG_S=75 $(UV) run pytest tests/chaos -p no:cacheprovider -s -q

deploy-check: ## Validate compose, Kubernetes manifests, blue-green scripts, alert rules and dashboard offline
	bash deploy/validate.sh

bench: bench-video bench-audio bench-data bench-platform ## Every benchmark (never part of `make test`); figures in bench/results/

bench-video: ## Scene detection against PySceneDetect and a decode-only pass
	$(UV) run --group bench python -m bench.video

bench-audio: ## Loudness against FFmpeg's ebur128 and pyloudnorm
	$(UV) run --group bench python -m bench.audio

bench-data: ## Table profiling against ydata-profiling, pandas and Polars
	$(UV) run --group bench python -m bench.data

#: Jobs of the pipeline (each system) and of the soak in `make bench-platform`; the issue's full soak is 20000.
JOBS ?= 2000
SOAK ?= 2000
bench-platform: ## Gateway, pipeline, memory and pool against Celery and a bare FastAPI (SOAK=20000 for the full soak)
	$(UV) run --group bench python -m bench.platform --jobs $(JOBS) --soak $(SOAK)

lint: ## ruff: lint and formatting
	$(UV) run ruff check .
	$(UV) run ruff format --check .

typecheck: ## mypy (strict) on all packages and scripts
	$(UV) run mypy shared/src services/*/src scripts

check: lint typecheck deploy-check test ## lint, typecheck, deployment checks and test, as CI does

migrate: ## Apply the database migrations (MEDIALENS_POSTGRES_URL)
	$(UV) run medialens-migrate

up: ## Build and start the whole stack in Docker (docker compose)
	docker compose up -d --build

down: ## Stop the Docker stack
	docker compose down

clean: ## Remove caches, coverage data and the dev MongoDB data (.dev/)
	rm -rf .pytest_cache .mypy_cache .ruff_cache htmlcov coverage.xml .coverage .coverage.* .dev
	find . -path ./.venv -prune -o -type d -name __pycache__ -exec rm -rf {} +
