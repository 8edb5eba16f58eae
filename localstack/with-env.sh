#!/usr/bin/env bash
# Run a command with the environment of the local stack: <state>/stack.env written by
# localstack/up.sh (queue URLs, bucket, AWS endpoint and keys, DATABASE_URL, MONGODB_URI).
#
#   localstack/with-env.sh cargo test --release --workspace --locked
set -euo pipefail
SVC=with-env
# shellcheck source=localstack/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

(($#)) || die "usage: $0 CMD [ARGS...]"
STACK_ENV="$STATE_DIR/stack.env"
[[ -f $STACK_ENV ]] || die "$STACK_ENV not found: run localstack/up.sh (make up) first"
set -a
# shellcheck source=/dev/null
. "$STACK_ENV"
set +a
exec "$@"
