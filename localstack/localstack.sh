#!/usr/bin/env bash
# LocalStack 4.8.1 (SQS, S3, CloudFormation) in host mode, without Docker, on 127.0.0.1:4566.
#
#   localstack/localstack.sh start|stop|status|install   (install: only make sure the venv exists)
#
# The venv $ML_PIPELINE_CACHE_DIR/localstack-venv is installed from localstack/requirements.lock
# (every dependency pinned, --no-deps: unpinned installs of 4.8.1 fail) when missing, and reused.
# State: <state>/localstack (FILESYSTEM_ROOT), <state>/logs/localstack.log, <state>/run/localstack.pid.
# LocalStack itself also writes /tmp/localstack-s3-storage and ~/.cache/plux (fixed paths).
set -euo pipefail
SVC=localstack
# shellcheck source=localstack/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

LS_HOST=127.0.0.1
LS_PORT=4566
LS_LOCK="$LOCALSTACK_DIR/requirements.lock"
LS_VERSION=4.8.1
PIDFILE="$RUN_DIR/localstack.pid"
LOGFILE="$LOG_DIR/localstack.log"
START_TIMEOUT=${ML_PIPELINE_START_TIMEOUT:-120}
PID_MARK=launcher.py # expected in the server's command line

lock_digest() { sha256sum "$LS_LOCK" | cut -d' ' -f1; }

venv_ok() {
    [[ -x $LS_VENV/bin/python ]] &&
        "$LS_VENV/bin/python" - "$LS_VERSION" <<'EOF' >/dev/null 2>&1
import sys, importlib.metadata as md
assert md.version("localstack-core") == sys.argv[1]
import localstack.runtime.main, boto3, twisted.internet.endpoints  # noqa: F401
EOF
}

install_venv() {
    local marker="$LS_VENV/.ml-pipeline-lock.sha256" want
    want=$(lock_digest)
    if [[ -f $marker && "$(<"$marker")" == "$want" ]] && venv_ok; then
        return 0
    fi
    if [[ ! -f $marker ]] && venv_ok; then
        # A venv installed from the same lock by hand (no marker yet): adopt it.
        log "adopting existing venv $LS_VENV (localstack-core $LS_VERSION)"
        printf '%s\n' "$want" >"$marker"
        return 0
    fi
    local start=$SECONDS
    if [[ ! -x $LS_VENV/bin/python ]] || ! "$LS_VENV/bin/python" -c 'import sys; assert sys.version_info[:2] == (3, 11)' 2>/dev/null; then
        make_venv "$LS_VENV"
    fi
    log "installing LocalStack $LS_VERSION into $LS_VENV from $LS_LOCK (--no-deps, about 1 min)"
    "$LS_VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -r "$LS_LOCK"
    venv_ok || die "venv $LS_VENV does not import localstack $LS_VERSION after install"
    printf '%s\n' "$want" >"$marker"
    log "venv ready in $((SECONDS - start))s"
}

ensure_venv() {
    [[ -f $LS_LOCK ]] || die "missing $LS_LOCK"
    mkdir -p "$CACHE_DIR"
    with_lock "$CACHE_DIR/.localstack-venv.lock" install_venv
}

healthy() {
    "$LS_VENV/bin/python" - "$LS_HOST" "$LS_PORT" <<'EOF' 2>/dev/null
import json, sys, urllib.request
url = f"http://{sys.argv[1]}:{sys.argv[2]}/_localstack/health"
with urllib.request.urlopen(url, timeout=2) as r:
    services = json.load(r).get("services", {})
ok = all(services.get(s) in ("running", "available") for s in ("sqs", "s3", "cloudformation"))
sys.exit(0 if ok else 1)
EOF
}

