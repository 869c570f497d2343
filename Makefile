# Aurora event transport: the verbs. `make run` runs the product, `make test` passes the tests.
SHELL := /bin/bash
CARGO ?= cargo
SERVICES := mqtt-bridge device-registry ws-gateway federation-gateway eve-ingest

.PHONY: all services build release bench-build run test lint fmt clippy unit bench bench-mqtt bench-registry \
        bench-ws bench-federation bench-eve images images-check check-deploy clean

all: build

## Make sure Redis, NATS (JetStream), Mosquitto and PostgreSQL run on loopback (installs with apt when missing).
services:
	@bash deploy/local/services.sh

# The benchmarks (bench/) are their own crate, built only by `make bench*`.
NOT_BENCH := --workspace --exclude aurora-bench

build:
	$(CARGO) build $(NOT_BENCH) --bins

release:
	$(CARGO) build --release $(NOT_BENCH) --bins

bench-build:
	$(CARGO) build --release --workspace --bins

## The main job: servers up, every service and a second site running, simulated traffic, a live summary.
run: services release
	@bash scripts/run.sh

## What CI runs: formatting, lints, every test against the real servers.
# The lints run inside the one build: clippy-driver compiles the workspace's own crates with its
# lints and -D warnings, so the dependencies are compiled once (a separate `cargo clippy`
# checks every dependency a second time: 6 to 8 minutes of CI on this machine). `make clippy`
# stays for a quick lint while working.
CLIPPY_DRIVER := $(shell rustc --print sysroot)/bin/clippy-driver
test: export RUSTC_WORKSPACE_WRAPPER := $(CLIPPY_DRIVER)
test: export RUSTFLAGS := -D warnings
test: services fmt unit check-deploy

fmt:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# One build of the binaries (the benchmarks' too, so that they are linted) and the tests
# together: built apart, or for another set of packages, the tests' dev-dependencies change the
# features of shared crates and the next build compiles them again. check-deploy asks for the
# same build.
# cargo-nextest, not `cargo test`: a package's tests share one binary, and nextest runs each in
# a process of its own (the tracing tests set up the process's telemetry, once per process).
unit:
	$(CARGO) build --workspace --bins --tests
	@$(CARGO) nextest --version >/dev/null 2>&1 || \
	  env -u RUSTFLAGS -u RUSTC_WORKSPACE_WRAPPER $(CARGO) install --locked cargo-nextest
	$(CARGO) nextest run --workspace --no-fail-fast

check-deploy:
	@if [ -x scripts/check-deploy.sh ]; then bash scripts/check-deploy.sh; fi

## Benchmarks: each writes bench/results/<name>.json; `make bench` runs them all and writes BENCHMARKS.md.
bench: services bench-build
	-$(MAKE) bench-mqtt
	-$(MAKE) bench-registry
	-$(MAKE) bench-ws
	-$(MAKE) bench-federation
	-$(MAKE) bench-eve
	@python3 scripts/bench_report.py

# One workspace build serves every benchmark (a per-package build would resolve features
# differently and rebuild the dependencies each time).
BENCH_RUN = AURORA_BENCH_SKIP_BUILD=1 ./target/release

bench-mqtt: services bench-build
	$(BENCH_RUN)/bench-mqtt

bench-registry: services bench-build
	$(BENCH_RUN)/bench-registry

bench-ws: services bench-build
	$(BENCH_RUN)/bench-ws

bench-federation: services bench-build
	$(BENCH_RUN)/bench-federation

bench-eve: services bench-build
	$(BENCH_RUN)/bench-eve

## The five images, [IMAGE_REGISTRY/]aurora/<service>:IMAGE_TAG (deploy/README.md, Image names);
## fails (exit 1, saying why) where no container engine works.
images:
	@bash deploy/build-images.sh

## Builds every image here with buildah (no daemon, no registry: a debootstrap base, release
## binaries from the host) and runs each one's --help and health check. Needs root; installs
## buildah and debootstrap with apt when missing. Not part of `make test`.
images-check: services
	@bash scripts/images-check.sh

clean:
	$(CARGO) clean
