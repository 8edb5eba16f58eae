#!/usr/bin/env bash
# The scikit-learn comparison of issue 13: our fit against sklearn.svm.SVC on the same rows and
# the same seeded folds, at 2 000, 20 000 and 100 000 rows, linear (C=1) and Gaussian (C=10,
# width 4). Prints a markdown table; exits 1 when a configuration misses the bars (accuracy
# within 0.5 points, out-of-fold classes agreeing on at least 99.5 % of rows).
#
#   cargo build --release --locked --workspace && tools/compare/run.sh
#
# Environment:
#   COMPARE_ROWS      sizes, default "2000 20000 100000" (the first N rows of one generated set)
#   COMPARE_CONFIGS   kernel:C[:width] list, default "linear:1 gaussian:10:4"
#   COMPARE_REPEAT    full fits timed per side (default: train-compare's, 5 up to 20 000 rows, 3 above)
#   COMPARE_OUT       keep the data and per-configuration directories here (default: a temp dir, removed)
#   ML_PIPELINE_TOOLS_BIN  the tools binary (default ${CARGO_TARGET_DIR:-target}/release/ml-pipeline-tools)
set -euo pipefail
SVC=compare
# shellcheck source=localstack/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../../localstack/lib.sh"

read -r -a rows_list <<<"${COMPARE_ROWS:-2000 20000 100000}"
read -r -a configs <<<"${COMPARE_CONFIGS:-linear:1 gaussian:10:4}"
target_dir=${CARGO_TARGET_DIR:-$REPO_ROOT/target}
tools_bin=${ML_PIPELINE_TOOLS_BIN:-$target_dir/release/ml-pipeline-tools}
[[ -x $tools_bin ]] || die "no $tools_bin: build it first (cargo build --release --locked --workspace)"

py=$("$REPO_ROOT/tools/compare/venv.sh")
script="$REPO_ROOT/tools/compare/sklearn_compare.py"

if [[ -n ${COMPARE_OUT:-} ]]; then
    work=$COMPARE_OUT
    mkdir -p "$work"
else
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
fi

largest=0
for n in "${rows_list[@]}"; do
    if ((n > largest)); then largest=$n; fi
done
data="$work/notes-$largest"
if [[ ! -f $data/notes.csv ]]; then
    log "generating $largest notes into $data"
    "$tools_bin" fixtures generate --notes "$largest" --out "$data" >&2
fi

table=()
failed=0
for n in "${rows_list[@]}"; do
    for config in "${configs[@]}"; do
        IFS=: read -r kernel c width <<<"$config"
        out="$work/$n-$kernel-c$c${width:+-w$width}"
        args=(train-compare --csv "$data/notes.csv" --rows "$n" --kernel "$kernel" --c "$c"
            --folds 5 --seed 42 --out "$out")
        if [[ -n $width ]]; then args+=(--width "$width"); fi
        if [[ -n ${COMPARE_REPEAT:-} ]]; then args+=(--repeat "$COMPARE_REPEAT"); fi
        log "$n rows, $kernel, C=$c${width:+, width $width}"
        if ! "$tools_bin" "${args[@]}"; then
            table+=("| $n | $kernel | $c | ${width:--} | train-compare failed | | | | | | | FAIL |")
            failed=1
            continue
        fi
        if row=$("$py" "$script" --out "$out"); then
            table+=("$row")
        else
            # The script prints its row before failing on a bar; keep it when there is one.
            table+=("${row:-| $n | $kernel | $c | ${width:--} | sklearn_compare.py failed | | | | | | | FAIL |}")
            failed=1
        fi
        printf '%s\n' "${table[-1]}" >&2
    done
done

"$py" "$script" --header
printf '%s\n' "${table[@]}"
exit "$failed"
