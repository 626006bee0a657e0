#!/bin/bash
# Build the Debian package and check it (called by .ci/run, as root, on Debian 12):
#  1. packaging/debian/build.sh: git archive export + dpkg-buildpackage -us -uc -b;
#  2. its fields and contents with dpkg-deb; lintian, errors fail;
#  3. installed in a throwaway bookworm root (mmdebstrap from this machine's apt sources,
#     cached as a tarball in $SSMTP_MAILER_CI_CACHE), sendmail as root and as a user
#     to a test relay on 127.0.0.1 outside it, then purged.
# Never installs the package on this machine: it would remove the integration tier's Postfix.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${SSMTP_MAILER_CI_CACHE:-/var/cache/ssmtp-mailer-ci}
out=$(mktemp -d)
root=
cleanup() {
    if [ -n "$root" ]; then
        umount "$root/proc" 2>/dev/null || true
        rm -rf --one-file-system "$root"
    fi
    rm -rf "$out"
}
trap cleanup EXIT
fail() { echo "check-deb: $*" >&2; exit 1; }

echo "-- build"
deb=$("$repo/packaging/debian/build.sh" "$out" | tail -n1)
[ -f "$deb" ] || fail "no .deb built"

echo "-- fields and contents (dpkg-deb)"
field() { dpkg-deb -f "$deb" "$1"; }
[ "$(field Architecture)" = all ] || fail "Architecture is not all"
for f in Provides Conflicts Replaces; do
    [ "$(field "$f")" = mail-transport-agent ] || fail "$f: $(field "$f")"
done
depends=$(field Depends)
# pyproject.toml's minimums, by their Debian names, are the package's: each dependency
# as `python3-NAME (>= VERSION)`, and python3 (>= requires-python). Debian 12's python3 is
# 3.11, so a backport for older ones (tomli; python_version < '3.11') is left out.
wanted=$(/usr/bin/python3 - "$repo/pyproject.toml" <<'PY'
import re, sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
debian = {"dkimpy": "dkim", "pynacl": "nacl"}
print(f"python3 (>= {project['requires-python'].removeprefix('>=')})")
for requirement in project["dependencies"]:
    found = re.fullmatch(r"([\w.-]+)>=([\w.]+)(?:; python_version < '(\d+\.\d+)')?", requirement)
    if not found:
        sys.exit(f"pyproject.toml: {requirement!r}: not NAME>=VERSION, no Debian minimum for it")
    name, minimum, below = found.groups()
    if below is None or (3, 11) < tuple(map(int, below.split("."))):
        print(f"python3-{debian.get(name.lower(), name.lower())} (>= {minimum})")
PY
) || fail "pyproject.toml's dependencies: $wanted"
items=$(sed 's/, */\n/g' <<<"$depends")
for dep in procps; do
    grep -qE "^$dep( |$)" <<<"$items" || fail "Depends lacks $dep: $depends"
done
while read -r dep; do
    grep -qxF "$dep" <<<"$items" || fail "Depends lacks $dep (pyproject.toml's minimum): $depends"
done <<<"$wanted"
# Debian 12 has no keyring backend of its own for `password set` on a server.
grep -qE "(^|, )python3-keyrings\.alt(,|$)" <<<"$(field Suggests)" ||
    fail "Suggests lacks python3-keyrings.alt: $(field Suggests)"
