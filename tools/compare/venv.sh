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

COMPARE_DIR="$REPO_ROOT/tools/compare"
COMPARE_VENV="$CACHE_DIR/compare-venv"

install_compare_venv() {
    local stamp want
    stamp="$COMPARE_VENV/.ml-pipeline-requirements"
    want=$(sha256sum "$COMPARE_DIR/requirements.txt" | cut -d' ' -f1)
    if [[ -x $COMPARE_VENV/bin/python && "$(cat "$stamp" 2>/dev/null)" == "$want" ]]; then
        return 0
    fi
    local start=$SECONDS
    make_venv "$COMPARE_VENV"
    "$COMPARE_VENV/bin/pip" install --quiet --disable-pip-version-check \
        -r "$COMPARE_DIR/requirements.txt" >&2
    printf '%s\n' "$want" >"$stamp"
    log "compare venv installed in $((SECONDS - start))s: $COMPARE_VENV"
}

mkdir -p "$CACHE_DIR"
with_lock "$CACHE_DIR/compare-venv.lock" install_compare_venv
printf '%s\n' "$COMPARE_VENV/bin/python"
