# ml-pipeline developer entry points. Local services run without Docker (see localstack/);
# their connection env lives in .local/stack.env, written by localstack/up.sh and applied by
# localstack/with-env.sh.
SHELL := /bin/bash
.DEFAULT_GOAL := help

WITH_ENV := localstack/with-env.sh

.PHONY: help up down status lint tools test demo bench

help:
	@echo "make up      start LocalStack, PostgreSQL, MongoDB-wire server; deploy the stack"
	@echo "make down    stop them"
	@echo "make status  show what runs"
	@echo "make lint    cfn-lint infra/*.yaml, shellcheck localstack/*.sh .ci/run (tools venv)"
	@echo "make test    up, then cargo test --locked with .local/stack.env"
	@echo "make demo    up, then cargo run --release --locked -- demo with .local/stack.env"
	@echo "make bench   demo (fixtures, model), then the end-to-end load generator (BENCHMARKS.md)"

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

test: up
	$(WITH_ENV) cargo test --locked

demo: up
	$(WITH_ENV) cargo run --release --locked -- demo

bench: demo
	$(WITH_ENV) cargo run --release --locked -- bench --bundles 200 --runs 3
