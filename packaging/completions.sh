#!/bin/sh
# Write click's bash, zsh and fish completion for ssmtp-mailer under DESTDIR (the
# package root), from the source tree this script is in, run by $PYTHON (default python3).
# Used by debian/rules.
set -eu
dest=${1:?usage: completions.sh DESTDIR}
tree=$(cd "$(dirname "$0")/.." && pwd)
complete() {  # shell, target file
    install -d "$dest/$(dirname "$2")"
    env _SSMTP_MAILER_COMPLETE="$1_source" PYTHONPATH="$tree" "${PYTHON:-python3}" -m ssmtp_mailer >"$dest/$2"
    grep -q ssmtp-mailer "$dest/$2"
}
complete bash usr/share/bash-completion/completions/ssmtp-mailer
complete zsh usr/share/zsh/vendor-completions/_ssmtp-mailer
complete fish usr/share/fish/vendor_completions.d/ssmtp-mailer.fish