listing=$(dpkg-deb -c "$deb")
has() { grep -qE "$1" <<<"$listing" || fail "not in the package: $1"; }
has '^-rwxr-xr-x root/root .* \./usr/bin/ssmtp-mailer$'
has ' \./usr/sbin/sendmail -> \.\./bin/ssmtp-mailer$'
has ' \./usr/lib/sendmail -> \.\./bin/ssmtp-mailer$'
has ' \./usr/bin/mailq -> ssmtp-mailer$'
has ' \./usr/bin/newaliases -> ssmtp-mailer$'
has ' \./usr/share/man/man8/ssmtp-mailer\.8\.gz$'
has ' \./usr/share/man/man5/ssmtp-mailer\.conf\.5\.gz$'
has ' \./usr/share/man/man8/sendmail\.8\.gz -> ssmtp-mailer\.8\.gz$'
has ' \./usr/share/man/man1/mailq\.1\.gz -> \.\./man8/ssmtp-mailer\.8\.gz$'
has '^-rw-r----- root/mail .* \./etc/ssmtp-mailer/domains/relay\.conf$'
has '^-rw-r--r-- root/root .* \./etc/ssmtp-mailer/ssmtp-mailer\.conf$'
has '^drwxr-xr-x mail/mail .* \./var/spool/ssmtp-mailer/$'
has '^drwx-wx-wt mail/mail .* \./var/spool/ssmtp-mailer/maildrop/$'
has '^drwxrws--- mail/mail .* \./var/spool/ssmtp-mailer/queue/$'
has ' \./etc/logrotate\.d/ssmtp-mailer$'
has '^-rw-r--r-- root/root .* \./etc/cron\.d/ssmtp-mailer$'
has ' \./usr/share/bash-completion/completions/ssmtp-mailer$'
has ' \./usr/share/zsh/vendor-completions/_ssmtp-mailer$'
has ' \./usr/share/fish/vendor_completions\.d/ssmtp-mailer\.fish$'
for unit in "$repo"/packaging/systemd/*.{service,socket,timer,path}; do
    [ -e "$unit" ] || continue
    has " \./lib/systemd/system/$(basename "$unit")\$"
done
conffiles=$(dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles)
for f in /etc/ssmtp-mailer/ssmtp-mailer.conf /etc/ssmtp-mailer/domains/relay.conf \
         /etc/logrotate.d/ssmtp-mailer /etc/cron.d/ssmtp-mailer; do
    grep -qx "$f" <<<"$conffiles" || fail "not a conffile: $f"
done
if grep -q 'site-packages\|/vendor/' <<<"$listing"; then fail "vendored or misplaced modules"; fi
# A long-running service (the listener) is started, restarted on upgrade and stopped on
# remove by deb-systemd-invoke, which skips it while disabled; a oneshot is never started.
script() { dpkg-deb --ctrl-tarfile "$deb" | tar -xO "./$1" 2>/dev/null || true; }
invokes() { script "$1" | grep -E "deb-systemd-invoke $2 .*'$3'" >/dev/null; }
for unit in "$repo"/packaging/systemd/*.service; do
    name=$(basename "$unit")
    if grep -qx 'Type=oneshot' "$unit"; then
        if invokes postinst '\$_dh_action' "$name"; then fail "postinst starts $name"; fi
    else
        invokes postinst '\$_dh_action' "$name" || fail "postinst never (re)starts $name"
        invokes prerm stop "$name" || fail "prerm does not stop $name on remove"
        if invokes preinst stop "$name"; then fail "preinst stops $name on upgrade"; fi
    fi
done
# Root never acts by name inside the spool: every name there is mail's to replace, and
# install, chown, chmod and touch follow the link it puts there (to /etc, say). A unit's
# root commands are all of them without User=, else those marked "+" or "!".
# `stat -c FORMAT NAME` only reads NAME itself (no -L: it follows no link).
for unit in "$repo"/packaging/systemd/*.service; do
    as_root='^Exec[A-Za-z]*='
    if grep -q '^User=' "$unit"; then as_root='^Exec[A-Za-z]*=[-@:+!]*[+!]'; fi
    if sed -E 's#stat -c [^ ]+ /var/spool/ssmtp-mailer/[^ ;)]*##g' "$unit" |
        grep -qE "$as_root.*/var/spool/ssmtp-mailer/"; then
        fail "$(basename "$unit"): a root command names a path inside the spool"
    fi
done
# A run leaves in maildrop/ what it cannot take yet (a fresh .tmp- file, say): a path unit
# that triggers while the directory is not empty would start the queue on it without end.
if grep -q '^DirectoryNotEmpty=' "$repo"/packaging/systemd/*.path; then
    fail "a path unit uses DirectoryNotEmpty=: it loops on what a queue run leaves in maildrop/"
fi
echo "ok: fields, links, modes, conffiles, units, maintainer scripts, cron.d, completion"

echo "-- lintian"
status=0
report=$(lintian --fail-on error --tag-display-limit 0 "$deb" 2>&1) || status=$?
grep -v 'running with root privileges' <<<"$report" || true
[ "$status" = 0 ] || fail "lintian reports errors (exit $status)"
echo "ok: lintian, no errors"

echo "-- install and send in a throwaway Debian 12 root"
# procps is left out on purpose: apt in the root fetches it as the package's Depends, so
# a dependency the package lacks shows there as a unit's missing Exec program.
deps=python3-click,python3-keyring,python3-dnspython,python3-dkim,python3-nacl,python3-cryptography,python3-platformdirs,python3-tomli-w,python3-aiosmtpd,ca-certificates,logrotate,passwd
sources=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
key=$(printf '%s\n%s\n' "$deps" "$sources" | sha256sum | cut -c1-12)
tarball="$cache/bookworm-$key.tar"
if [ ! -f "$tarball" ]; then
    mkdir -p "$cache"
    list=$(mktemp --suffix=.sources)
    # The machine's own sources, deb822 or one-line, as mmdebstrap takes them from a file.
    for f in /etc/apt/sources.list.d/*.sources; do [ -f "$f" ] && { cat "$f"; echo; }; done >"$list"
    if [ ! -s "$list" ]; then
        mv "$list" "${list%.sources}.list"; list=${list%.sources}.list
        cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null >"$list" || true
    fi
    partial=$(mktemp -u "$cache/.bookworm-XXXXXX.tar")  # two runs at once never share one
    mmdebstrap --quiet --variant=apt --skip=cleanup/apt/lists --include="$deps" \
        --format=tar bookworm "$partial" "$list"
    rm -f "$list"
    mv "$partial" "$tarball"
    find "$cache" -name 'bookworm-*.tar' ! -name "$(basename "$tarball")" -delete
fi
root=$(mktemp -d /var/tmp/ssmtp-mailer-root.XXXXXX)
tar -x -C "$root" -f "$tarball"
cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
mount -t proc proc "$root/proc"
"${PYTHON:-python3}" "$repo/packaging/debian/chroot_check.py" "$root" "$deb"
echo "check-deb: OK"
