# dicomrelay: every task a target; `make help` lists them.
PYTHON ?= python3
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help deps install postgres run test lint rust-test bench fuzz

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

deps: ## Debian packages the tests use (DCMTK, PostgreSQL), when missing
	@missing=; test -x /usr/bin/storescp || missing="dcmtk"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	test -z "$$missing" || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; }

postgres: deps ## start the PostgreSQL server the tests use, unless DICOMRELAY_TEST_POSTGRES names one
	@test -n "$$DICOMRELAY_TEST_POSTGRES" || bash .ci/postgres.sh start

install: ## build the Rust extension (release) and install dicomrelay with its test tools
	$(PYTHON) -m pip install -q -e '.[test,lint,postgres]'

run: install ## the main job on its embedded default: a load test between two local organisations
	dicomrelay loadtest

lint: ## rustfmt, clippy, ruff, mypy strict, stubtest of the native module
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	$(PYTHON) -m ruff check python tests benches
	$(PYTHON) -m ruff format --check python tests benches
	$(PYTHON) -m mypy
	$(PYTHON) -m mypy.stubtest dicomrelay._native --allowlist stubtest-allowlist.txt

rust-test: ## cargo tests of the pure-Rust core
	cargo test -p dicomrelay-core

test: deps install postgres lint rust-test ## everything CI checks: lints, cargo test, pytest
	DICOMRELAY_TEST_POSTGRES="$${DICOMRELAY_TEST_POSTGRES:-$$(bash .ci/postgres.sh url)}" \
		$(PYTHON) -m pytest $(PYTEST_ARGS)

bench: deps install ## pytest-benchmark suites in short mode; JSON to build-artifacts/
	mkdir -p build-artifacts
	$(PYTHON) -m pytest benches --benchmark-min-rounds=3 --benchmark-max-time=0.2 \
		--benchmark-json=build-artifacts/benchmarks.json

fuzz: ## build the cargo-fuzz targets (scan, pdu) and run each for FUZZ_SECONDS (default 60)
	bash rust/core/fuzz/run.sh $${FUZZ_SECONDS:-60} scan
	bash rust/core/fuzz/run.sh $${FUZZ_SECONDS:-60} pdu
