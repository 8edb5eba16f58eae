#!/usr/bin/env bash
# The container image, built from the Dockerfile and checked for real, without a Docker engine
# and with nothing pulled from a registry (`make image`; the `image` phase of .ci/run).
#
#   localstack/image.sh [all|base|build|check]      (default: all = base, build, check)
#
# base   A bookworm-slim equivalent from Debian's own packages: debuerreotype (from Debian) runs
#        debootstrap --variant=minbase bookworm, applies the official image's minimizing apt/dpkg
#        config, upgrades from bookworm-updates and bookworm-security, and slims it (no docs, man
#        pages or locales), as the debian:bookworm-slim image is made. The rootfs tar is cached in
#        $CACHE_DIR/image/ (made again after ML_PIPELINE_IMAGE_BASE_MAX_AGE_DAYS, 7, so security
#        updates come in) and imported as localhost/ml-pipeline-base:bookworm-slim.
# build  The `dist` binary (cargo build --profile dist --locked -p ml-pipeline --bin ml-pipeline
#        into $CARGO_TARGET_DIR, the target dir .ci/run builds everything else in), then the
#        Dockerfile built by podman with RUNTIME_BASE=that base and BINARY_STAGE=prebuilt: the
#        Dockerfile's own runtime stage, with the binary built beside it (no Rust image here).
# check  The image against the local stack (host network), on its own queues, bucket and
#        databases: every container runs with the image's own user (UID 10001), a read-only root
#        and no writable path but a tmpfs on the image's VOLUME (as the ECS task's scratch volume),
#        and `--init` (the task's InitProcessEnabled); see RUN_FLAGS. --version and healthcheck --help; migrate,
#        fixtures load, train, models promote, send; the worker answering the fixture bundles
#        (cold start to first answer measured), the same answers as the same binary run outside
#        the image; HEALTHCHECK healthy while serving, unhealthy when the worker is frozen
#        (SIGSTOP), healthy again; a burst (peak memory); SIGTERM under load within the ECS stop
#        timeout with every bundle answered by the next container; retrain; then what a scanner
#        flags: shell-free entrypoint and healthcheck, package manager caches, secrets in the
#        layers (podman history, config, files), the packages in the image.
#
# Needs root (or password-less sudo) for apt-get, debootstrap and podman; installs podman, runc,
# debootstrap and debuerreotype from Debian when missing. Services must be up (make up).
set -euo pipefail
SVC=image
# shellcheck source=localstack/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if ((EUID == 0)); then
    as_root() { "$@"; }
else
    as_root() { sudo -n "$@"; }
fi

IMAGE=${ML_PIPELINE_IMAGE:-localhost/ml-pipeline:check}
BASE_IMAGE=localhost/ml-pipeline-base:bookworm-slim
IMAGE_DIR="$STATE_DIR/image"
BASE_DIR="$CACHE_DIR/image"
BASE_TAR="$BASE_DIR/bookworm-slim.tar"
BASE_MAX_AGE_DAYS=${ML_PIPELINE_IMAGE_BASE_MAX_AGE_DAYS:-7}
DEBIAN_MIRROR=${ML_PIPELINE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$REPO_ROOT/target}
DIST_BIN="$CARGO_TARGET_DIR/dist/ml-pipeline"
# A parameter's Default in infra/worker-service.yaml, so the check runs with the template's sizes.
template_default() {
    awk -v p="  $1:" '$0 == p {found = 1; next} found && /^    Default:/ {gsub(/[" ]|Default:/, ""); print; exit}' \
        "$REPO_ROOT/infra/worker-service.yaml"
}
# The worker task's memory (MiB), and retrain's.
TASK_MEMORY_MIB=$(template_default Memory)
RETRAIN_MEMORY_MIB=$(template_default RetrainMemory)
[[ $TASK_MEMORY_MIB =~ ^[0-9]+$ && $RETRAIN_MEMORY_MIB =~ ^[0-9]+$ ]] ||
    die "could not read the Memory and RetrainMemory defaults from infra/worker-service.yaml"
