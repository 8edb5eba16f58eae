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

PEER_DIR="$REPO_ROOT/tools/python-peer"
PEER_VENV="$CACHE_DIR/python-peer-venv"

install_peer_venv() {
    local stamp want
    stamp="$PEER_VENV/.ml-pipeline-requirements"
    want=$(sha256sum "$PEER_DIR/requirements.txt" | cut -d' ' -f1)
    if [[ -x $PEER_VENV/bin/python && "$(cat "$stamp" 2>/dev/null)" == "$want" ]]; then
        return 0
    fi
    local start=$SECONDS
    make_venv "$PEER_VENV" >&2
    "$PEER_VENV/bin/pip" install --quiet --disable-pip-version-check \
        -r "$PEER_DIR/requirements.txt" >&2
    printf '%s\n' "$want" >"$stamp"
    log "python-peer venv installed in $((SECONDS - start))s: $PEER_VENV"
}

mkdir -p "$CACHE_DIR"
with_lock "$CACHE_DIR/python-peer-venv.lock" install_peer_venv
printf '%s\n' "$PEER_VENV/bin/python"
