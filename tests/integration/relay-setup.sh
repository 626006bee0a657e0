#!/usr/bin/env bash
# Start a real, self-contained SMTP relay (Postfix + Dovecot SASL) on 127.0.0.1
# for ssmtp-mailer's integration tests and benchmarks.
#
# Runs as root, no stdin, no network except Debian's apt repositories.
# Idempotent: re-running stops the running instance and starts a fresh one.
# Everything (configs, spool, certificates, logs, Maildir) lives under
# $RELAY_DIR; the system's /etc/postfix and /etc/dovecot are not used.
# See tests/integration/README.md for ports, users and where mail lands.
set -euo pipefail

RELAY_DIR="${RELAY_DIR:-/tmp/ssmtp-mailer-relay}"
RELAY_SUBMISSION_PORT="${RELAY_SUBMISSION_PORT:-10587}"
RELAY_SMTPS_PORT="${RELAY_SMTPS_PORT:-10465}"
RELAY_PLAINAUTH_PORT="${RELAY_PLAINAUTH_PORT:-10588}"
RELAY_TRUSTED_PORT="${RELAY_TRUSTED_PORT:-10025}"
# Unix user that owns the delivered mail (the Maildir and its files).
RELAY_MAIL_USER="${RELAY_MAIL_USER:-nobody}"
# SASL mechanisms Dovecot offers (space separated, Dovecot names).
RELAY_AUTH_MECHANISMS="${RELAY_AUTH_MECHANISMS:-plain login}"
# Set to 1 to throw away and regenerate the CA and server certificate.
RELAY_REGEN_CERTS="${RELAY_REGEN_CERTS:-0}"
RELAY_START_TIMEOUT="${RELAY_START_TIMEOUT:-30}"
# Set to 1 to empty the Maildir on (re)start; by default delivered mail is kept.
RELAY_RESET_MAILDIR="${RELAY_RESET_MAILDIR:-0}"

RELAY_USER='relay-user@example.com'
RELAY_PASSWORD='S3cret: p@ss#"word'
RELAY_OCI_USER='ocid1.user.oc1..aaaa@ocid1.tenancy.oc1..bbbb.com'
RELAY_OCI_PASSWORD='oci-pass'

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PF_CONF="$RELAY_DIR/postfix"          # postfix -c directory (main.cf, master.cf)
PF_QUEUE="$RELAY_DIR/spool"           # queue_directory (private/auth lives here)
PF_DATA="$RELAY_DIR/data"             # data_directory
DC_DIR="$RELAY_DIR/dovecot"           # dovecot.conf, users, base_dir
MAILDIR="$RELAY_DIR/Maildir"          # every delivered message lands here

