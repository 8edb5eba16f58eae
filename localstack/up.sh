#!/usr/bin/env bash
# Start LocalStack, PostgreSQL and the MongoDB-wire server (in parallel), deploy
# infra/messaging-storage.yaml into LocalStack, and write <state>/stack.env.
# Idempotent: running it again with everything up is a quick no-op success.
#
# Env:
#   ML_PIPELINE_STACK              stack name and Prefix parameter (default ml-pipeline-local)
#   ML_PIPELINE_STATE_DIR          runtime state (default <repo>/.local)
#   ML_PIPELINE_CACHE_DIR          venvs and binaries (default ~/.cache/ml-pipeline)
#   ML_PIPELINE_MONGO_SERVER       secantusd-rs (default) or secantusd-py, see mongo.sh
#   ML_PIPELINE_EXTERNAL_SERVICES  1: start nothing, wait for services already listening
#                                  (e.g. `docker compose -f localstack/docker-compose.yml up -d`),
#                                  then deploy the stack and write stack.env
set -euo pipefail
SVC=up
# shellcheck source=localstack/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=localstack/env.sh
. "$LOCALSTACK_DIR/env.sh"

STACK=${ML_PIPELINE_STACK:-ml-pipeline-local}
TEMPLATE="$REPO_ROOT/infra/messaging-storage.yaml"
STACK_ENV="$STATE_DIR/stack.env"
START_TIMEOUT=${ML_PIPELINE_START_TIMEOUT:-120}
T_ALL=$SECONDS

ensure_dirs

start_local_services() {
    local svc pids=() names=() failed=() i
    for svc in localstack postgres mongo; do
        "$LOCALSTACK_DIR/$svc.sh" start &
        pids+=($!)
        names+=("$svc")
    done
    for i in "${!pids[@]}"; do
        wait "${pids[$i]}" || failed+=("${names[$i]}")
    done
    if ((${#failed[@]})); then
        die "failed to start: ${failed[*]} (see the messages above and $LOG_DIR; stop everything with localstack/down.sh)"
    fi
}

localstack_healthy() {
    "$LS_VENV/bin/python" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' \
        "$AWS_ENDPOINT_URL/_localstack/health" 2>/dev/null
}
mongo_ready() { "$(find_python)" "$LOCALSTACK_DIR/mongo_ping.py" 127.0.0.1 27017 2>/dev/null; }
pg_port_open() { port_open 127.0.0.1 5432; }

wait_external_services() {
    log "ML_PIPELINE_EXTERNAL_SERVICES=1: not starting services, waiting for them on 127.0.0.1"
    "$LOCALSTACK_DIR/localstack.sh" install # boto3 for deploy_stack.py
    wait_until "$START_TIMEOUT" "" /dev/null "LocalStack on :4566" localstack_healthy
    wait_until "$START_TIMEOUT" "" /dev/null "PostgreSQL on :5432" pg_port_open
    wait_until "$START_TIMEOUT" "" /dev/null "MongoDB on :27017" mongo_ready
}

if [[ ${ML_PIPELINE_EXTERNAL_SERVICES:-0} == 1 ]]; then
    wait_external_services
else
    start_local_services
fi
T_SERVICES=$((SECONDS - T_ALL))

log "deploying $TEMPLATE as stack $STACK (Prefix=$STACK, CreateAlarms=false)"
T0=$SECONDS
# CreateAlarms=false: CloudWatch is not among LocalStack's SERVICES (see the template).
"$LS_VENV/bin/python" "$LOCALSTACK_DIR/deploy_stack.py" \
    --stack-name "$STACK" --template "$TEMPLATE" \
    --param "Prefix=$STACK" --param CreateAlarms=false \
    --env-out "$STACK_ENV" \
    --copy-env AWS_ENDPOINT_URL --copy-env AWS_REGION --copy-env AWS_DEFAULT_REGION \
    --copy-env AWS_ACCESS_KEY_ID --copy-env AWS_SECRET_ACCESS_KEY \
    --copy-env DATABASE_URL --copy-env MONGODB_URI --copy-env ML_PIPELINE_S3_FORCE_PATH_STYLE ||
    die "stack deploy failed (LocalStack log: $LOG_DIR/localstack.log)"
T_STACK=$((SECONDS - T0))

set -a
# shellcheck source=/dev/null
. "$STACK_ENV"
set +a

cat >&2 <<EOF

ml-pipeline local services are up (services ${T_SERVICES}s, stack ${T_STACK}s, total $((SECONDS - T_ALL))s)
  SQS/S3/CloudFormation  $AWS_ENDPOINT_URL   (LocalStack, region $AWS_REGION, keys test/test)
  PostgreSQL             $DATABASE_URL
  MongoDB wire           $MONGODB_URI
  stack $ML_PIPELINE_STACK:
    input queue   $ML_PIPELINE_INPUT_QUEUE
    input DLQ     $ML_PIPELINE_INPUT_DLQ
    output queue  $ML_PIPELINE_OUTPUT_QUEUE
    output DLQ    $ML_PIPELINE_OUTPUT_DLQ
    feedback      $ML_PIPELINE_FEEDBACK_QUEUE
    feedback DLQ  $ML_PIPELINE_FEEDBACK_DLQ
    model bucket  $ML_PIPELINE_MODEL_BUCKET
  env file   $STACK_ENV   (set -a; . $STACK_ENV; set +a   or   localstack/with-env.sh CMD...)
  logs       $LOG_DIR
  PID files  $RUN_DIR
  stop with  localstack/down.sh
EOF
