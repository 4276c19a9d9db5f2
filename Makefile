# The two commands a new user needs: `make run` and `make test`. Everything else is optional.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
DATA   ?= shmbroker-data

.PHONY: run test test-unit test-all soak check lint bench bench-smoke bench-deps clean

$(VENV)/.stamp-base: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "shmbroker needs Python >= 3.11")'
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e .
	touch $@

$(VENV)/.stamp-dev: $(VENV)/.stamp-base
	$(PIP) install -q -e '.[dev]'
	touch $@

$(VENV)/.stamp-bench: $(VENV)/.stamp-dev
	$(PIP) install -q -e '.[dev,bench]'
	touch $@

# Start the broker on the embedded default (data in ./shmbroker-data), show a round trip, keep serving.
run: $(VENV)/.stamp-base
	$(PY) -m shmbroker.cli demo --data-dir $(DATA)

test: $(VENV)/.stamp-dev
	$(PY) -m pytest -m "not soak" -q

test-unit: $(VENV)/.stamp-dev
	$(PY) -m pytest -m "not integration and not soak" -q

test-all: $(VENV)/.stamp-dev
	$(PY) -m pytest -q

soak: $(VENV)/.stamp-dev
	$(PY) -m pytest -m soak -q

lint: $(VENV)/.stamp-dev
	$(VENV)/bin/ruff check shmbroker tests perf
	$(VENV)/bin/ruff format --check shmbroker tests perf
	$(VENV)/bin/mypy shmbroker

check: lint test

# Peers (redis-server, nats-server) come from Debian's packages when missing.
bench-deps: $(VENV)/.stamp-bench
	$(PY) -m perf.deps

bench: bench-deps
	$(PY) -m perf.run

bench-smoke: bench-deps
	$(PY) -m perf.run --smoke

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
