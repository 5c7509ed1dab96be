# agp-mesh — every command a user types. `make help` lists them.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
QUICK  ?=
export PYTHONDONTWRITEBYTECODE := 1

.DEFAULT_GOAL := help
.PHONY: help install demo test test-fast lint proto bench bench-peers chaos browser clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | sort | \
	  awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev,bench]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install agp-mesh with its dev tools

demo: $(STAMP) ## run the main job on embedded defaults: a local mesh, every pattern, clean shutdown
	$(PY) -m mesh.cli demo

test: $(STAMP) lint ## lint, then every test over real sockets and processes
	$(PY) -m pytest -q -p no:cacheprovider

test-fast: $(STAMP) ## the tests without lint
	$(PY) -m pytest -q -p no:cacheprovider -x

lint: $(STAMP) ## ruff over the code; the generated proto module is checked for drift by a test
	$(VENV)/bin/ruff check $(wildcard proto mesh router discovery security agents bench tests examples)

proto: $(STAMP) ## regenerate proto/agp_pb2.py from proto/agp.proto
	$(PY) -m proto.generate

bench: $(STAMP) ## throughput and latency of every pattern beside raw pyzmq (QUICK=1 for a short run)
	$(PY) -m bench $(if $(QUICK),--quick,)

bench-peers: $(STAMP) ## the same work over gRPC (and Redis pub/sub when redis-server is installed)
	$(PY) -m bench.peers $(if $(QUICK),--quick,)

chaos: $(STAMP) ## chaos soak: kills, router restarts, a paused subscriber under 10,000 req/s + 20,000 msg/s for 60 s (SHORT=1: the CI form)
	$(PY) -m bench.chaos $(if $(SHORT),--short,)

browser: $(STAMP) ## install headless Chromium (Debian's package) for the dashboard test
	$(PY) tests/observability/browser.py install

clean: ## remove the venv and caches
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .mypy_cache
