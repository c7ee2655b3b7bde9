# The two commands a newcomer needs: `make run` and `make test`.
CARGO ?= cargo
ARGS ?=

.PHONY: run test setup setup-test build release check fmt lint bench clean

## run: install what is missing, build in release mode, serve on 127.0.0.1:50051 with data in ./data
run: setup
	$(CARGO) run --release --locked --bin tierkv -- serve $(ARGS)

## test: install what is missing, then run every test of the workspace (server, client crate and
## its README example, benchmarks)
test: setup-test
	$(CARGO) test --workspace --locked

setup:
	@bash scripts/setup.sh

setup-test:
	@bash scripts/setup.sh --with-test-tools

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
