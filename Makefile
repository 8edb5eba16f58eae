# ml-pipeline developer entry points. Local services run without Docker (see localstack/);
# their connection env lives in .local/stack.env, written by localstack/up.sh and applied by
# localstack/with-env.sh.
#
# test, demo and bench build the same selection (the whole workspace, release profile), so each
# reuses what the others compiled: `ml-pipeline` (the worker) and `ml-pipeline-tools` (demo,
# load generator, chaos runner, fixture generator; it starts the worker binary built beside it).
SHELL := /bin/bash
.DEFAULT_GOAL := help

WITH_ENV := localstack/with-env.sh
CARGO_BUILD := cargo build --release --locked --workspace
TOOLS := cargo run --release --locked -p ml-pipeline-tools --

.PHONY: help up down status lint tools test demo bench image

help:
	@echo "make up      start LocalStack, PostgreSQL, MongoDB-wire server; deploy the stack"
	@echo "make down    stop them"
	@echo "make status  show what runs"
	@echo "make lint    cfn-lint infra/*.yaml, shellcheck localstack/*.sh .ci/run, hadolint (tools venv)"
	@echo "make tools   install the lint tools' venv"
	@echo "make test    the README's test command: localstack/up.sh && localstack/with-env.sh"
	@echo "             cargo test --release --workspace --locked"
	@echo "make demo    up, cargo build --release --locked --workspace, then"
	@echo "             ml-pipeline-tools demo (cargo run -p ml-pipeline-tools) with .local/stack.env"
	@echo "make bench   demo (fixtures, model), then ml-pipeline-tools bench --bundles 200 --runs 3"
	@echo "             (the end-to-end load generator, BENCHMARKS.md)"
	@echo "make image   up, then localstack/image.sh: the Dockerfile built with podman (no Docker,"
	@echo "             nothing pulled: a bookworm-slim base from Debian's packages, the dist"
	@echo "             binary built beside it) and checked against the local stack"

up:
	localstack/up.sh

down:
	localstack/down.sh

status:
	-localstack/localstack.sh status
	-localstack/postgres.sh status
	-localstack/mongo.sh status

tools:
	localstack/tools.sh install

lint:
	localstack/tools.sh lint

# Verbatim the README's test command (.ci/run runs the same).
test:
	localstack/up.sh && localstack/with-env.sh cargo test --release --workspace --locked

# Build the whole workspace first (both binaries, as the tests build them), so the `cargo run`
# that follows compiles nothing more.
demo: up
	$(WITH_ENV) $(CARGO_BUILD)
	$(WITH_ENV) $(TOOLS) demo

bench: demo
	$(WITH_ENV) $(TOOLS) bench --bundles 200 --runs 3

# The image built from the Dockerfile and run for real (localstack/image.sh says what it checks).
image: up
	localstack/image.sh
