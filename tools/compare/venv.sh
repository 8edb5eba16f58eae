#!/usr/bin/env bash
# The dev-only venv of the scikit-learn comparison: creates it when missing or when
# requirements.txt changed, and prints its python on stdout.
#
#   py=$(tools/compare/venv.sh)
#
# Where: ${ML_PIPELINE_CACHE_DIR:-$HOME/.cache/ml-pipeline}/compare-venv; the interpreter is
# the one localstack/lib.sh finds (ML_PIPELINE_PYTHON, python3.11, python3).
set -euo pipefail
SVC=compare
# shellcheck source=localstack/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../../localstack/lib.sh"

pinned_venv compare "$REPO_ROOT/tools/compare/requirements.txt"
