#!/usr/bin/env bash
# Stop LocalStack, PostgreSQL and the MongoDB-wire server started by localstack/up.sh.
# Idempotent: stopping what is not running succeeds. Data dirs and logs under <state> are kept.
set -euo pipefail
SVC=down
# shellcheck source=localstack/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

pids=()
names=()
failed=()
for svc in localstack postgres mongo; do
    "$LOCALSTACK_DIR/$svc.sh" stop &
    pids+=($!)
    names+=("$svc")
done
for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || failed+=("${names[$i]}")
done
if ((${#failed[@]})); then
    die "failed to stop: ${failed[*]}"
fi
log "all stopped"
