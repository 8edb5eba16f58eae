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

EXT_DIR="$REPO_ROOT/tools/extended-client"
EXT_VENV="$CACHE_DIR/extended-client-venv"

install_extended_client_venv() {
    local stamp want
    stamp="$EXT_VENV/.ml-pipeline-requirements"
    want=$(sha256sum "$EXT_DIR/requirements.txt" | cut -d' ' -f1)
    if [[ -x $EXT_VENV/bin/python && "$(cat "$stamp" 2>/dev/null)" == "$want" ]]; then
        return 0
    fi
    local start=$SECONDS
    make_venv "$EXT_VENV" >&2
    "$EXT_VENV/bin/pip" install --quiet --disable-pip-version-check \
        -r "$EXT_DIR/requirements.txt" >&2
    printf '%s\n' "$want" >"$stamp"
    log "extended-client venv installed in $((SECONDS - start))s: $EXT_VENV"
}

mkdir -p "$CACHE_DIR"
with_lock "$CACHE_DIR/extended-client-venv.lock" install_extended_client_venv
printf '%s\n' "$EXT_VENV/bin/python"
