#!/usr/bin/env bash
# A MongoDB wire-protocol server on 127.0.0.1:27017 (MongoDB itself cannot be installed here).
#
#   localstack/mongo.sh start|stop|status
#
# ML_PIPELINE_MONGO_SERVER picks the server:
#   secantusd-rs (default)  SecantusDB's Rust server. Found on PATH or in
#                           $ML_PIPELINE_CACHE_DIR/secantus/bin; built with `cargo install` when
#                           missing (about 10-11 min on 2 cores; cmake is installed first if missing).
#   secantusd-py            SecantusDB's Python server (no compile, slower: functional tests only),
#                           from a venv $ML_PIPELINE_CACHE_DIR/secantus-py-venv.
# State: <state>/mongo (secantusd-rs) or <state>/mongo-py (secantusd-py), <state>/logs/mongo.log,
# <state>/run/mongo.pid. Ready = a real `ping` command answered (localstack/mongo_ping.py).
set -euo pipefail
SVC=mongo
# shellcheck source=localstack/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MONGO_HOST=127.0.0.1
MONGO_PORT=27017
KIND=${ML_PIPELINE_MONGO_SERVER:-secantusd-rs}
PIDFILE="$RUN_DIR/mongo.pid"
KINDFILE="$RUN_DIR/mongo.kind"
LOGFILE="$LOG_DIR/mongo.log"
START_TIMEOUT=${ML_PIPELINE_START_TIMEOUT:-120}
PID_MARK=secantusd # both servers' command lines contain it

SECANTUS_RS_CRATE=secantus-mdb
SECANTUS_RS_VERSION=0.5.3-beta.196
SECANTUS_RS_ROOT="$CACHE_DIR/secantus"
SECANTUS_PY_SPEC="secantusdb==0.7.0b3"
SECANTUS_PY_VENV="$CACHE_DIR/secantus-py-venv"
CMAKE_VENV="$CACHE_DIR/cmake-venv"

# cmake is needed to build WiredTiger inside secantus-mdb. A pyenv shim may exist without a
# working cmake behind it, so test that it runs rather than that it is on PATH.
ensure_cmake() {
    if cmake --version >/dev/null 2>&1; then
        return 0
    fi
    if [[ ! -x $CMAKE_VENV/bin/cmake ]]; then
        log "cmake missing: installing it with pip into $CMAKE_VENV"
        make_venv "$CMAKE_VENV"
        "$CMAKE_VENV/bin/pip" install --quiet --disable-pip-version-check cmake
    fi
    export PATH="$CMAKE_VENV/bin:$PATH"
    cmake --version >/dev/null 2>&1 || die "cmake still not usable after install"
}

build_rs() {
    # Another process may have finished the build while we waited for the lock.
    [[ -x $SECANTUS_RS_ROOT/bin/secantusd-rs ]] && return 0
    command -v cargo >/dev/null 2>&1 || die "cargo not found: needed to build secantusd-rs (or use ML_PIPELINE_MONGO_SERVER=secantusd-py)"
    command -v cc >/dev/null 2>&1 || die "no C compiler (cc): install build-essential to build secantusd-rs"
    ensure_cmake
    local t0=$SECONDS buildlog="$LOG_DIR/secantus-build.log"
    log "building $SECANTUS_RS_CRATE $SECANTUS_RS_VERSION into $SECANTUS_RS_ROOT (about 10-11 min on 2 cores; log $buildlog)"
    # CARGO_TARGET_DIR is unset so that a CI setting for the project does not receive this build.
    if ! env -u CARGO_TARGET_DIR cargo install "$SECANTUS_RS_CRATE" --version "$SECANTUS_RS_VERSION" \
        --locked --ignore-rust-version --root "$SECANTUS_RS_ROOT" >"$buildlog" 2>&1; then
        log_tail "$buildlog"
        die "cargo install $SECANTUS_RS_CRATE failed"
    fi
    log "built secantusd-rs in $((SECONDS - t0))s"
}

rs_binary() {
    local bin
    if bin=$(command -v secantusd-rs 2>/dev/null); then
        echo "$bin"
        return 0
    fi
    if [[ ! -x $SECANTUS_RS_ROOT/bin/secantusd-rs ]]; then
        with_lock "$CACHE_DIR/.secantus-build.lock" build_rs >&2
    fi
    echo "$SECANTUS_RS_ROOT/bin/secantusd-rs"
}

