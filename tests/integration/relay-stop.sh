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

# One set-up or stop at a time, and none while a test module uses the relay (the tests
# hold this lock shared): two runs at once would otherwise restart Postfix under each other.
# relay-setup.sh calls this script while it holds the lock (RELAY_LOCK_HELD=1).
RELAY_LOCK="${RELAY_LOCK:-/tmp/ssmtp-mailer-relay.lock}"
if [ "${RELAY_LOCK_HELD:-0}" != 1 ]; then
    exec 9>>"$RELAY_LOCK"
    flock 9
fi

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

# SIGTERM to the master process is the documented way to stop both daemons
# (it is what "postfix stop" and "dovecot stop" do, minus their 1 s polling
# sleeps); each master then terminates its own children. Both are signalled
# first and waited for together (Postfix needs ~2 s, Dovecot ~3 s).
signal_one() {  # name pidfile exe-pattern -> prints pid if one was signalled
    local name="$1" pidfile="$2" pattern="$3" pid
    if ! pid="$(live_pid "$pidfile" "$pattern")"; then
        log "$name: not running"
        return 0
    fi
    log "$name: stopping pid $pid"
    kill -TERM "$pid" 2>/dev/null || true
    echo "$pid"
}
reap_one() {  # name pid stop-command...
    local name="$1" pid="$2"; shift 2
    [ -n "$pid" ] || return 0
    if ! wait_gone "$pid" 10; then
        log "$name: pid $pid still running after 10 s, trying: $*"
        "$@" >/dev/null 2>&1 || true
        if ! wait_gone "$pid" 5; then
            log "$name: pid $pid still running, sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            wait_gone "$pid" 5 || die "$name: could not stop pid $pid"
        fi
    fi
}

# Postfix children (smtpd with a client connected) can outlive the master
# for a moment while still holding the listening sockets: wait until the
# relay's ports are free so a restart can bind them.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_ports_free() {
    local env="$RELAY_DIR/relay.env" ports p n
    [ -f "$env" ] || return 0
    ports="$(sed -n "s/^RELAY_[A-Z]*_PORT='\([0-9]*\)'$/\1/p" "$env")"
    for p in $ports; do
        n=100
        while port_open "$p" && [ "$n" -gt 0 ]; do sleep 0.1; n=$((n - 1)); done
        port_open "$p" && log "warning: 127.0.0.1:$p still accepts connections after stop"
    done
    return 0
}

PF_PID="" DC_PID=""
if command -v postfix >/dev/null 2>&1 && [ -f "$PF_CONF/main.cf" ]; then
    PF_PID="$(signal_one postfix "$PF_PIDFILE" '*/postfix/*master')"
else
    log "postfix: no instance configured in $PF_CONF"
fi
if command -v dovecot >/dev/null 2>&1 && [ -f "$DC_CONF" ]; then
    DC_PID="$(signal_one dovecot "$DC_PIDFILE" '*/dovecot')"
else
    log "dovecot: no instance configured in $RELAY_DIR/dovecot"
fi
reap_one postfix "$PF_PID" postfix -c "$PF_CONF" abort
reap_one dovecot "$DC_PID" dovecot -c "$DC_CONF" stop
wait_ports_free

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
