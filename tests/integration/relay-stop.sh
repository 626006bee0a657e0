#!/usr/bin/env bash
# Stop the test relay started by relay-setup.sh (Postfix + Dovecot instances
# under $RELAY_DIR). Only the processes recorded in that instance's own pid
# files are stopped. Safe to run when nothing is running. Keeps the state
# directory (certificates, Maildir, logs); pass --purge to delete it as well.
set -euo pipefail

RELAY_DIR="${RELAY_DIR:-/tmp/ssmtp-mailer-relay}"
QUIET=0 PURGE=0
for arg in "$@"; do
    case "$arg" in
        --quiet|-q) QUIET=1 ;;
        --purge) PURGE=1 ;;
        -h|--help) echo "usage: RELAY_DIR=DIR $0 [--quiet] [--purge]"; exit 0 ;;
        *) echo "relay-stop: unknown argument '$arg'" >&2; exit 64 ;;
    esac
done

log() { [ "$QUIET" -eq 1 ] || printf 'relay-stop: %s\n' "$*" >&2; }
die() { printf 'relay-stop: ERROR: %s\n' "$*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "must run as root"

PF_CONF="$RELAY_DIR/postfix"
PF_PIDFILE="$RELAY_DIR/spool/pid/master.pid"
DC_CONF="$RELAY_DIR/dovecot/dovecot.conf"
DC_PIDFILE="$RELAY_DIR/dovecot/run/master.pid"

# pid from FILE if that process is alive and its executable matches PATTERN
live_pid() {
    local file="$1" pattern="$2" pid exe
    [ -f "$file" ] || return 1
    pid="$(tr -dc '0-9' < "$file")"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    exe="$(readlink "/proc/$pid/exe" 2>/dev/null || true)"
    case "$exe" in
        $pattern) echo "$pid" ;;
        *) return 1 ;;
    esac
}

wait_gone() {  # pid seconds
    local pid="$1" n=$(( $2 * 10 ))
    while kill -0 "$pid" 2>/dev/null && [ "$n" -gt 0 ]; do sleep 0.1; n=$((n - 1)); done
    ! kill -0 "$pid" 2>/dev/null
}

stop_one() {  # name pidfile exe-pattern stop-command...
    local name="$1" pidfile="$2" pattern="$3" pid; shift 3
    if ! pid="$(live_pid "$pidfile" "$pattern")"; then
        log "$name: not running"
        return 0
    fi
    log "$name: stopping pid $pid"
    "$@" >/dev/null 2>&1 || true
    if ! wait_gone "$pid" 10; then
        log "$name: pid $pid still running after 10 s, sending SIGTERM"
        kill -TERM "$pid" 2>/dev/null || true
        if ! wait_gone "$pid" 5; then
            log "$name: pid $pid still running, sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            wait_gone "$pid" 5 || die "$name: could not stop pid $pid"
        fi
    fi
}

if command -v postfix >/dev/null 2>&1 && [ -f "$PF_CONF/main.cf" ]; then
    stop_one postfix "$PF_PIDFILE" '*/postfix/*master' postfix -c "$PF_CONF" stop
else
    log "postfix: no instance configured in $PF_CONF"
fi
if command -v dovecot >/dev/null 2>&1 && [ -f "$DC_CONF" ]; then
    stop_one dovecot "$DC_PIDFILE" '*/dovecot' dovecot -c "$DC_CONF" stop
else
    log "dovecot: no instance configured in $RELAY_DIR/dovecot"
fi

if [ "$PURGE" -eq 1 ]; then
    case "$RELAY_DIR" in
        /|/tmp|/var|/usr|/etc|/root|/home) die "refusing to purge '$RELAY_DIR'" ;;
    esac
    [ -f "$RELAY_DIR/relay.env" ] || [ ! -e "$RELAY_DIR" ] \
        || die "refusing to purge '$RELAY_DIR': no relay.env, not a relay directory"
    rm -rf -- "$RELAY_DIR"
    log "removed $RELAY_DIR"
fi
log "stopped"
