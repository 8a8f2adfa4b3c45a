# ferrule's tasks. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Dependencies are hashed locks, one per purpose (requirements/<purpose>.in -> .txt, `make
# lock`). .venv gets test.txt (and bench.txt, lint.txt when a target needs them; the locks
# agree on every shared version); the docs have their own venv.
STAMP := $(VENV)/.test-installed
BENCH_STAMP := $(VENV)/.bench-installed
LINT_STAMP := $(VENV)/.lint-installed
DIST_STAMP := $(VENV)/.dist-installed
EXAMPLES_STAMP := $(VENV)/.examples-installed
DOCS_VENV := .venv-docs
DOCS_STAMP := $(DOCS_VENV)/.installed

# $(call install,VENV,LOCK): create VENV if needed, install LOCK into it (hashes required).
define install
	@test -x $(1)/bin/python || $(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install -q --upgrade pip
	$(1)/bin/python -m pip install -q --require-hashes -r $(2)
	@touch $@
endef

.PHONY: help
help: ## list the targets
	@grep -E '^[a-z-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): requirements/test.txt
	$(call install,$(VENV),requirements/test.txt)

$(BENCH_STAMP): requirements/bench.txt $(STAMP)
	$(call install,$(VENV),requirements/bench.txt)

$(LINT_STAMP): requirements/lint.txt $(STAMP)
	$(call install,$(VENV),requirements/lint.txt)

$(DIST_STAMP): requirements/dist.txt $(STAMP)
	$(call install,$(VENV),requirements/dist.txt)

$(EXAMPLES_STAMP): requirements/examples.txt $(STAMP)
	$(call install,$(VENV),requirements/examples.txt)

$(DOCS_STAMP): requirements/docs.txt
	$(call install,$(DOCS_VENV),requirements/docs.txt)

.PHONY: venv
venv: $(STAMP) $(BENCH_STAMP) $(LINT_STAMP) ## create .venv with the test, benchmark and lint dependencies

.PHONY: dev
dev: $(STAMP) ## build the extension (release) into .venv
	VIRTUAL_ENV=$(abspath $(VENV)) $(VENV)/bin/maturin develop --release -q

.PHONY: demo
demo: dev ## build, then run the demo (python -m ferrule)
	$(PY) -m ferrule

# `make example DURATION=60`: how long the load driver runs, in seconds.
DURATION ?= 20

.PHONY: example
example: dev $(EXAMPLES_STAMP) ## run the example agent service under DURATION (20) s of load and print what it saw
	$(PY) -m examples.agent_service.load --duration $(DURATION)

.PHONY: lint
lint: $(LINT_STAMP) dev ## rustfmt, clippy, ruff, mypy and the stub check
	cargo fmt --check
	cargo clippy --all-targets -q -- -D warnings
	$(VENV)/bin/ruff check python tests benches docs/ext examples
	$(VENV)/bin/ruff format --check python tests benches docs/ext examples
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
pytest: dev $(BENCH_STAMP) redis-server ## the pytest suite and the benchmark smoke run on this interpreter
	$(PY) -m pytest -q -p no:cacheprovider tests
	$(PY) -m pytest -q -p no:cacheprovider benches --benchmark-disable

# `make fuzz SECONDS=600 SEED=7`: the long randomized run (the bounded sweep is in pytest).
SECONDS ?= 180
SEED ?= 0

.PHONY: fuzz
fuzz: dev ## bad-input fuzz of the whole API: SECONDS (180) of random cases from SEED (0), then threads
	$(PY) tests/fuzz_api.py --seconds $(SECONDS) --seed $(SEED)

.PHONY: docs
docs: $(DOCS_STAMP) ## build the documentation site into site/ (mkdocs build --strict)
	NO_MKDOCS_2_WARNING=1 $(DOCS_VENV)/bin/mkdocs build --strict -q

# `make lock` keeps every pin it can; `make lock UPGRADE=1` moves them to the newest.
UV_VERSION := 0.13.9
LOCK_VENV := .venv-lock
UV := $(LOCK_VENV)/bin/uv
COMPILE = $(UV) pip compile -q --universal --generate-hashes --custom-compile-command "make lock" \
	$(if $(UPGRADE),--upgrade)

.PHONY: lock
lock: ## regenerate the hashed locks requirements/*.txt from requirements/*.in (uv)
	@test -x $(UV) || { $(PYTHON) -m venv $(LOCK_VENV) && $(LOCK_VENV)/bin/python -m pip install -q uv==$(UV_VERSION); }
	$(COMPILE) --python-version 3.10 requirements/test.in -o requirements/test.txt
	$(COMPILE) --python-version 3.10 requirements/lint.in -c requirements/test.txt -o requirements/lint.txt
	$(COMPILE) --python-version 3.10 requirements/bench.in -c requirements/test.txt \
	  -c requirements/lint.txt -o requirements/bench.txt
	$(COMPILE) --python-version 3.10 requirements/examples.in -c requirements/test.txt \
	  -o requirements/examples.txt
	$(COMPILE) --python-version 3.10 requirements/docs.in -o requirements/docs.txt
	$(COMPILE) --python-version 3.10 requirements/smoke.in -o requirements/smoke.txt
	$(COMPILE) --python-version 3.10 requirements/dist.in -c requirements/test.txt \
	  -o requirements/dist.txt
	$(COMPILE) --python-version 3.13 --only-binary cachebox --emit-build-options \
	  requirements/ft.in -o requirements/ft.txt

.PHONY: check
check: dev lint docs cargo-test loom ## every static check, the docs build, the Rust tests and the loom models

.PHONY: free-threaded
free-threaded: redis-server ## the whole pytest suite on free-threaded 3.13t from a dev build (.venv-ft), GIL off
	bash scripts/free-threaded.sh test

.PHONY: dist
dist: $(DIST_STAMP) ## manylinux2014 wheels for each supported CPython found (3.10-3.13, 3.13t) and the sdist, into dist/
	bash scripts/dist.sh

.PHONY: wheels
wheels: dist ## each wheel of dist/, and one built from the sdist, in a clean venv: import, demo, smoke tests
	bash scripts/wheels.sh

.PHONY: matrix
matrix: dist redis-server ## the whole pytest suite (and benchmark smoke run) on each CPython found, from its dist/ wheel
	bash scripts/matrix.sh

.PHONY: test
test: check wheels matrix ## everything CI runs: lints, docs, cargo test, loom, the wheels, the suite on every interpreter

.PHONY: bench
bench: dev $(BENCH_STAMP) ## the real benchmark run (release build, peers side by side)
	$(PY) -m pytest benches --benchmark-only --benchmark-columns=min,median,mean,ops --benchmark-sort=name -q

.PHONY: scaling
scaling: ## the 1-vs-2-thread scaling benchmark on free-threaded 3.13t
	bash scripts/free-threaded.sh bench

.PHONY: clean
clean: ## remove build products and venvs
	rm -rf target site dist $(VENV) .venv-ft .venv-matrix $(DOCS_VENV) $(LOCK_VENV)
