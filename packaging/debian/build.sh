#!/bin/bash
# Build the Debian package from the committed tree: `git archive` export, packaging/debian
# copied to debian/, dpkg-buildpackage -us -uc -b. The .deb lands in OUTDIR (default dist/).
# Debian 12 with: dpkg-dev debhelper dh-python pybuild-plugin-pyproject python3-all
# python3-setuptools python3-click (see .ci/run), and fakeroot when not run as root.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
out=$(realpath -m "${1:-$repo/dist}")
# A pyenv or venv python3 ahead of Debian's breaks pybuild ("No module named build").
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
unset PYTHONPATH VIRTUAL_ENV PYTHONHOME

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
version=$(dpkg-parsechangelog -l "$repo/packaging/debian/changelog" -S Version)
src="$work/ssmtp-mailer-$version"
mkdir "$src"
# The committed tree; SSMTP_MAILER_BUILD_WORKTREE=1 adds uncommitted changes to tracked
# files (git stash create makes a commit of them without touching the worktree).
ref=HEAD
if [ "${SSMTP_MAILER_BUILD_WORKTREE:-}" = 1 ]; then
    ref=$(git -C "$repo" stash create)
    ref=${ref:-HEAD}
fi
git -C "$repo" archive --format=tar "$ref" | tar -x -C "$src"
cp -r "$src/packaging/debian" "$src/debian"
(cd "$src" && dpkg-buildpackage -us -uc -b >"$work/build.log" 2>&1) || {
    tail -n 60 "$work/build.log" >&2
    echo "build.sh: dpkg-buildpackage failed (log above)" >&2
    exit 1
}
mkdir -p "$out"
cp "$work"/ssmtp-mailer_"$version"_all.deb "$work"/ssmtp-mailer_"$version"_*.buildinfo "$work"/ssmtp-mailer_"$version"_*.changes "$out"/
echo "$out/ssmtp-mailer_${version}_all.deb"
