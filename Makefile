# ferrule's tasks. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: help
help: ## list the targets
	@grep -E '^[a-z-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): requirements/dev.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements/dev.txt
	@touch $(STAMP)

.PHONY: venv
venv: $(STAMP) ## create .venv with the test and benchmark dependencies

.PHONY: dev
dev: $(STAMP) ## build the extension (release) into .venv
	VIRTUAL_ENV=$(abspath $(VENV)) $(VENV)/bin/maturin develop --release -q

.PHONY: demo
demo: dev ## build, then run the demo (python -m ferrule)
	$(PY) -m ferrule

.PHONY: lint
lint: $(STAMP) ## rustfmt, clippy, ruff, mypy and the stub check
	cargo fmt --check
	cargo clippy --all-targets -q -- -D warnings
	$(VENV)/bin/ruff check python tests benches
	$(VENV)/bin/ruff format --check python tests benches
	$(VENV)/bin/mypy python/ferrule
	$(VENV)/bin/python -m mypy.stubtest ferrule._native --allowlist stubtest-allowlist.txt

.PHONY: cargo-test
cargo-test: ## Rust unit tests of the pure cores
	cargo test -q --lib

.PHONY: loom
loom: ## model-check the lock-free protocols with loom (every interleaving of each model)
	RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test -q --release --lib loom

.PHONY: redis-server
redis-server: ## install redis-server (Debian package) if missing; the Redis tests skip without it
	@command -v redis-server >/dev/null 2>&1 || { \
	  SUDO=; [ "$$(id -u)" -eq 0 ] || SUDO=sudo; \
	  echo "installing redis-server (apt-get)"; \
	  { $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq redis-server >/dev/null; } \
	    || echo "could not install redis-server: the ferrule.redis tests will be skipped"; }

.PHONY: pytest
pytest: dev redis-server ## the pytest suite and the benchmark smoke run on this interpreter
	$(PY) -m pytest -q -p no:cacheprovider tests
	$(PY) -m pytest -q -p no:cacheprovider benches --benchmark-disable

# `make fuzz SECONDS=600 SEED=7`: the long randomized run (the bounded sweep is in pytest).
SECONDS ?= 180
SEED ?= 0

.PHONY: fuzz
fuzz: dev ## bad-input fuzz of the whole API: SECONDS (180) of random cases from SEED (0), then threads
	$(PY) tests/fuzz_api.py --seconds $(SECONDS) --seed $(SEED)

.PHONY: check
check: dev lint cargo-test loom ## every static check, the Rust tests and the loom models

.PHONY: free-threaded
free-threaded: redis-server ## the whole pytest suite on a free-threaded CPython 3.13t, GIL off
	bash scripts/free-threaded.sh test

.PHONY: wheels
wheels: $(STAMP) ## build the GIL and cp313t wheels and smoke-test each in a clean venv
	bash scripts/wheels.sh

.PHONY: test
test: check pytest free-threaded wheels ## everything CI runs: lints, cargo test, pytest (GIL and free-threaded), wheels

.PHONY: bench
bench: dev ## the real benchmark run (release build, peers side by side)
	$(PY) -m pytest benches --benchmark-only --benchmark-columns=min,median,mean,ops --benchmark-sort=name -q

.PHONY: scaling
scaling: ## the 1-vs-2-thread scaling benchmark on free-threaded 3.13t
	bash scripts/free-threaded.sh bench

.PHONY: clean
clean: ## remove build products and venvs
	rm -rf target $(VENV) .venv-ft
