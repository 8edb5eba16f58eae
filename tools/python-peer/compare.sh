#!/usr/bin/env bash
# The Rust worker against its Python peer (worker.py beside this script), with the same load
# generator, data, services and model (issue 18):
#
#   localstack/with-env.sh tools/python-peer/compare.sh [--runs 5] [--rate RECORDS_PER_S]
#                                                      [--bundles 250] [--records 100] [--out DIR]
#
# Each repetition runs `ml-pipeline-tools bench --runs 1` twice, interleaved (the order swaps
# every repetition): once with --external against the peer started on new queues of its own
# (--worker-pid, so bench reads its CPU time and peak RSS; --metrics-url, so it reads the peer's
# SQS requests and batches as it reads the Rust worker's), once against `ml-pipeline worker`,
# which bench starts on its own new queues. Each bench run measures the emulator's relay ceiling
# first, on the same machine a moment before. Without --rate, bundles go as fast as possible.
#
# Both workers serve one model, trained on the fixtures' training examples into an S3 bucket of
# the run's own (deleted at the end: the stack's own registry is not touched) and neither reads
# the feedback queue. The JSON reports, bench's text output and the peer's log go to DIR
# (default .local/python-peer/<run>/); the table of medians and ranges is printed at the end and
# kept in DIR/summary.txt. Binaries: $CARGO_TARGET_DIR/release (default
# ~/.cache/ml-pipeline/target, as .ci/run builds them); nothing is built here.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$HERE/../.." && pwd)
RUNS=5 RATE='' BUNDLES=250 RECORDS=100 OUT=''
while (($#)); do
    case $1 in
    --runs) RUNS=$2 ;;
    --rate) RATE=$2 ;;
    --bundles) BUNDLES=$2 ;;
    --records) RECORDS=$2 ;;
    --out) OUT=$2 ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "unknown option $1 (see --help)" >&2
        exit 2
        ;;
    esac
    shift 2
done
[[ -n ${AWS_ENDPOINT_URL:-} && -n ${DATABASE_URL:-} ]] ||
    { echo "no stack environment: run under localstack/with-env.sh" >&2; exit 2; }
BIN_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/ml-pipeline/target}/release
TOOLS=$BIN_DIR/ml-pipeline-tools
WORKER=$BIN_DIR/ml-pipeline
for b in "$TOOLS" "$WORKER"; do
    [[ -x $b ]] || { echo "no $b: cargo build --release --locked --workspace" >&2; exit 2; }
done

PY=$("$HERE/venv.sh")
RUN=peer-$(date +%s)-$RANDOM
OUT=${OUT:-$REPO_ROOT/.local/python-peer/$RUN}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd) # the training step below runs in a scratch directory
BUCKET=ml-pipeline-$RUN
# Neither worker takes part in the stack's feedback loop; the peer dead-letters nowhere.
unset ML_PIPELINE_FEEDBACK_QUEUE ML_PIPELINE_FEEDBACK_DLQ ML_PIPELINE_INPUT_DLQ
export ML_PIPELINE_MODEL_BUCKET=$BUCKET ML_PIPELINE_MODEL_NAME=banknote
export ML_PIPELINE_MODEL_ALIAS=production

PEER='' QUEUES=() SCRATCH=''
cleanup() {
    [[ -n $PEER ]] && kill -TERM "$PEER" 2>/dev/null && wait "$PEER" 2>/dev/null
    ((${#QUEUES[@]})) && "$PY" "$HERE/stack.py" delete "${QUEUES[@]}"
    "$PY" "$HERE/stack.py" drop-bucket "$BUCKET" 2>/dev/null || true
    [[ -n $SCRATCH ]] && rm -rf "$SCRATCH"
    return 0
}
trap cleanup EXIT

"$PY" "$HERE/stack.py" bucket "$BUCKET"
SCRATCH=$(mktemp -d)
(cd "$SCRATCH" && "$WORKER" train >"$OUT/train.txt" 2>&1)
"$WORKER" models promote banknote 1 >>"$OUT/train.txt" 2>&1
echo "$(grep -m1 '^model ' "$OUT/train.txt") in s3://$BUCKET; reports in $OUT"

BENCH=(bench --runs 1 --bundles "$BUNDLES" --records "$RECORDS"
    --fixtures "$REPO_ROOT/fixtures/default")
[[ -n $RATE ]] && BENCH+=(--rate "$RATE")

run_python() { # run_python REPETITION
    local r=$1 q
    mapfile -t q < <("$PY" "$HERE/stack.py" queues "$RUN-p$r")
    QUEUES=("${q[@]}")
    ML_PIPELINE_INPUT_QUEUE=${q[0]} ML_PIPELINE_OUTPUT_QUEUE=${q[1]} \
        "$PY" "$HERE/worker.py" 2>"$OUT/python-$r.log" &
    PEER=$!
    local waited=0
    until grep -qs 'polling' "$OUT/python-$r.log"; do
        kill -0 "$PEER" 2>/dev/null || { cat "$OUT/python-$r.log" >&2; exit 1; }
        ((waited++ < 300)) || { echo "the peer did not start in 30 s" >&2; exit 1; }
        sleep 0.1
    done
    local metrics
    metrics=$(sed -n 's/.*metrics at \(http[^ ]*\).*/\1/p' "$OUT/python-$r.log" | head -1)
    ML_PIPELINE_INPUT_QUEUE=${q[0]} ML_PIPELINE_OUTPUT_QUEUE=${q[1]} \
        "$TOOLS" "${BENCH[@]}" --external --worker-pid "$PEER" --metrics-url "$metrics" \
        --report "$OUT/python-$r.json" >"$OUT/python-$r.txt"
    kill -TERM "$PEER"
    wait "$PEER" || true
    PEER=''
    "$PY" "$HERE/stack.py" delete "${q[@]}"
    QUEUES=()
}

run_rust() { # run_rust REPETITION
    "$TOOLS" "${BENCH[@]}" --report "$OUT/rust-$1.json" >"$OUT/rust-$1.txt"
}

for ((r = 1; r <= RUNS; r++)); do
    if ((r % 2)); then
        run_python "$r"
        run_rust "$r"
    else
        run_rust "$r"
        run_python "$r"
    fi
    echo "repetition $r of $RUNS: python $(grep -m1 '^  worker  ' "$OUT/python-$r.txt" | tr -s ' ' | cut -d' ' -f3-4)," \
        "rust $(grep -m1 '^  worker  ' "$OUT/rust-$r.txt" | tr -s ' ' | cut -d' ' -f3-4)"
done
"$PY" "$HERE/summary.py" "$OUT" | tee "$OUT/summary.txt"