ECS_STOP_TIMEOUT=30
REPORT="$IMAGE_DIR/report.txt"

# podman as this machine kind needs it (../shared notes; README "The image"): runc with the
# cgroupfs manager, and no default ulimits (setting RLIMIT_NOFILE is not permitted here).
pm() {
    CONTAINERS_CONF="$IMAGE_DIR/containers.conf" as_root podman --runtime runc --cgroup-manager cgroupfs "$@"
}

# Record one measured line: printed now, and collected in the report.
note() {
    log "$*"
    printf '%s\n' "$*" >>"$REPORT"
}

ensure_tools() {
    local missing=() t
    for t in podman runc debootstrap debuerreotype-init; do
        command -v "$t" >/dev/null 2>&1 || missing+=("$t")
    done
    if ((${#missing[@]})); then
        log "installing podman runc debootstrap debuerreotype (missing: ${missing[*]})"
        local t0=$SECONDS
        as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
            podman runc debootstrap debuerreotype >&2
        log "installed in $((SECONDS - t0))s"
    fi
    mkdir -p "$IMAGE_DIR" "$BASE_DIR"
    printf '[containers]\ndefault_ulimits = []\n\n[engine]\nevents_logger = "file"\n' >"$IMAGE_DIR/containers.conf"
}

# ---------------------------------------------------------------------------------------------
# base

make_base_tar() {
    local work="$BASE_DIR/rootfs.tmp" t0=$SECONDS
    if [[ -s $BASE_TAR && -z $(find "$BASE_TAR" -mtime +"$BASE_MAX_AGE_DAYS") ]]; then
        return 0
    fi
    log "making the bookworm-slim rootfs from $DEBIAN_MIRROR (about 2-3 min)"
    as_root rm -rf "$work"
    # --non-debian: the mirror as given (debuerreotype's default, snapshot.debian.org, may be
    # unreachable); the image's own apt sources are set below.
    as_root debuerreotype-init --non-debian "$work" bookworm "$DEBIAN_MIRROR" >"$BASE_DIR/base.log" 2>&1 ||
        {
            log_tail "$BASE_DIR/base.log"
            die "debuerreotype-init (debootstrap) failed"
        }
    as_root debuerreotype-minimizing-config "$work"
    # What debian:bookworm-slim carries: deb822 sources for bookworm, -updates and -security.
    as_root rm -f "$work/etc/apt/sources.list"
    as_root tee "$work/etc/apt/sources.list.d/debian.sources" >/dev/null <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    {
        as_root debuerreotype-apt-get "$work" update -qq
        as_root debuerreotype-apt-get "$work" dist-upgrade -yqq
    } >>"$BASE_DIR/base.log" 2>&1 || {
        log_tail "$BASE_DIR/base.log"
        die "apt-get dist-upgrade in the new rootfs failed"
    }
    as_root debuerreotype-slimify "$work"
    as_root rm -rf "$work"/var/lib/apt/lists/*
    as_root debuerreotype-fixup "$work"
    as_root debuerreotype-tar "$work" "$BASE_TAR.tmp"
    # The tar's own mtime is the mirror's release date (debuerreotype's reproducible epoch):
    # the cache's age is counted from now.
    as_root touch "$BASE_TAR.tmp"
    as_root mv "$BASE_TAR.tmp" "$BASE_TAR"
    as_root rm -rf "$work"
    note "base: bookworm-slim rootfs made in $((SECONDS - t0))s ($(du -h "$BASE_TAR" | cut -f1) tar)"
}

base() {
    local t0=$SECONDS sum
    with_lock "$BASE_DIR/base.lock" make_base_tar
    sum=$(sha256sum "$BASE_TAR" | cut -d' ' -f1)
    if [[ "$(pm image inspect --format '{{index .Labels "ml-pipeline.base.rootfs-sha256"}}' "$BASE_IMAGE" 2>/dev/null)" != "$sum" ]]; then
        pm import --quiet --change "LABEL ml-pipeline.base.rootfs-sha256=$sum" --change 'CMD ["bash"]' \
            "$BASE_TAR" "$BASE_IMAGE" >/dev/null
        log "imported $BASE_TAR as $BASE_IMAGE"
    fi
    note "base: ready in $((SECONDS - t0))s ($BASE_IMAGE, rootfs sha256 ${sum:0:12})"
}

# ---------------------------------------------------------------------------------------------
# build

build() {
    local t0=$SECONDS ctx="$IMAGE_DIR/dist-binary"
    pm image exists "$BASE_IMAGE" || base
    log "cargo build --profile dist --locked -p ml-pipeline --bin ml-pipeline (into $CARGO_TARGET_DIR)"
    cargo build --profile dist --locked -p ml-pipeline --bin ml-pipeline
    note "build: dist binary in $((SECONDS - t0))s ($(du -h "$DIST_BIN" | cut -f1))"
    # Only the binary goes into the named build context (not the whole target dir).
    rm -rf "$ctx"
    mkdir -p "$ctx"
    cp "$DIST_BIN" "$ctx/ml-pipeline"
    local t1=$SECONDS rev
    rev=$(git -C "$REPO_ROOT" rev-parse HEAD 2>/dev/null || echo unknown)
    # --format docker: the OCI format has no HEALTHCHECK. --pull=never: nothing from a registry.
    # --label as well as the build argument: podman 4.3 (buildah 1.28) takes the LABEL step from
    # its cache when only REVISION's value changed, which would keep an older revision.
    pm build --isolation chroot --format docker --pull=never \
        --build-arg RUNTIME_BASE="$BASE_IMAGE" \
        --build-arg BINARY_STAGE=prebuilt \
        --build-arg REVISION="$rev" --label org.opencontainers.image.revision="$rev" \
        --build-context dist-binary="$ctx" \
        -f "$REPO_ROOT/Dockerfile" -t "$IMAGE" "$REPO_ROOT" >"$IMAGE_DIR/build.log" 2>&1 || {
        log_tail "$IMAGE_DIR/build.log"
        die "podman build failed (log $IMAGE_DIR/build.log)"
    }
    note "build: podman build in $((SECONDS - t1))s; image $IMAGE $(pm image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.1f MB", $1/1e6}')"
}

# ---------------------------------------------------------------------------------------------
# check

CHECK_ID=""
ENV_FILE="$IMAGE_DIR/check.env"
CONTAINERS=()
OUTSIDE_PID=""

# The flags of every container of the check: the ECS task's settings. The user is the image's
# own (USER 10001:10001). --read-only-tmpfs=false: no tmpfs on /tmp, /run, /var/tmp (podman adds
# them to a read-only root by default; ECS does not). The one writable path is a tmpfs on the
# image's VOLUME, owned by the container's user (U), as ECS gives the task's scratch volume the
# VOLUME's ownership. --health-interval=disable: no systemd timer here (the HEALTHCHECK is run
# with `podman healthcheck run`); the image's test, timeout, retries and start period apply.
# The fixtures are mounted read-only for `fixtures load` and `send`.
RUN_FLAGS=()
set_run_flags() {
    RUN_FLAGS=(--read-only --read-only-tmpfs=false --tmpfs "/var/lib/ml-pipeline:rw,mode=0750,U"
        --network host --init --health-interval=disable
        --env-file "$ENV_FILE" -v "$REPO_ROOT/fixtures/default:/fixtures:ro")
}

# One-off command in the image (no HEALTHCHECK: it serves nothing).
in_image() {
    pm run --rm --no-healthcheck "${RUN_FLAGS[@]}" "$IMAGE" "$@"
}

cleanup_check() {
    local c cg
    for c in "${CONTAINERS[@]}"; do
        pm rm -f -t 0 "$c" >/dev/null 2>&1 || true
    done
    if [[ -n $OUTSIDE_PID ]]; then
        kill -KILL "$OUTSIDE_PID" 2>/dev/null || true
    fi
    for c in "${CONTAINERS[@]}"; do
        for cg in "/sys/fs/cgroup/memory/$c" "/sys/fs/cgroup/$c"; do
            [[ -d $cg ]] && { as_root find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null || true; }
        done
    done
    if [[ -n $CHECK_ID ]]; then
        "$LS_VENV/bin/python" "$LOCALSTACK_DIR/image_check.py" teardown "$CHECK_ID" || true
        psql "$DATABASE_URL" -qc "DROP DATABASE IF EXISTS ${CHECK_ID//-/_} WITH (FORCE)" >/dev/null 2>&1 || true
    fi
}

py() { "$LS_VENV/bin/python" "$LOCALSTACK_DIR/image_check.py" "$@"; }

# The check's environment: the stack's AWS settings, its own queues, bucket and databases.
write_check_env() {
    local db=${CHECK_ID//-/_} port=$1
    psql "$DATABASE_URL" -qc "CREATE DATABASE $db" >/dev/null
    {
        local v
        for v in AWS_ENDPOINT_URL AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_REGION AWS_DEFAULT_REGION \
            ML_PIPELINE_S3_FORCE_PATH_STYLE MONGODB_URI; do
            [[ -n ${!v:-} ]] && printf '%s=%s\n' "$v" "${!v}"
        done
        printf 'DATABASE_URL=%s/%s\n' "${DATABASE_URL%/*}" "$db"
        # One MongoDB database for every run (nothing here drops one): fixtures load and
        # migrate are idempotent, and the check reads no document it did not load.
        printf 'MONGODB_DATABASE=ml_pipeline_image_check\n'
        printf 'ML_PIPELINE_HTTP_ADDR=127.0.0.1:%s\n' "$port"
        printf 'ML_PIPELINE_MODEL_POLL_SECS=2\n'
        py setup "$CHECK_ID"
    } >"$ENV_FILE"
}

# A free TCP port on 127.0.0.1 (host network: another helper's worker may hold 9090).
free_port() {
    "$LS_VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

env_of() { grep "^$1=" "$ENV_FILE" | cut -d= -f2-; }

bundle_count() {
    cat "$REPO_ROOT/fixtures/default/bundles.jsonl" "$REPO_ROOT/fixtures/default/seed_bundles.jsonl" | grep -c .
}

# The host PID of the worker inside container $1 (PID 1 there is the --init process).
worker_pid() {
    local init
    init=$(pm inspect --format '{{.State.Pid}}' "$1")
    ps --ppid "$init" -o pid= | tr -d ' ' | head -n 1
}

health_status() {
    pm inspect --format '{{.State.Health.Status}}' "$1" 2>/dev/null ||
        pm inspect --format '{{.State.Healthcheck.Status}}' "$1"
}

# The worker, limited to the ECS task's memory, in a cgroup of its own whose peak outlives it.
start_worker() {
    local name=$1
    CONTAINERS+=("$name")
    # Without systemd podman logs that it cannot add the HEALTHCHECK's timer: kept out of sight.
    pm run -d --name "$name" --memory "${TASK_MEMORY_MIB}m" --cgroup-parent "/$name" \
        "${RUN_FLAGS[@]}" "$IMAGE" >/dev/null 2>>"$IMAGE_DIR/podman.log"
}

# The peak memory (MiB) of the cgroup named after container $1, page cache it touched included,
# as the task's memory limit counts it (cgroup v1 max_usage_in_bytes, or v2 memory.peak).
peak_mib() {
    local f
    for f in "/sys/fs/cgroup/memory/$1/memory.max_usage_in_bytes" "/sys/fs/cgroup/$1/memory.peak"; do
        if [[ -r $f ]]; then
            echo $(($(cat "$f") >> 20))
            return 0
        fi
    done
    echo "n/a"
}

check_static() {
    local version user hc ep
    version=$(in_image --version)
    [[ $version == "ml-pipeline $(cargo metadata --no-deps --format-version 1 --manifest-path "$REPO_ROOT/Cargo.toml" |
        "$LS_VENV/bin/python" -c 'import json,sys; print([p["version"] for p in json.load(sys.stdin)["packages"] if p["name"]=="ml-pipeline"][0])')" ]] ||
        die "--version in the image answered '$version'"
    in_image healthcheck --help >/dev/null
    user=$(pm image inspect --format '{{.Config.User}}' "$IMAGE")
    [[ $user == 10001:10001 ]] || die "the image's user is '$user', not 10001:10001"
    hc=$(pm image inspect --format '{{json .Config.Healthcheck.Test}}' "$IMAGE")
    ep=$(pm image inspect --format '{{json .Config.Entrypoint}} {{json .Config.Cmd}}' "$IMAGE")
    [[ $hc == '["CMD","/usr/local/bin/ml-pipeline","healthcheck"]' ]] ||
        die "the image's HEALTHCHECK is $hc, not the exec form of ml-pipeline healthcheck"
    [[ $ep == '["/usr/local/bin/ml-pipeline"] ["worker"]' ]] || die "entrypoint and command are $ep"
    note "check: revision label $(pm image inspect --format '{{index .Labels "org.opencontainers.image.revision"}}' "$IMAGE")"
    note "check: '$version' and healthcheck --help as user $user on a read-only root; HEALTHCHECK $hc; ENTRYPOINT/CMD $ep (exec form: no shell at run time)"
}

check_setup() {
    local t0=$SECONDS out
    in_image migrate >"$IMAGE_DIR/migrate.log" 2>&1 || {
        log_tail "$IMAGE_DIR/migrate.log"
        die "migrate failed in the image"
    }
    in_image fixtures load --dir /fixtures >"$IMAGE_DIR/fixtures.log" 2>&1 || {
        log_tail "$IMAGE_DIR/fixtures.log"
        die "fixtures load failed in the image"
    }
    out=$(in_image train 2>"$IMAGE_DIR/train.log") || {
        log_tail "$IMAGE_DIR/train.log"
        die "train failed in the image"
    }
    printf '%s\n' "$out" >>"$IMAGE_DIR/train.log"
    MODEL_VERSION=$(grep -oE 'model banknote version [0-9]+' <<<"$out" | head -n 1 | awk '{print $4}')
    [[ -n $MODEL_VERSION ]] || die "train printed no version: $out"
    in_image models promote banknote "$MODEL_VERSION" >/dev/null
    note "check: migrate, fixtures load, train (version $MODEL_VERSION), models promote in the image: $((SECONDS - t0))s"
}

# Bundles sent first, then the container started: cold start to first answer.
check_serve() {
    local n t0 t1 summary first cold reader
    n=$(bundle_count)
    in_image send --from /fixtures >/dev/null
    # The reader long-polls the output before the container starts, so the first answer's
    # arrival is timed, not the reader's own start.
    py answers "$(env_of ML_PIPELINE_OUTPUT_QUEUE)" "$n" "$IMAGE_DIR/answers-image.json" --timeout 120 \
        >"$IMAGE_DIR/serve.json" &
    reader=$!
    sleep 2
    t0=$(date +%s.%N)
    start_worker "$CHECK_ID-worker"
    t1=$(date +%s.%N)
    wait "$reader" || die "the worker in the image answered $(cat "$IMAGE_DIR/serve.json")"
    summary=$(cat "$IMAGE_DIR/serve.json")
    first=$("$LS_VENV/bin/python" -c 'import json,sys; print(json.loads(sys.argv[1])["first_answer_at"])' "$summary")
    cold=$(awk -v a="$first" -v b="$t0" 'BEGIN{printf "%.2f", a-b}')
    # Where the time went, from the worker's own JSON log lines (the same clock).
    local marks
    marks=$(pm logs "$CHECK_ID-worker" 2>&1 | "$LS_VENV/bin/python" -c '
import datetime, json, sys
t0 = float(sys.argv[1]); seen = {}
for line in sys.stdin:
    try:
        e = json.loads(line)
    except ValueError:
        continue
    m = e.get("message", "")
    for key in ("model loaded", "worker started", "bundle answered"):
        if m == key and key not in seen:
            t = datetime.datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")[:26] + "+00:00").timestamp()
            seen[key] = t - t0
print(", ".join(f"{k} at {v:.2f}s" for k, v in seen.items()))' "$t0")
    note "check: the worker in the image answered $n of $n fixture bundles; cold start (podman run -d to the first answer on the output queue) ${cold}s: podman run -d returned at $(awk -v a="$t1" -v b="$t0" 'BEGIN{printf "%.2f", a-b}')s; worker log: $marks"
    pm top "$CHECK_ID-worker" user huser pid args | sed 's/^/    /' >&2
}

check_health() {
    local c=$CHECK_ID-worker pid i status age
    pm healthcheck run "$c" >/dev/null || die "healthcheck failed on a serving worker"
    status=$(health_status "$c")
    [[ $status == healthy ]] || die "health is '$status' while the worker serves"
    # Failures in the 20 s start period do not count: stall only after it.
    age=$(($(date +%s) - $(date -d "$(pm inspect --format '{{.State.StartedAt}}' "$c" | cut -d. -f1)" +%s)))
    ((age >= 21)) || sleep $((21 - age))
    pid=$(worker_pid "$c")
    kill -STOP "$pid"
    for i in 1 2 3 4; do
        pm healthcheck run "$c" >/dev/null 2>&1 || true
        status=$(health_status "$c")
        [[ $status == unhealthy ]] && break
    done
    kill -CONT "$pid"
    [[ $status == unhealthy ]] || die "health stayed '$status' with the worker stopped (SIGSTOP)"
    note "check: HEALTHCHECK healthy while serving; unhealthy after $i checks with the worker frozen (SIGSTOP, each check times out); "
    pm healthcheck run "$c" >/dev/null || die "healthcheck failed after SIGCONT"
    status=$(health_status "$c")
    [[ $status == healthy ]] || die "health is '$status' after the worker resumed"
    note "check: healthy again once it resumed"
}

# A burst of 200 bundles: throughput and the worker's peak memory against the task's.
check_burst() {
    local c=$CHECK_ID-worker n t0 pid hwm
    n=$(($(bundle_count) * 8))
    t0=$SECONDS
    in_image send --from /fixtures --repeat 8 >/dev/null
    py answers "$(env_of ML_PIPELINE_OUTPUT_QUEUE)" "$n" "$IMAGE_DIR/answers-burst.json" --timeout 180 >/dev/null ||
        die "the burst was not answered"
    pid=$(worker_pid "$c")
    hwm=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
    # The cgroup peak_mib reads is the worker's own (its cgroup is under the one named after it).
    grep -q ":/$c/" "/proc/$pid/cgroup" || die "the worker is not in the cgroup /$c: $(cat "/proc/$pid/cgroup")"
    note "check: burst of $n bundles sent (ml-pipeline send in the image) and answered in $((SECONDS - t0))s; worker peak RSS $((hwm / 1024)) MiB (VmHWM), container peak $(peak_mib "$c") MiB (cgroup), under the task's $TASK_MEMORY_MIB MiB (the container's limit)"
}

# SIGTERM under load: stops within the ECS stop timeout; every bundle answered (by the next
# container for what the first one left); nothing dead-lettered.
check_sigterm() {
    local c=$CHECK_ID-worker n t0 took code dlq sender before
    # 400 bundles at 100 a second; SIGTERM 2 s in, while bundles arrive and are in hand.
    n=$(($(bundle_count) * 16))
    in_image send --from /fixtures --repeat 16 --rate 100 >/dev/null &
    sender=$!
    sleep 2
    t0=$(date +%s.%N)
    pm stop -t "$ECS_STOP_TIMEOUT" "$c" >/dev/null
    took=$(awk -v a="$(date +%s.%N)" -v b="$t0" 'BEGIN{printf "%.2f", a-b}')
    wait "$sender" || die "send failed"
    before=$(py counts "$(env_of ML_PIPELINE_OUTPUT_QUEUE)")
    code=$(pm inspect --format '{{.State.ExitCode}}' "$c")
    pm logs "$c" >"$IMAGE_DIR/worker.log" 2>&1
    [[ $code == 0 ]] || die "the worker exited $code on SIGTERM (log $IMAGE_DIR/worker.log)"
    awk -v t="$took" -v m="$ECS_STOP_TIMEOUT" 'BEGIN{exit !(t < m)}' || die "SIGTERM took ${took}s"
    note "check: SIGTERM under load (podman stop -t $ECS_STOP_TIMEOUT, 2 s into sending $n bundles at 100/s): exited 0 in ${took}s; answers on the output then $before, input $(py counts "$(env_of ML_PIPELINE_INPUT_QUEUE)")"
    start_worker "$CHECK_ID-worker2"
    py answers "$(env_of ML_PIPELINE_OUTPUT_QUEUE)" "$n" "$IMAGE_DIR/answers-sigterm.json" --timeout 180 >/dev/null ||
        die "not every bundle sent before SIGTERM was answered after it"
    dlq=$(py counts "$(env_of ML_PIPELINE_INPUT_DLQ)")
    [[ $dlq == '{"visible": 0, "in_flight": 0}' ]] || die "dead-lettered after SIGTERM: $dlq"
    note "check: all $n bundles answered (the rest by a new container), none dead-lettered"
    pm stop -t "$ECS_STOP_TIMEOUT" "$CHECK_ID-worker2" >/dev/null
}

# The same bundles answered by the same binary outside the image: the same answers.
check_outside() {
    local n port
    n=$(bundle_count)
    port=$(free_port)
    in_image send --from /fixtures >/dev/null
    (
        set -a
        # shellcheck source=/dev/null
        . "$ENV_FILE"
        export ML_PIPELINE_HTTP_ADDR=127.0.0.1:$port
        exec "$DIST_BIN" worker
    ) >"$IMAGE_DIR/outside.log" 2>&1 &
    OUTSIDE_PID=$!
    py answers "$(env_of ML_PIPELINE_OUTPUT_QUEUE)" "$n" "$IMAGE_DIR/answers-outside.json" --timeout 120 >/dev/null ||
        die "the binary outside the image did not answer"
    kill -TERM "$OUTSIDE_PID"
    wait "$OUTSIDE_PID" || die "the worker outside the image exited non-zero on SIGTERM"
    OUTSIDE_PID=""
    py compare "$IMAGE_DIR/answers-image.json" "$IMAGE_DIR/answers-outside.json" >&2 ||
        die "the image and the binary outside it answered differently"
    note "check: the same $n answers from the image and from $DIST_BIN outside it (timing_ms aside)"
}

check_retrain() {
    local name=$CHECK_ID-retrain t0=$SECONDS code
    CONTAINERS+=("$name")
    code=0
    pm run --no-healthcheck --name "$name" --memory "${RETRAIN_MEMORY_MIB}m" --cgroup-parent "/$name" \
        "${RUN_FLAGS[@]}" "$IMAGE" retrain --force >"$IMAGE_DIR/retrain.log" 2>&1 || code=$?
    ((code == 0)) || {
        log_tail "$IMAGE_DIR/retrain.log"
        die "retrain exited $code in the image"
    }
    note "check: retrain --force in the image: exit 0 in $((SECONDS - t0))s, peak memory $(peak_mib "$name") MiB (cgroup) of the retrain task's $RETRAIN_MEMORY_MIB MiB; $(grep -m1 -iE 'challenger' "$IMAGE_DIR/retrain.log" | cut -c1-160)"
}

# What an image scanner flags.
check_scan() {
    local mnt secret hits
    pm history --no-trunc --format '{{.CreatedBy}}' "$IMAGE" >"$IMAGE_DIR/history.txt"
    pm image inspect --format '{{json .Config.Env}}' "$IMAGE" >"$IMAGE_DIR/env.txt"
    hits=$(grep -inE 'secret|password|passwd|token|AKIA[0-9A-Z]{16}|postgres://[^ ]*:[^ ]*@' \
        "$IMAGE_DIR/history.txt" "$IMAGE_DIR/env.txt" || true)
    [[ -z $hits ]] || die "the image's history or config names a secret: $hits"
    mnt=$(pm image mount "$IMAGE")
    for secret in "${AWS_SECRET_ACCESS_KEY:-}" "$(sed -n 's|^postgres://[^:]*:\([^@]*\)@.*|\1|p' <<<"$DATABASE_URL")"; do
        [[ ${#secret} -ge 6 ]] || continue
        if as_root grep -rlsF --exclude-dir=proc -- "$secret" "$mnt/etc" "$mnt/var" "$mnt/root" "$mnt/home" "$mnt/tmp" >/dev/null; then
            pm image unmount "$IMAGE" >/dev/null
            die "a secret of the local stack is in the image's files"
        fi
    done
    hits=$(as_root find "$mnt/var/lib/apt/lists" "$mnt/var/cache/apt" "$mnt/var/log/apt" -type f \
        \( -name '*Packages*' -o -name '*Release*' -o -name '*.deb' -o -name '*.bin' -o -name '*.log' \) 2>/dev/null || true)
    # The AWS SDK's rustls client reads the system roots (the local stack is plain HTTP).
    as_root test -s "$mnt/etc/ssl/certs/ca-certificates.crt" || hits+=" no /etc/ssl/certs/ca-certificates.crt"
    # shellcheck disable=SC2016 # dpkg-query's format, not shell
    as_root dpkg-query --admindir="$mnt/var/lib/dpkg" -W -f '${Package} ${Version}\n' >"$IMAGE_DIR/packages.txt"
    pm image unmount "$IMAGE" >/dev/null
    [[ -z $hits ]] || die "package manager caches in the image, or no CA roots: $hits"
    note "check: scan: no secret in podman history, config or files; no apt lists, .deb, pkgcache or apt logs; CA roots present; $(wc -l <"$IMAGE_DIR/packages.txt") Debian packages (listed in $IMAGE_DIR/packages.txt)"
    note "check: image size $(pm image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.1f MB", $1/1e6}') ($(du -h "$DIST_BIN" | cut -f1) of it the binary)"
}

check() {
    local t0=$SECONDS
    [[ -f $STATE_DIR/stack.env ]] || die "$STATE_DIR/stack.env not found: run localstack/up.sh (make up) first"
    [[ -x $LS_VENV/bin/python ]] || die "$LS_VENV not found: localstack/up.sh installs it"
    set -a
    # shellcheck source=/dev/null
    . "$STATE_DIR/stack.env"
    set +a
    pm image exists "$IMAGE" || die "$IMAGE not built: localstack/image.sh build"
    CHECK_ID="ml-pipeline-image-$(date +%s)-$$"
    trap cleanup_check EXIT
    write_check_env "$(free_port)"
    set_run_flags
    check_static
    check_setup
    check_serve
    check_health
    check_burst
    check_sigterm
    check_outside
    check_retrain
    check_scan
    note "check: passed in $((SECONDS - t0))s"
}

main() {
    local what=${1:-all}
    ensure_tools
    : >"$REPORT"
    case $what in
    base) base ;;
    build) build ;;
    check) check ;;
    all)
        base
        build
        check
        ;;
    *) die "usage: $0 [all|base|build|check]" ;;
    esac
    log "report: $REPORT"
}

main "$@"