log() { printf 'relay-setup: %s\n' "$*" >&2; }
die() { printf 'relay-setup: ERROR: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (Postfix and Dovecot need it)"

# One set-up or stop at a time, and none while a test module uses the relay (the tests
# hold this lock shared): two runs at once would otherwise restart Postfix under each other.
RELAY_LOCK="${RELAY_LOCK:-/tmp/ssmtp-mailer-relay.lock}"
exec 9>>"$RELAY_LOCK"
flock 9
case "$RELAY_DIR" in
    /*) ;;
    *) die "RELAY_DIR must be an absolute path, got '$RELAY_DIR'" ;;
esac
case "$RELAY_DIR" in
    *[[:space:]]*|*[\'\"\\\$\`,=]*) die "RELAY_DIR must not contain spaces or shell/Postfix metacharacters" ;;
esac
for p in "$RELAY_SUBMISSION_PORT" "$RELAY_SMTPS_PORT" "$RELAY_PLAINAUTH_PORT" "$RELAY_TRUSTED_PORT"; do
    [[ "$p" =~ ^[0-9]+$ ]] && [ "$p" -ge 1 ] && [ "$p" -le 65535 ] || die "bad port number '$p'"
done

# ---------------------------------------------------------------- 1. packages
# libnet-ssleay-perl: swaks needs it for STARTTLS/SMTPS (only a Recommends).
PACKAGES=(postfix dovecot-core msmtp swaks libnet-ssleay-perl)
missing_packages() {
    local p st
    for p in "${PACKAGES[@]}"; do
        st="$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)"
        [ "$st" = "install ok installed" ] || printf '%s\n' "$p"
    done
}

install_packages() {
    local missing
    missing="$(missing_packages)"
    [ -z "$missing" ] && return 0
    log "installing: $(echo $missing)"
    export DEBIAN_FRONTEND=noninteractive
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    # Keep the packages' maintainer scripts from starting the *system* daemons
    # (there is no systemd; we start our own instances below).
    local made_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    local rc=0
    # apt-get update only when the package lists do not know the packages yet.
    # shellcheck disable=SC2086
    if ! apt-cache show $missing >/dev/null 2>&1; then
        apt-get update -qq </dev/null >&2 || rc=$?
    fi
    if [ "$rc" -eq 0 ]; then
        # shellcheck disable=SC2086
        if ! apt-get install -y -qq --no-install-recommends $missing </dev/null >&2; then
            log "install failed; refreshing package lists and retrying"
            apt-get update -qq </dev/null >&2 || true
            # shellcheck disable=SC2086
            apt-get install -y -qq --no-install-recommends $missing </dev/null >&2 || rc=$?
        fi
    fi
    [ "$made_policy" -eq 1 ] && rm -f /usr/sbin/policy-rc.d
    [ "$rc" -eq 0 ] || die "apt-get failed (exit $rc) installing: $(echo $missing)"
    missing="$(missing_packages)"
    [ -z "$missing" ] || die "packages still missing after install: $(echo $missing)"
}
install_packages

for cmd in postfix postconf dovecot doveconf openssl swaks msmtp; do
    command -v "$cmd" >/dev/null 2>&1 || die "'$cmd' not found in PATH after install"
done
getent passwd postfix >/dev/null || die "user 'postfix' missing (postfix package broken?)"
getent passwd "$RELAY_MAIL_USER" >/dev/null || die "RELAY_MAIL_USER '$RELAY_MAIL_USER' does not exist"
MAIL_UID="$(id -u "$RELAY_MAIL_USER")"
MAIL_GID="$(id -g "$RELAY_MAIL_USER")"
[ "$MAIL_UID" -ge 1 ] || die "RELAY_MAIL_USER must not be root (Postfix virtual(8) refuses uid 0)"

# Postfix ships /usr/sbin/sendmail; record who owns it (tests must call the
# project's sendmail by explicit path, never /usr/sbin/sendmail).
SENDMAIL_OWNER="$(dpkg-query -S /usr/sbin/sendmail 2>/dev/null | cut -d: -f1 || true)"
SENDMAIL_OWNER="${SENDMAIL_OWNER:-none}"

# -------------------------------------------------- stop a previous instance
if [ -f "$HERE/relay-stop.sh" ]; then
    RELAY_DIR="$RELAY_DIR" RELAY_LOCK_HELD=1 bash "$HERE/relay-stop.sh" --quiet 9>&- || die "could not stop the previous relay instance"
fi

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in "$RELAY_SUBMISSION_PORT" "$RELAY_SMTPS_PORT" "$RELAY_PLAINAUTH_PORT" "$RELAY_TRUSTED_PORT"; do
    if port_open "$p"; then
        die "port 127.0.0.1:$p is already in use by another program: $(ss -Hltnp "sport = :$p" 2>/dev/null | tr -s ' ' | head -1)"
    fi
done

# ------------------------------------------------------------ directories
mkdir -p "$RELAY_DIR"
chown root:root "$RELAY_DIR"
chmod 755 "$RELAY_DIR"
mkdir -p "$PF_CONF" "$PF_QUEUE" "$PF_DATA" "$DC_DIR" "$DC_DIR/run" "$DC_DIR/state" \
         "$MAILDIR/new" "$MAILDIR/cur" "$MAILDIR/tmp"
chown root:root "$PF_CONF" "$PF_QUEUE" "$DC_DIR"
chmod 755 "$PF_CONF" "$PF_QUEUE" "$DC_DIR"
chown postfix:root "$PF_DATA"; chmod 700 "$PF_DATA"
if [ "$RELAY_RESET_MAILDIR" = 1 ]; then
    find "$MAILDIR/new" "$MAILDIR/cur" "$MAILDIR/tmp" -mindepth 1 -delete
fi
chown -R "$MAIL_UID:$MAIL_GID" "$MAILDIR"
chmod 755 "$MAILDIR" "$MAILDIR/new" "$MAILDIR/cur" "$MAILDIR/tmp"

# ----------------------------------------------------------- 2. certificates
CA_KEY="$RELAY_DIR/ca.key" CA_PEM="$RELAY_DIR/ca.pem"
SRV_KEY="$RELAY_DIR/server.key" SRV_PEM="$RELAY_DIR/server.pem"
certs_ok() {
    [ -s "$CA_PEM" ] && [ -s "$CA_KEY" ] && [ -s "$SRV_PEM" ] && [ -s "$SRV_KEY" ] || return 1
    # still valid for at least a day, and chains to our CA under the strict checks
    # Python 3.13 clients use (VERIFY_X509_STRICT: key identifiers, critical constraints)
    openssl x509 -checkend 86400 -noout -in "$SRV_PEM" >/dev/null 2>&1 || return 1
    openssl verify -x509_strict -CAfile "$CA_PEM" "$SRV_PEM" >/dev/null 2>&1 || return 1
    # key matches certificate
    [ "$(openssl x509 -noout -pubkey -in "$SRV_PEM" 2>/dev/null | openssl sha256)" = \
      "$(openssl pkey -pubout -in "$SRV_KEY" 2>/dev/null | openssl sha256)" ] || return 1
}
if [ "$RELAY_REGEN_CERTS" = 1 ] || ! certs_ok; then
    log "generating test CA and server certificate (RSA 2048) in $RELAY_DIR"
    tmpd="$(mktemp -d "$RELAY_DIR/.certs.XXXXXX")"
    openssl req -x509 -new -newkey rsa:2048 -nodes -sha256 -days 3650 \
        -keyout "$tmpd/ca.key" -out "$tmpd/ca.pem" \
        -subj "/O=ssmtp-mailer tests/CN=ssmtp-mailer test CA" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -addext "subjectKeyIdentifier=hash" 2>/dev/null
    openssl req -new -newkey rsa:2048 -nodes -sha256 \
        -keyout "$tmpd/server.key" -out "$tmpd/server.csr" \
        -subj "/O=ssmtp-mailer tests/CN=localhost" 2>/dev/null
    cat > "$tmpd/server.ext" <<'EOF'
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost,IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid,issuer
EOF
    openssl x509 -req -sha256 -days 825 -in "$tmpd/server.csr" \
        -CA "$tmpd/ca.pem" -CAkey "$tmpd/ca.key" -CAcreateserial \
        -extfile "$tmpd/server.ext" -out "$tmpd/server.pem" 2>/dev/null
    openssl verify -x509_strict -CAfile "$tmpd/ca.pem" "$tmpd/server.pem" >/dev/null \
        || die "generated server certificate does not verify against the CA"
    mv -f "$tmpd/ca.key" "$CA_KEY"; mv -f "$tmpd/ca.pem" "$CA_PEM"
    mv -f "$tmpd/server.key" "$SRV_KEY"; mv -f "$tmpd/server.pem" "$SRV_PEM"
    rm -rf "$tmpd"
else
    log "reusing existing certificates in $RELAY_DIR (RELAY_REGEN_CERTS=1 to renew)"
fi
chmod 644 "$CA_PEM" "$SRV_PEM"
chmod 600 "$CA_KEY"
chmod 644 "$SRV_KEY"   # test-only key; readable so unprivileged test servers can reuse it
SRV_SHA256="$(openssl x509 -noout -fingerprint -sha256 -in "$SRV_PEM" | cut -d= -f2 | tr -d : | tr 'A-F' 'a-f')"

# ------------------------------------------------------------- 4. dovecot
# passwd-file splits every line on ':' with no escaping, so a password with a
# ':' cannot be stored as {PLAIN}; {PLAIN.b64} is the same plaintext scheme with
# the value base64-encoded, which holds any byte (':', '#', '"', spaces).
b64() { printf '%s' "$1" | base64 -w0; }
umask 077
{
    printf '%s:{PLAIN.b64}%s::::::\n' "$RELAY_USER" "$(b64 "$RELAY_PASSWORD")"
    printf '%s:{PLAIN.b64}%s::::::\n' "$RELAY_OCI_USER" "$(b64 "$RELAY_OCI_PASSWORD")"
} > "$DC_DIR/users.tmp"
umask 022
chown root:dovecot "$DC_DIR/users.tmp" 2>/dev/null || true
chmod 640 "$DC_DIR/users.tmp"
mv -f "$DC_DIR/users.tmp" "$DC_DIR/users"

cat > "$DC_DIR/dovecot.conf" <<EOF
# Generated by tests/integration/relay-setup.sh: Dovecot as Postfix SASL backend only.
instance_name = ssmtp-mailer-relay
protocols =
base_dir = $DC_DIR/run
state_dir = $DC_DIR/state
log_path = $DC_DIR/dovecot.log
info_log_path = $DC_DIR/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = $RELAY_AUTH_MECHANISMS
auth_failure_delay = 0
auth_verbose = yes
auth_cache_size = 0
passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%u $DC_DIR/users
}
userdb {
  driver = static
  args = uid=$MAIL_UID gid=$MAIL_GID home=$MAILDIR
}
service auth {
  unix_listener $PF_QUEUE/private/auth {
    mode = 0660
    user = postfix
    group = postfix
  }
}
EOF
doveconf -c "$DC_DIR/dovecot.conf" -n >/dev/null 2>"$DC_DIR/doveconf.err" \
    || die "dovecot config invalid: $(cat "$DC_DIR/doveconf.err")"

# ------------------------------------------------------------- 3. postfix
cat > "$PF_CONF/main.cf" <<EOF
# Generated by tests/integration/relay-setup.sh -- test relay, loopback only.
compatibility_level = 3.6
queue_directory = $PF_QUEUE
data_directory = $PF_DATA
mail_owner = postfix
setgid_group = postdrop
myhostname = localhost
alias_maps =
alias_database =
mydomain = localdomain
myorigin = \$myhostname
mydestination =
relayhost =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
biff = no
append_dot_mydomain = no
maillog_file = $RELAY_DIR/postfix.log
maillog_file_prefixes = $RELAY_DIR
smtpd_banner = \$myhostname ESMTP ssmtp-mailer test relay (Postfix)

# Deliver every recipient of every domain to one Maildir.
virtual_mailbox_domains = static:all
virtual_mailbox_base = $RELAY_DIR
virtual_mailbox_maps = static:Maildir/
virtual_uid_maps = static:$MAIL_UID
virtual_gid_maps = static:$MAIL_GID
virtual_minimum_uid = 1
virtual_mailbox_limit = 0
mailbox_size_limit = 0
message_size_limit = 60000000
smtputf8_enable = yes
# Keep delivered messages byte-for-byte as the client sent them: no header
# rewriting and no added Date/Message-ID/From/To for loopback clients.
local_header_rewrite_clients =
always_add_missing_headers = no
# Benchmarks send 1000-recipient messages in one transaction.
smtpd_recipient_limit = 10000
smtpd_recipient_overshoot_limit = 10000
smtpd_error_sleep_time = 0s
smtpd_soft_error_limit = 1000
smtpd_hard_error_limit = 1000
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0

# TLS (enabled per port in master.cf)
smtpd_tls_cert_file = $SRV_PEM
smtpd_tls_key_file = $SRV_KEY
smtpd_tls_security_level = none
smtpd_tls_loglevel = 1
smtpd_tls_received_header = yes
smtpd_tls_session_cache_database =
smtp_tls_security_level = none

# SASL via Dovecot (enabled per port in master.cf)
smtpd_sasl_type = dovecot
smtpd_sasl_path = private/auth
smtpd_sasl_auth_enable = no
smtpd_sasl_authenticated_header = yes
smtpd_sasl_security_options = noanonymous
smtpd_sasl_tls_security_options = noanonymous

# Relay policy. Every domain is a virtual mailbox domain, so
# reject_unauth_destination would let anyone through: the SASL ports use
# permit_sasl_authenticated followed by an unconditional rejection instead.
smtpd_restriction_classes = relay_denied
relay_denied = check_recipient_access static:{554 5.7.1 Relay access denied}, reject
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_recipient_restrictions =
EOF

cat > "$PF_CONF/master.cf" <<EOF
# Generated by tests/integration/relay-setup.sh
# service type  private unpriv  chroot  wakeup  maxproc command + args
# Trusted: plain SMTP, no TLS, no AUTH; any recipient from 127.0.0.0/8.
$RELAY_TRUSTED_PORT inet n - n - - smtpd
  -o syslog_name=postfix/trusted
  -o smtpd_tls_security_level=none
  -o smtpd_sasl_auth_enable=no
  -o smtpd_relay_restrictions=permit_mynetworks,reject
# Submission: STARTTLS required, AUTH (after STARTTLS) required to relay.
$RELAY_SUBMISSION_PORT inet n - n - - smtpd
  -o syslog_name=postfix/submission
  -o smtpd_tls_security_level=encrypt
  -o smtpd_tls_auth_only=yes
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_relay_restrictions=permit_sasl_authenticated,relay_denied
# SMTPS: implicit TLS (wrapper mode), AUTH required to relay.
$RELAY_SMTPS_PORT inet n - n - - smtpd
  -o syslog_name=postfix/smtps
  -o smtpd_tls_wrappermode=yes
  -o smtpd_tls_security_level=encrypt
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_relay_restrictions=permit_sasl_authenticated,relay_denied
# Plain-auth: AUTH offered over an unencrypted connection, no STARTTLS at all.
$RELAY_PLAINAUTH_PORT inet n - n - - smtpd
  -o syslog_name=postfix/plainauth
  -o smtpd_tls_security_level=none
  -o smtpd_tls_auth_only=no
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_relay_restrictions=permit_sasl_authenticated,relay_denied
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
EOF

# Create the queue directory tree and check the configuration.
postfix -c "$PF_CONF" check 2>"$RELAY_DIR/postfix-check.err" \
    || die "postfix check failed: $(cat "$RELAY_DIR/postfix-check.err")"
[ -d "$PF_QUEUE/private" ] || die "postfix did not create $PF_QUEUE/private"
if postconf -c "$PF_CONF" -n 2>&1 >/dev/null | grep -q .; then
    die "postconf warnings: $(postconf -c "$PF_CONF" -n 2>&1 >/dev/null)"
fi

# --------------------------------------------------------------- relay.env
q() { local s=${1//\'/\'\\\'\'}; printf "'%s'" "$s"; }   # single-quote for sh
{
    echo "# Generated by tests/integration/relay-setup.sh; values are sh single-quoted."
    echo "RELAY_DIR=$(q "$RELAY_DIR")"
    echo "RELAY_HOST=$(q 127.0.0.1)"
    echo "RELAY_HOSTNAME=$(q localhost)"
    echo "RELAY_SUBMISSION_PORT=$(q "$RELAY_SUBMISSION_PORT")"
    echo "RELAY_SMTPS_PORT=$(q "$RELAY_SMTPS_PORT")"
    echo "RELAY_PLAINAUTH_PORT=$(q "$RELAY_PLAINAUTH_PORT")"
    echo "RELAY_TRUSTED_PORT=$(q "$RELAY_TRUSTED_PORT")"
    echo "RELAY_USER=$(q "$RELAY_USER")"
    echo "RELAY_PASSWORD=$(q "$RELAY_PASSWORD")"
    echo "RELAY_OCI_USER=$(q "$RELAY_OCI_USER")"
    echo "RELAY_OCI_PASSWORD=$(q "$RELAY_OCI_PASSWORD")"
    echo "RELAY_CA=$(q "$CA_PEM")"
    echo "RELAY_SERVER_CERT=$(q "$SRV_PEM")"
    echo "RELAY_SERVER_KEY=$(q "$SRV_KEY")"
    echo "RELAY_SERVER_SHA256=$(q "$SRV_SHA256")"
    echo "RELAY_MAILDIR=$(q "$MAILDIR")"
    echo "RELAY_MSMTPRC=$(q "$RELAY_DIR/msmtprc")"
    echo "RELAY_POSTFIX_LOG=$(q "$RELAY_DIR/postfix.log")"
    echo "RELAY_DOVECOT_LOG=$(q "$DC_DIR/dovecot.log")"
    echo "RELAY_SYSTEM_SENDMAIL_OWNER=$(q "$SENDMAIL_OWNER")"
} > "$RELAY_DIR/relay.env.tmp"
chmod 644 "$RELAY_DIR/relay.env.tmp"
mv -f "$RELAY_DIR/relay.env.tmp" "$RELAY_DIR/relay.env"

# msmtp configuration for the benchmark (account "relay" = STARTTLS+AUTH on
# the submission port). msmtp 1.8 takes the rest of the line verbatim and only
# strips one pair of surrounding double quotes (no backslash escapes: measured),
# so quote only when the value has leading/trailing blanks or is itself "...".
msmtp_q() {
    case "$1" in
        [[:space:]]*|*[[:space:]]|\"*\") printf '"%s"' "$1" ;;
        *) printf '%s' "$1" ;;
    esac
}
umask 077
cat > "$RELAY_DIR/msmtprc.tmp" <<EOF
# Generated by tests/integration/relay-setup.sh
defaults
tls_trust_file $CA_PEM

account relay
host 127.0.0.1
port $RELAY_SUBMISSION_PORT
tls on
tls_starttls on
auth on
user $(msmtp_q "$RELAY_USER")
password $(msmtp_q "$RELAY_PASSWORD")
from $(msmtp_q "$RELAY_USER")

account smtps
host 127.0.0.1
port $RELAY_SMTPS_PORT
tls on
tls_starttls off
auth on
user $(msmtp_q "$RELAY_USER")
password $(msmtp_q "$RELAY_PASSWORD")
from $(msmtp_q "$RELAY_USER")

account trusted
host 127.0.0.1
port $RELAY_TRUSTED_PORT
tls off
auth off
from $(msmtp_q "$RELAY_USER")

account default : relay
EOF
umask 022
mv -f "$RELAY_DIR/msmtprc.tmp" "$RELAY_DIR/msmtprc"

# ----------------------------------------------------------------- 5. start
: > "$DC_DIR/dovecot.log"
: > "$RELAY_DIR/postfix.log"
# Daemons must not inherit our stdout/stderr: a caller reading them through a
# pipe (subprocess.run(capture_output=True), "| tail") would wait forever.
dovecot -c "$DC_DIR/dovecot.conf" 9>&- </dev/null >>"$DC_DIR/dovecot.log" 2>&1 \
    || die "dovecot failed to start; see $DC_DIR/dovecot.log"
postfix -c "$PF_CONF" start 9>&- </dev/null >/dev/null 2>"$RELAY_DIR/postfix-start.err" \
    || die "postfix failed to start: $(cat "$RELAY_DIR/postfix-start.err"); see $RELAY_DIR/postfix.log"

deadline=$((SECONDS + RELAY_START_TIMEOUT))
wait_for() {  # description, test command...
    local what="$1"; shift
    until "$@"; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "timed out after ${RELAY_START_TIMEOUT}s waiting for $what"
            log "--- tail $RELAY_DIR/postfix.log"; tail -n 20 "$RELAY_DIR/postfix.log" >&2 2>/dev/null || true
            log "--- tail $DC_DIR/dovecot.log"; tail -n 20 "$DC_DIR/dovecot.log" >&2 2>/dev/null || true
            exit 1
        fi
        sleep 0.1
    done
}
wait_for "dovecot auth socket $PF_QUEUE/private/auth" test -S "$PF_QUEUE/private/auth"
for p in "$RELAY_TRUSTED_PORT" "$RELAY_SUBMISSION_PORT" "$RELAY_SMTPS_PORT" "$RELAY_PLAINAUTH_PORT"; do
    wait_for "127.0.0.1:$p to accept connections" port_open "$p"
done

echo "relay ready: dir=$RELAY_DIR submission=127.0.0.1:$RELAY_SUBMISSION_PORT(STARTTLS+AUTH)" \
     "smtps=127.0.0.1:$RELAY_SMTPS_PORT(TLS+AUTH) plainauth=127.0.0.1:$RELAY_PLAINAUTH_PORT(AUTH,no TLS)" \
     "trusted=127.0.0.1:$RELAY_TRUSTED_PORT(no auth) maildir=$MAILDIR env=$RELAY_DIR/relay.env" \
     "user=$RELAY_USER sendmail-owner=$SENDMAIL_OWNER"
