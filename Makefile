# The two commands: `make demo` and `make test`. Each installs what it needs: uv (pinned, from PyPI,
# into .tools/), then the locked environment (uv.lock) into .venv/, and Azurite (npm, locked by
# devstack/azurite/package-lock.json) into devstack/azurite/node_modules/.
UV_VERSION := 0.13.9
# The interpreter of the project's environment: 3.11 by default; 3.12 and 3.13 work too
# (PYTHON=python3.12 make test). uv never downloads one.
PYTHON ?= python3.11
UV := .tools/bin/uv
NPM ?= npm
# Touched after `npm ci`: reinstalls when node_modules/ is gone or the lock file changed.
AZURITE_STAMP := devstack/azurite/node_modules/.installed
export UV_PYTHON_DOWNLOADS := never
PACKAGES := flows tasks blocks pipelines deployments devstack bench tests
# The BigQuery emulator's own environment (it pins sqlglot<30.12; the project uses 30.30) and the
# DuckDB extensions it loads, installed from their PyPI wheels (it cannot download them at start-up).
BQEMULATOR := devstack/bqemulator

.PHONY: demo test test-end-to-end test-image docker-engine sync services lint clean

demo: sync
	$(UV) run --locked python -m devstack.demo

# Two pytest runs at once (tests/run_suite.py): tests/multihost, whose timed scenario mostly waits on
# Prefect's 60 s lease and heartbeat window, beside the rest on TEST_WORKERS pytest-xdist workers
# sharing one Prefect server. Many tests wait (leases, polling), so 4 workers fill 2 cores (measured on
# 2 cores: 237-244 s with 4, 284 s with 3, 264 s with 5). The slowest tests of each run are listed.
TEST_WORKERS ?= 4
test: sync services
	$(UV) run --locked python tests/run_suite.py --workers $(TEST_WORKERS)

# The tests marked end_to_end: `make demo` and docs/getting-started.md run whole, each on its own Prefect
# server and stack (minutes each, mostly waiting on runs), side by side. CI runs them after `make test`.
test-end-to-end: sync
	$(UV) run --locked python -m pytest -m end_to_end -n 2 --durations=5

# The image tests (tests/image): the Dockerfile built by `prefect deploy --prefect-file prefect.docker.yaml`,
# a Docker worker running the shipped deployments in containers on the local stack (docs/deploy.md).
# Minutes: the Dockerfile's base image made with debootstrap when the engine lacks it, then the build (on
# overlay2 where the kernel allows it, else on vfs, which copies every layer whole).
# The engine started here keeps its images under /tmp/analytics-flows-docker (ANALYTICS_FLOWS_DOCKER_STATE)
# between runs. The time of each part is printed at the end. CI runs it after `make test`.
test-image: sync docker-engine
	$(UV) run --locked python -m pytest tests/image --durations=5

# A Docker engine and debootstrap for the image tests: Debian's docker.io and debootstrap, installed when
# missing (apt-get needs root, as on CI). The tests start dockerd themselves when no engine answers.
docker-engine:
	@if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io debootstrap; \
	fi

# PostgreSQL and Redis for the multi-host tests (a Prefect server as teams run it): Debian's packages,
# installed when missing (apt-get needs root, as on CI). Elsewhere install a PostgreSQL >= 14.9 and a
# redis-server yourself, and set POSTGRES_BINDIR and REDIS_SERVER if they are not where Debian puts them.
services:
	@if ! { [ -n "$$POSTGRES_BINDIR" ] || command -v postgres >/dev/null || ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; } \
	    || ! { [ -n "$$REDIS_SERVER" ] || command -v redis-server >/dev/null; }; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql redis-server; \
	fi

lint: sync
	$(UV) run --locked ruff check .
	$(UV) run --locked ruff format --check .

# Bytecode is compiled at install (the locked packages, then the project's own modules), so that no
# process compiles its imports again, even where PYTHONDONTWRITEBYTECODE is set (as in many CI images):
# that took `import prefect` from 3.5 s to 1.7 s of CPU here, in each of the suite's many subprocesses.
sync: $(UV) $(AZURITE_STAMP)
	$(UV) sync --locked --python $(PYTHON) --compile-bytecode
	$(UV) sync --locked --project $(BQEMULATOR) --python $(PYTHON) --compile-bytecode --quiet
	$(BQEMULATOR)/.venv/bin/python $(BQEMULATOR)/install_extensions.py $(BQEMULATOR)/.home
	$(UV) run --locked python -m compileall -q -j 0 -x 'node_modules|\.venv' $(PACKAGES)

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/python -m pip install --quiet "uv==$(UV_VERSION)"

$(AZURITE_STAMP): devstack/azurite/package.json devstack/azurite/package-lock.json
	$(NPM) ci --prefix devstack/azurite --no-audit --no-fund
	touch $@

clean:
	rm -rf .venv .tools .pytest_cache .ruff_cache devstack/azurite/node_modules $(BQEMULATOR)/.venv $(BQEMULATOR)/.home
	find $(PACKAGES) -name __pycache__ -prune -exec rm -rf {} +
