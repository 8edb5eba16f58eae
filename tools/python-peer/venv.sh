#!/usr/bin/env bash
# The venv of the Python peer of the worker (issue 18's benchmark comparator): boto3, psycopg,
# pymongo and numpy, pinned in requirements.txt beside this script. Creates it when missing or
# when requirements.txt changed, and prints its python on stdout (logs go to stderr).
#
#   py=$(tools/python-peer/venv.sh)
#
# Where: ${ML_PIPELINE_CACHE_DIR:-$HOME/.cache/ml-pipeline}/python-peer-venv; the
# interpreter is the one localstack/lib.sh finds (ML_PIPELINE_PYTHON, python3.11, python3).
# compare.sh beside it runs it; nothing else does (dev-only).
set -euo pipefail
SVC=python-peer
# shellcheck source=localstack/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../../localstack/lib.sh"

pinned_venv python-peer "$REPO_ROOT/tools/python-peer/requirements.txt"
