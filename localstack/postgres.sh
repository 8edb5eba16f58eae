#!/usr/bin/env bash
# PostgreSQL (Debian's packaged cluster, default 15/main) on 127.0.0.1:5432, with the project's
# role and database:  postgres://ml_pipeline:ml_pipeline@127.0.0.1:5432/ml_pipeline
#
#   localstack/postgres.sh start|stop|status
#
# Installs the `postgresql` package with apt-get when pg_ctlcluster or the cluster is missing.
# Starts and stops with pg_ctlcluster (which uses the postmaster's own PID file), so the cluster
# stays where Debian keeps it (/var/lib/postgresql/<ver>/main); it writes a conf.d file that makes
# it listen on 127.0.0.1 only. Needs root (or password-less sudo).
set -euo pipefail
SVC=postgres
# shellcheck source=localstack/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PG_HOST=127.0.0.1
PG_PORT=5432
PG_CLUSTER=main
DB_ROLE=ml_pipeline
DB_PASSWORD=ml_pipeline
DB_NAME=ml_pipeline
START_TIMEOUT=${ML_PIPELINE_START_TIMEOUT:-120}

if ((EUID == 0)); then
    as_root() { "$@"; }
    as_postgres() { (cd / && runuser -u postgres -- "$@"); }
else
    as_root() { sudo -n "$@"; }
    as_postgres() { (cd / && sudo -n -u postgres "$@"); }
fi

# The cluster version: $ML_PIPELINE_PG_VERSION, else the newest existing "main" cluster.
cluster_version() {
    if [[ -n ${ML_PIPELINE_PG_VERSION:-} ]]; then
        echo "$ML_PIPELINE_PG_VERSION"
        return 0
    fi
    command -v pg_lsclusters >/dev/null 2>&1 || return 1
    pg_lsclusters -h 2>/dev/null | awk -v c="$PG_CLUSTER" '$2 == c {print $1}' | sort -n | tail -n 1 | grep .
}

ensure_installed() {
    if command -v pg_ctlcluster >/dev/null 2>&1 && PG_VERSION=$(cluster_version) &&
        [[ -d /etc/postgresql/$PG_VERSION/$PG_CLUSTER ]]; then
        return 0
    fi
    if ! command -v pg_ctlcluster >/dev/null 2>&1 || ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
        log "PostgreSQL not installed: apt-get install postgresql"
        local t0=$SECONDS
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
        log "installed in $((SECONDS - t0))s"
    fi
    if ! PG_VERSION=$(cluster_version) || [[ ! -d /etc/postgresql/$PG_VERSION/$PG_CLUSTER ]]; then
        PG_VERSION=${ML_PIPELINE_PG_VERSION:-$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -n | tail -n 1)}
        log "creating cluster $PG_VERSION/$PG_CLUSTER"
        as_root pg_createcluster "$PG_VERSION" "$PG_CLUSTER" >&2
    fi
}

conf_file() { echo "/etc/postgresql/$PG_VERSION/$PG_CLUSTER/conf.d/ml-pipeline.conf"; }
pg_log() { echo "/var/log/postgresql/postgresql-$PG_VERSION-$PG_CLUSTER.log"; }

# Writes the conf.d file; returns 0 when it changed (a running server must restart).
write_conf() {
    local file tmp
    file=$(conf_file)
    tmp=$(mktemp)
    cat >"$tmp" <<EOF
# Written by ml-pipeline's localstack/postgres.sh; rewritten on every start.
# Local dev/test server: listen on loopback only.
listen_addresses = '$PG_HOST'
port = $PG_PORT
# Speed over durability for tests: with these off, an OS crash or power loss can lose
# or corrupt data. Acceptable for this throwaway dev/test cluster only; never copy to
# a server that holds data anyone needs.
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
    if [[ -f $file ]] && cmp -s "$tmp" "$file"; then
        rm -f "$tmp"
        return 1
    fi
    as_root install -D -m 0644 "$tmp" "$file"
    rm -f "$tmp"
    log "wrote $file"
    return 0
}