health_line() {
    "$LS_VENV/bin/python" - "$LS_HOST" "$LS_PORT" <<'EOF' 2>/dev/null || echo "health endpoint not answering"
import json, sys, urllib.request
url = f"http://{sys.argv[1]}:{sys.argv[2]}/_localstack/health"
with urllib.request.urlopen(url, timeout=2) as r:
    h = json.load(r)
s = h.get("services", {})
print(f"version {h.get('version')}; " + ", ".join(f"{k}={s.get(k)}" for k in ("sqs", "s3", "cloudformation")))
EOF
}

start() {
    ensure_dirs
    ensure_venv
    local pid
    if pid=$(pid_from_file "$PIDFILE" "$PID_MARK"); then
        wait_until "$START_TIMEOUT" "$pid" "$LOGFILE" "LocalStack" healthy
        log "already running (PID $pid) on http://$LS_HOST:$LS_PORT"
        return 0
    fi
    rm -f "$PIDFILE"
    if port_open "$LS_HOST" "$LS_PORT"; then
        log "port $LS_PORT is already in use by a process this script did not start:"
        port_owner "$LS_PORT" >&2
        die "free port $LS_PORT (or stop that process) and retry"
    fi

    mkdir -p "$STATE_DIR/localstack"
    [[ -f $LOGFILE ]] && mv -f "$LOGFILE" "$LOGFILE.1"
    log "starting LocalStack $LS_VERSION on $LS_HOST:$LS_PORT (log $LOGFILE)"
    local t0=$SECONDS
    # setsid: own session, so a Ctrl-C in the terminal that ran `make test` does not reach it.
    # The background job is setsid -> exec nohup -> exec python: $! is the server's own PID.
    (
        cd "$STATE_DIR/localstack"
        export SERVICES=sqs,s3,cloudformation \
            GATEWAY_LISTEN="$LS_HOST:$LS_PORT" \
            EAGER_SERVICE_LOADING=1 \
            PERSISTENCE=0 \
            DNS_ADDRESS=0 \
            DISABLE_EVENTS=1 \
            SKIP_SSL_CERT_DOWNLOAD=1 \
            GATEWAY_SERVER=twisted \
            FILESYSTEM_ROOT="$STATE_DIR/localstack" \
            LOCALSTACK_HOST="$LS_HOST:$LS_PORT" \
            SQS_ENDPOINT_STRATEGY=path \
            ML_PIPELINE_BIND_HOST="$LS_HOST"
        exec setsid nohup "$LS_VENV/bin/python" "$LOCALSTACK_DIR/launcher.py" >>"$LOGFILE" 2>&1 </dev/null
    ) &
    pid=$!
    printf '%s\n' "$pid" >"$PIDFILE"
    if ! (wait_until "$START_TIMEOUT" "$pid" "$LOGFILE" "LocalStack" healthy); then
        stop_pidfile "$PIDFILE" "$PID_MARK" 30 # do not leave a half-started server behind
        exit 1
    fi
    if ! pid_from_file "$PIDFILE" "$PID_MARK" >/dev/null; then
        log_tail "$LOGFILE"
        die "PID $pid is not the LocalStack launcher (cmdline: $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null))"
    fi
    if ! check_loopback_only "$pid"; then
        stop_pidfile "$PIDFILE" "$PID_MARK" 30
        die "LocalStack bound a non-loopback address; stopped it"
    fi
    log "ready in $((SECONDS - t0))s (PID $pid): http://$LS_HOST:$LS_PORT"
    show_listeners "$pid"
}

stop() {
    stop_pidfile "$PIDFILE" "$PID_MARK" 30
}

status() {
    local pid
    if pid=$(pid_from_file "$PIDFILE" "$PID_MARK"); then
        log "running (PID $pid): $(health_line)"
        show_listeners "$pid"
        return 0
    fi
    log "stopped"
    return 3
}

case "${1:-}" in
install) ensure_venv ;;
start) start ;;
stop) stop ;;
status) status ;;
*)
    echo "usage: $0 start|stop|status|install" >&2
    exit 2
    ;;
esac
