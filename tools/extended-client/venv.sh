#!/usr/bin/env bash
# The venv of the Extended Client interop test: AWS's Python amazon-sqs-extended-client, pinned
# in requirements.txt beside this script. Creates it when missing or when requirements.txt
# changed, and prints its python on stdout (logs go to stderr).
#
#   py=$(tools/extended-client/venv.sh)
#
# Where: ${ML_PIPELINE_CACHE_DIR:-$HOME/.cache/ml-pipeline}/extended-client-venv; the
# interpreter is the one localstack/lib.sh finds (ML_PIPELINE_PYTHON, python3.11, python3).
# tests/integration/extended_client.rs runs it, so `cargo test` installs it on a fresh machine.
set -euo pipefail
SVC=extended-client
# shellcheck source=localstack/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../../localstack/lib.sh"

pinned_venv extended-client "$REPO_ROOT/tools/extended-client/requirements.txt"