online() { pg_lsclusters -h "$PG_VERSION" "$PG_CLUSTER" 2>/dev/null | awk '{print $4}' | grep -qx online; }
ready() { pg_isready -q -h "$PG_HOST" -p "$PG_PORT" -t 2; }

ensure_role_and_db() {
    as_postgres psql -X -q -v ON_ERROR_STOP=1 -d postgres <<EOF
DO \$\$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$DB_ROLE') THEN
    CREATE ROLE $DB_ROLE LOGIN CREATEDB PASSWORD '$DB_PASSWORD';
  ELSE
    ALTER ROLE $DB_ROLE LOGIN CREATEDB PASSWORD '$DB_PASSWORD';
  END IF;
END
\$\$;
SELECT 'CREATE DATABASE $DB_NAME OWNER $DB_ROLE'
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$DB_NAME') \gexec
EOF
    # Check the URL the project uses really works (password auth over TCP).
    PGPASSWORD=$DB_PASSWORD PGCONNECT_TIMEOUT=5 psql -X -q -At -h "$PG_HOST" -p "$PG_PORT" -U "$DB_ROLE" -d "$DB_NAME" \
        -c 'select 1' >/dev/null ||
        die "cannot connect as $DB_ROLE to postgres://$DB_ROLE:***@$PG_HOST:$PG_PORT/$DB_NAME"
}

start() {
    ensure_installed
    local changed=0 t0=$SECONDS
    write_conf && changed=1
    if online; then
        if ((changed)); then
            log "configuration changed: restarting cluster $PG_VERSION/$PG_CLUSTER"
            as_root pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" restart -m fast
        else
            log "already running (cluster $PG_VERSION/$PG_CLUSTER)"
        fi
    else
        if port_open "$PG_HOST" "$PG_PORT"; then
            log "port $PG_PORT is already in use by another process:"
            port_owner "$PG_PORT" >&2
            die "free port $PG_PORT and retry"
        fi
        log "starting cluster $PG_VERSION/$PG_CLUSTER on $PG_HOST:$PG_PORT (log $(pg_log))"
        if ! as_root pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" start; then
            log_tail "$(pg_log)"
            die "pg_ctlcluster $PG_VERSION $PG_CLUSTER start failed"
        fi
    fi
    wait_until "$START_TIMEOUT" "" "$(pg_log)" "PostgreSQL" ready
    ensure_role_and_db
    local pid
    pid=$(head -n 1 "/var/lib/postgresql/$PG_VERSION/$PG_CLUSTER/postmaster.pid" 2>/dev/null || true)
    if [[ -n $pid ]] && ! check_loopback_only "$pid"; then
        die "PostgreSQL listens on a non-loopback address; check /etc/postgresql/$PG_VERSION/$PG_CLUSTER"
    fi
    log "ready in $((SECONDS - t0))s (postmaster PID ${pid:-?}): postgres://$DB_ROLE:$DB_PASSWORD@$PG_HOST:$PG_PORT/$DB_NAME"
    [[ -n $pid ]] && show_listeners "$pid"
    return 0
}

stop() {
    if ! command -v pg_lsclusters >/dev/null 2>&1 || ! PG_VERSION=$(cluster_version); then
        log "not installed"
        return 0
    fi
    if online; then
        log "stopping cluster $PG_VERSION/$PG_CLUSTER"
        as_root pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" stop -m fast
        log "stopped"
    else
        log "not running"
    fi
}

status() {
    if ! command -v pg_lsclusters >/dev/null 2>&1 || ! PG_VERSION=$(cluster_version); then
        log "not installed"
        return 3
    fi
    if online && ready; then
        local pid
        pid=$(head -n 1 "/var/lib/postgresql/$PG_VERSION/$PG_CLUSTER/postmaster.pid" 2>/dev/null || true)
        log "running (cluster $PG_VERSION/$PG_CLUSTER, postmaster PID ${pid:-?})"
        [[ -n $pid ]] && show_listeners "$pid"
        return 0
    fi
    log "stopped (cluster $PG_VERSION/$PG_CLUSTER)"
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
