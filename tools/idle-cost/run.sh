#!/usr/bin/env bash
# Receive calls an idle worker makes, with the idle rule off (every poller long-polls all the
# time, as before issue 17) and on (ML_PIPELINE_IDLE_EMPTY_RECEIVES, default 3), read from each
# worker's own /metrics (ml_pipeline_receive_calls_total) over an idle spell and scaled to an hour.
#
#   localstack/with-env.sh tools/idle-cost/run.sh [MINUTES] [POLLERS]
#
# Each worker gets its own new, empty input, output and dead-letter queues, its own /metrics
# port, and no feedback queue; both run at the same time. They serve a model trained on the
# fixtures in a PostgreSQL database, MongoDB database and S3 bucket of the run's own (so the
# stack's own are not touched); all but the MongoDB database (no client here) are deleted at
# the end. The counter is read once the first
# minute has passed (the idle rule parks pollers within it) and again MINUTES later. Run from
# the repository root; needs the release binary: cargo build --release --locked -p ml-pipeline.
set -euo pipefail

MINUTES=${1:-10}
POLLERS=${2:-2}
BIN=${CARGO_TARGET_DIR:-target}/release/ml-pipeline
[[ -x $BIN ]] || { echo "no $BIN: cargo build --release --locked -p ml-pipeline" >&2; exit 2; }
RUN=idle-$(date +%s)-$RANDOM
DB=${RUN//-/_}
sqs() { aws --endpoint-url "$AWS_ENDPOINT_URL" sqs "$@"; }
s3() { aws --endpoint-url "$AWS_ENDPOINT_URL" s3 "$@"; }

declare -A PIDS PORTS URLS
cleanup() {
  for k in "${!PIDS[@]}"; do kill "${PIDS[$k]}" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for u in ${URLS[@]+"${URLS[@]}"}; do sqs delete-queue --queue-url "$u" >/dev/null 2>&1 || true; done
  s3 rb "s3://$RUN" --force >/dev/null 2>&1 || true
  psql -q "$ADMIN_URL" -c "DROP DATABASE IF EXISTS $DB" >/dev/null 2>&1 || true
}
trap cleanup EXIT

# The run's own database, MongoDB database and bucket, with the fixtures and a model trained on them.
ADMIN_URL=$DATABASE_URL
psql -q "$ADMIN_URL" -c "CREATE DATABASE $DB" >/dev/null
export DATABASE_URL=${ADMIN_URL%/*}/$DB MONGODB_DATABASE=$DB ML_PIPELINE_MODEL_BUCKET=$RUN
s3 mb "s3://$RUN" >/dev/null
"$BIN" migrate >/dev/null
"$BIN" fixtures load >/dev/null
(cd "$(mktemp -d)" && "$BIN" train >/dev/null)
"$BIN" models promote banknote 1 >/dev/null

calls() { # the receive calls a worker's /metrics counts so far
  curl -sf "http://127.0.0.1:${PORTS[$1]}/metrics" |
    awk '/^ml_pipeline_receive_calls_total/ {s += $2} END {print s + 0}'
}

start() { # start NAME IDLE_EMPTY_RECEIVES PORT
  local name=$1 idle=$2 port=$3 q
  for q in in out dlq; do
    URLS[$name-$q]=$(sqs create-queue --queue-name "$RUN-$name-$q" --query QueueUrl --output text)
  done
  PORTS[$name]=$port
  env -u ML_PIPELINE_FEEDBACK_QUEUE -u ML_PIPELINE_FEEDBACK_DLQ \
    ML_PIPELINE_INPUT_QUEUE="${URLS[$name-in]}" ML_PIPELINE_OUTPUT_QUEUE="${URLS[$name-out]}" \
    ML_PIPELINE_INPUT_DLQ="${URLS[$name-dlq]}" ML_PIPELINE_POLLERS="$POLLERS" \
    ML_PIPELINE_IDLE_EMPTY_RECEIVES="$idle" ML_PIPELINE_HTTP_ADDR="127.0.0.1:$port" \
    RUST_LOG=info "$BIN" worker >"/tmp/$RUN-$name.log" 2>&1 &
  PIDS[$name]=$!
}

start before 0 $((20000 + RANDOM % 5000))
start after 3 $((25000 + RANDOM % 5000))
sleep 60
declare -A FIRST
for w in before after; do FIRST[$w]=$(calls "$w"); done
sleep $((MINUTES * 60))
echo "idle spell: $MINUTES min, $POLLERS pollers, 20 s long polls (logs: /tmp/$RUN-*.log)"
for w in before after; do
  n=$(( $(calls "$w") - FIRST[$w] ))
  echo "$w: $n receive calls in $MINUTES min = $(( n * 60 / MINUTES )) per idle hour"
done
