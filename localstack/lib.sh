# shellcheck shell=bash
# Shared helpers for the localstack/*.sh scripts. Source it; do not run it.
#
# Layout:
#   runtime state (PID files, logs, data dirs): ${ML_PIPELINE_STATE_DIR:-<repo>/.local}
#   reusable installs (venvs, secantusd-rs):    ${ML_PIPELINE_CACHE_DIR:-$HOME/.cache/ml-pipeline}

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LOCALSTACK_DIR="$REPO_ROOT/localstack"
STATE_DIR=${ML_PIPELINE_STATE_DIR:-$REPO_ROOT/.local}
CACHE_DIR=${ML_PIPELINE_CACHE_DIR:-$HOME/.cache/ml-pipeline}
LOG_DIR="$STATE_DIR/logs"
RUN_DIR="$STATE_DIR/run"
LS_VENV="$CACHE_DIR/localstack-venv" # LocalStack 4.8.1 + boto3 (also runs deploy_stack.py)
export REPO_ROOT LOCALSTACK_DIR STATE_DIR CACHE_DIR LOG_DIR RUN_DIR LS_VENV

# Name shown in front of every message; each script sets it.
: "${SVC:=ml-pipeline}"

log() { printf '[%s] %s\n' "$SVC" "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

ensure_dirs() { mkdir -p "$STATE_DIR" "$LOG_DIR" "$RUN_DIR" "$CACHE_DIR"; }

# Print the last lines of a log file (used on every start failure).
log_tail() {
    local file=$1 lines=${2:-40}
    if [[ -s $file ]]; then
        log "last $lines lines of $file:"
        tail -n "$lines" "$file" | sed 's/^/    /' >&2
    else
        log "(log $file is empty or missing)"
    fi
}

# True when something accepts TCP connections on host:port.
port_open() {
    local host=$1 port=$2
    (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null
}

# Describe who listens on a TCP port (for error messages).
port_owner() {
    local port=$1
    ss -H -ltnp "sport = :$port" 2>/dev/null || true
}

# The PID stored in a PID file, if that process is alive and its command line contains
# $2 (guards against a stale PID file whose number was reused by an unrelated process).
pid_from_file() {
    local pidfile=$1 expect=$2 pid
    [[ -f $pidfile ]] || return 1
    pid=$(<"$pidfile")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    if [[ -n $expect ]] && ! tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$expect"; then
        return 1
    fi
    printf '%s\n' "$pid"
}

# Stop the process named by a PID file: SIGTERM, wait, then SIGKILL after a timeout.
# Never looks processes up by name.
stop_pidfile() {
    local pidfile=$1 expect=$2 timeout=${3:-30} pid waited=0
    if ! pid=$(pid_from_file "$pidfile" "$expect"); then
        if [[ -f $pidfile ]]; then
            log "stale PID file $pidfile (process gone); removing it"
            rm -f "$pidfile"
        else
            log "not running"
        fi
        return 0
    fi
    log "stopping PID $pid (SIGTERM)"
    kill -TERM "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do
        if ((waited >= timeout * 10)); then
            log "PID $pid still alive after ${timeout}s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.5
            break
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
    rm -f "$pidfile"
    log "stopped (after $((waited / 10)).$((waited % 10))s)"
}

# wait_until TIMEOUT_S PID LOGFILE DESCRIPTION CMD...
# Polls CMD until it succeeds. Fails with the log tail when the timeout passes or when
# PID (if not empty) dies first.
wait_until() {
    local timeout=$1 pid=$2 logfile=$3 what=$4
    shift 4
    local start=$SECONDS
    until "$@"; do
        if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
            log_tail "$logfile"
            die "$what: process $pid exited before it became ready"
        fi
        if ((SECONDS - start >= timeout)); then
            log_tail "$logfile"
            die "$what: not ready after ${timeout}s"
        fi
        sleep 0.2
    done
}

# Fail unless every TCP listener of PID is bound to 127.0.0.1 (or ::1).
check_loopback_only() {
    local pid=$1 lines bad
    lines=$(ss -H -ltnp 2>/dev/null | grep -F "pid=$pid," || true)
    if [[ -z $lines ]]; then
        return 0
    fi
    bad=$(awk '{print $4}' <<<"$lines" | grep -vE '^(127\.0\.0\.1|\[::1\]):' || true)
    if [[ -n $bad ]]; then
        log "PID $pid listens on non-loopback addresses: $(tr '\n' ' ' <<<"$bad")"
        return 1
    fi
}

# Print the TCP listeners of a PID, one per line, indented.
show_listeners() {
    local pid=$1
    ss -H -ltnp 2>/dev/null | grep -F "pid=$pid," | awk '{print "    listening on " $4}' >&2 || true
}

# A Python 3.11 interpreter to build venvs with (LocalStack 4.8.1 is pinned for 3.11).
find_python() {
    local cand
    for cand in "${ML_PIPELINE_PYTHON:-}" python3.11 python3; do
        [[ -n $cand ]] || continue
        if command -v "$cand" >/dev/null 2>&1; then
            command -v "$cand"
            return 0
        fi
    done
    die "no python3 found (set ML_PIPELINE_PYTHON)"
}

# make_venv DIR: create a venv with a current pip.
make_venv() {
    local dir=$1 py
    py=$(find_python)
    log "creating venv $dir with $py ($("$py" --version 2>&1))"
    rm -rf "$dir"
    "$py" -m venv "$dir"
}

# pinned_venv NAME REQUIREMENTS: the dev-only venv $CACHE_DIR/NAME-venv with REQUIREMENTS (a
# pinned requirements file) installed; made again when missing or when the file changed.
# Prints its python on stdout (logs go to stderr).
pinned_venv() {
    local venv="$CACHE_DIR/$1-venv"
    with_lock "$CACHE_DIR/$1-venv.lock" install_pinned_venv "$venv" "$2"
    printf '%s\n' "$venv/bin/python"
}

install_pinned_venv() {
    local venv=$1 requirements=$2 stamp want start=$SECONDS
    stamp="$venv/.ml-pipeline-requirements"
    want=$(sha256sum "$requirements" | cut -d' ' -f1)
    if [[ -x $venv/bin/python && "$(cat "$stamp" 2>/dev/null)" == "$want" ]]; then
        return 0
    fi
    make_venv "$venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements" >&2
    printf '%s\n' "$want" >"$stamp"
    log "venv installed in $((SECONDS - start))s: $venv"
}

# Run a command with a lock file held (serialises concurrent installs into the cache).
with_lock() {
    local lockfile=$1
    shift
    mkdir -p "$(dirname "$lockfile")"
    (
        flock -w 3600 9 || die "could not take lock $lockfile"
        "$@"
    ) 9>"$lockfile"
}
