# dicomrelay: every task a target; `make help` lists them.
#
# Outside an active virtual environment, every target uses the project's own
# (.venv, made on first use), so nothing installed globally can help or hurt.
ifdef VIRTUAL_ENV
PYTHON ?= $(VIRTUAL_ENV)/bin/python
else
VENV ?= .venv
PYTHON := $(VENV)/bin/python
endif
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help deps venv install postgres run test lint rust-test bench fuzz wheel-check clean-venv

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

deps: ## Debian packages the tests use (DCMTK, PostgreSQL, Chromium), when missing
	@missing=; test -x /usr/bin/storescp || missing="dcmtk"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	test -x /usr/bin/chromium || missing="$$missing chromium"; \
	test -z "$$missing" || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; }

venv: ## the project's virtual environment (.venv), unless one is active
	@test -x $(PYTHON) || python3 -m venv $(VENV)
	@$(PYTHON) -m pip install -q --upgrade pip

install: venv ## build the Rust extension (release) and install dicomrelay with its test tools and DICOMweb
	$(PYTHON) -m pip install -q -e '.[test,lint,postgres,web]'

run: install ## the main job on its embedded default: a load test between two local organisations
	$(PYTHON) -m dicomrelay loadtest

lint: ## rustfmt, clippy, ruff, mypy strict, stubtest of the native module
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo check --quiet --manifest-path rust/core/fuzz/Cargo.toml --bins  # the fuzz targets keep up with the core
	$(PYTHON) -m ruff check python tests benches
	$(PYTHON) -m ruff format --check python tests benches
	$(PYTHON) -m mypy
	$(PYTHON) -m mypy.stubtest dicomrelay._native --allowlist stubtest-allowlist.txt

rust-test: ## cargo tests of the pure-Rust core
	cargo test -p dicomrelay-core

# The PostgreSQL server the ledger tests use: DICOMRELAY_TEST_POSTGRES (a libpq
# URL) when set, else a throwaway cluster that this target starts and stops.
# What the tests leave for CI to keep (the browser tests' screenshots) goes to
# build-artifacts/.
test: deps install lint rust-test ## everything CI checks: lints, cargo test, pytest
	@set -e; url="$$DICOMRELAY_TEST_POSTGRES"; \
	if [ -z "$$url" ]; then \
		bash .ci/postgres.sh start; trap 'bash .ci/postgres.sh stop' EXIT; \
		url="$$(bash .ci/postgres.sh url)"; \
	fi; \
	DICOMRELAY_TEST_POSTGRES="$$url" DICOMRELAY_ARTIFACTS="$(CURDIR)/build-artifacts" \
		$(PYTHON) -m pytest $(PYTEST_ARGS)

bench: deps install ## pytest-benchmark suites in short mode; JSON to build-artifacts/
	mkdir -p build-artifacts
	$(PYTHON) -m pytest benches --benchmark-min-rounds=3 --benchmark-max-time=0.2 \
		--benchmark-json=build-artifacts/benchmarks.json

wheel-check: ## build the wheel; install it with no extras in a fresh environment; run it
	bash .ci/wheel-check.sh

fuzz: install ## build the cargo-fuzz targets (scan, rewrite, pdu, scp_receiver) and run each for FUZZ_SECONDS (default 60)
	PYTHON=$(PYTHON) bash rust/core/fuzz/run.sh $${FUZZ_SECONDS:-60} scan
	PYTHON=$(PYTHON) bash rust/core/fuzz/run.sh $${FUZZ_SECONDS:-60} rewrite
	PYTHON=$(PYTHON) bash rust/core/fuzz/run.sh $${FUZZ_SECONDS:-60} pdu
	PYTHON=$(PYTHON) bash rust/core/fuzz/run.sh $${FUZZ_SECONDS:-60} scp_receiver

clean-venv: ## remove the project's virtual environment
	rm -rf .venv