install_py() {
    if [[ -x $SECANTUS_PY_VENV/bin/secantusd-py && "$(cat "$SECANTUS_PY_VENV/.ml-pipeline-spec" 2>/dev/null)" == "$SECANTUS_PY_SPEC" ]]; then
        return 0
    fi
    local t0=$SECONDS
    make_venv "$SECANTUS_PY_VENV"
    log "installing $SECANTUS_PY_SPEC into $SECANTUS_PY_VENV"
    "$SECANTUS_PY_VENV/bin/pip" install --quiet --disable-pip-version-check --only-binary=:all: "$SECANTUS_PY_SPEC"
    [[ -x $SECANTUS_PY_VENV/bin/secantusd-py ]] || die "secantusd-py not found in $SECANTUS_PY_VENV after install"
    printf '%s\n' "$SECANTUS_PY_SPEC" >"$SECANTUS_PY_VENV/.ml-pipeline-spec"
    log "venv ready in $((SECONDS - t0))s"
}

# Sets the global CMD array: the server command line.
server_command() {
    case "$KIND" in
    secantusd-rs)
        local bin
        bin=$(rs_binary)
        STORAGE="$STATE_DIR/mongo"
        CMD=("$bin" --host "$MONGO_HOST" --port "$MONGO_PORT" --storage-path "$STORAGE"
            --log-file-max 16MB --cache-size 256M)
        ;;
    secantusd-py)
        mkdir -p "$CACHE_DIR"
        with_lock "$CACHE_DIR/.secantus-py-venv.lock" install_py
        STORAGE="$STATE_DIR/mongo-py"
        CMD=("$SECANTUS_PY_VENV/bin/secantusd-py" --host "$MONGO_HOST" --port "$MONGO_PORT" --storage-path "$STORAGE")
        ;;
    *) die "ML_PIPELINE_MONGO_SERVER must be secantusd-rs or secantusd-py, not '$KIND'" ;;
    esac
}

PYTHON=$(find_python)
ready() { "$PYTHON" "$LOCALSTACK_DIR/mongo_ping.py" "$MONGO_HOST" "$MONGO_PORT" 2>/dev/null; }

start() {
    ensure_dirs
    local pid
    if pid=$(pid_from_file "$PIDFILE" "$PID_MARK"); then
        local running
        running=$(cat "$KINDFILE" 2>/dev/null || echo unknown)
        [[ $running == "$KIND" ]] || log "note: $running is running, not $KIND; stop it first to switch"
        wait_until "$START_TIMEOUT" "$pid" "$LOGFILE" "$running" ready
        log "already running ($running, PID $pid) on mongodb://$MONGO_HOST:$MONGO_PORT"
        return 0
    fi
    rm -f "$PIDFILE" "$KINDFILE"
    local CMD=() STORAGE
    server_command
    if port_open "$MONGO_HOST" "$MONGO_PORT"; then
        log "port $MONGO_PORT is already in use by a process this script did not start:"
        port_owner "$MONGO_PORT" >&2
        die "free port $MONGO_PORT (or stop that process) and retry"
    fi
    mkdir -p "$STORAGE"
    [[ -f $LOGFILE ]] && mv -f "$LOGFILE" "$LOGFILE.1"
    log "starting $KIND on $MONGO_HOST:$MONGO_PORT, storage $STORAGE (log $LOGFILE)"
    local t0=$SECONDS
    # setsid: own session (see localstack.sh); $! is the server's own PID (setsid and nohup exec).
    (
        cd "$STORAGE"
        exec setsid nohup "${CMD[@]}" >>"$LOGFILE" 2>&1 </dev/null
    ) &
    pid=$!
    printf '%s\n' "$pid" >"$PIDFILE"
    printf '%s\n' "$KIND" >"$KINDFILE"
    if ! (wait_until "$START_TIMEOUT" "$pid" "$LOGFILE" "$KIND" ready); then
        stop_pidfile "$PIDFILE" "$PID_MARK" 30 # do not leave a half-started server behind
        exit 1
    fi
    if ! pid_from_file "$PIDFILE" "$PID_MARK" >/dev/null; then
        die "PID $pid is not $KIND (cmdline: $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null))"
    fi
    if ! check_loopback_only "$pid"; then
        stop_pidfile "$PIDFILE" "$PID_MARK" 30
        die "$KIND bound a non-loopback address; stopped it"
    fi
    log "ready in $((SECONDS - t0))s ($KIND, PID $pid): mongodb://$MONGO_HOST:$MONGO_PORT"
    show_listeners "$pid"
}

stop() {
    stop_pidfile "$PIDFILE" "$PID_MARK" 30
    rm -f "$KINDFILE"
}

status() {
    local pid
    if pid=$(pid_from_file "$PIDFILE" "$PID_MARK"); then
        local state=answering
        ready || state="NOT answering ping"
        log "running ($(cat "$KINDFILE" 2>/dev/null || echo unknown), PID $pid), $state"
        show_listeners "$pid"
        return 0
    fi
    log "stopped"
    return 3
}

case "${1:-}" in
start) start ;;
stop) stop ;;
status) status ;;
*)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
