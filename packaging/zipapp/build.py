"""Build ssmtp-mailer.pyz: the package and its pure-Python dependencies in one zipapp.

    python3 packaging/zipapp/build.py [OUT]      (default: dist/ssmtp-mailer.pyz)

Run it with the interpreter of an environment where ssmtp-mailer is installed (the
CI's venv): the dependencies are copied from that environment's own installed files,
following each one's requirements for this platform, so nothing is downloaded. A
distribution with compiled extensions is left out and named; the README says which
features need one. Modules are byte-compiled for /usr/bin/python3 when it exists.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipapp
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
INTERPRETER = "/usr/bin/python3 -I"
NATIVE = (".so", ".pyd", ".dylib")
MAIN = "from ssmtp_mailer.entry import script\n\nscript()\n"

try:
    from packaging.requirements import Requirement
except ImportError:  # pip always carries a copy
    from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef]


def _key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def dependencies() -> tuple[list[md.Distribution], list[str]]:
    """Every distribution ssmtp-mailer needs here, and those left out as native."""
    wanted = [Requirement(r) for r in md.requires("ssmtp-mailer") or []]
    seen: dict[str, md.Distribution] = {}
    native: list[str] = []
    while wanted:
        req = wanted.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        key = _key(req.name)
        if key in seen or key in native:
            continue
        try:
            dist = md.distribution(req.name)
        except md.PackageNotFoundError:
            sys.exit(f"build.py: {req.name} is not installed in {sys.prefix}")
        if any(str(f).endswith(NATIVE) for f in dist.files or ()):
            native.append(key)
            continue
        seen[key] = dist
        wanted.extend(Requirement(r) for r in dist.requires or [])
    return list(seen.values()), native


def copy_distribution(dist: md.Distribution, into: Path) -> None:
    for file in dist.files or ():
        parts = Path(str(file)).parts
        if parts[0] == ".." or "__pycache__" in parts or str(file).endswith(".pyc"):
            continue  # console scripts outside site-packages, stale bytecode
        source = Path(str(dist.locate_file(file)))
        if source.is_file():
            target = into / file
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else REPO / "dist" / "ssmtp-mailer.pyz")
    dists, native = dependencies()
    with tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp) / "app"
        shutil.copytree(
            REPO / "ssmtp_mailer",
            stage / "ssmtp_mailer",
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )
        for dist in dists:
            copy_distribution(dist, stage)
        (stage / "__main__.py").write_text(MAIN)
        # zipimport reads only legacy bytecode (module.pyc beside module.py); hash-based,
        # so zip timestamps do not matter.
        compiler = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
        subprocess.run(
            [
                compiler,
                "-m",
                "compileall",
                "-q",
                "-b",
                "--invalidation-mode",
                "unchecked-hash",
                str(stage),
            ],
            check=True,
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        zipapp.create_archive(stage, out, interpreter=INTERPRETER, compressed=True)
        out.chmod(0o755)
    names = ", ".join(sorted(f"{d.metadata['Name']} {d.version}" for d in dists))
    print(f"{out}: ssmtp-mailer with {names}")
    if native:
        print(f"left out (compiled extensions): {', '.join(sorted(native))}")


if __name__ == "__main__":
    main()
