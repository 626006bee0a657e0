"""A cache of the validated sections of a large configuration tree, so a send skips parsing.

Safe by construction: it is JSON (loading it runs no code), lives in a folder only the invoking
user can write, is replaced atomically, and is used only when every source file still has the
size, mtime, ctime and inode it had, with the same list of files, and was written by the same
loader code. The ctime catches an in-place edit that kept the mtime (`rsync -t --inplace`,
`cp -p`); the code digest, an upgrade. A file modified within `RACY_NS` of the cache being
written is also compared by content, since its times alone may not have moved.
Anything unexpected means "no cache": the tree is then read as if the cache did not exist.
A tree with errors is never cached; warnings are cached and reported as before.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from ssmtp_mailer import __version__, paths
from ssmtp_mailer.config.model import (
    AuthMethod,
    DeliveryMode,
    DirectTls,
    DkimAlgorithm,
    DomainConfig,
    HostPort,
    Location,
    MappingConfig,
    UserConfig,
)
from ssmtp_mailer.patterns import Pattern, parse_mapping, remember_valid_mapping

if TYPE_CHECKING:
    from typing import Any

FORMAT = 3
# File systems with coarse timestamps can store a change within this window under the old mtime.
RACY_NS = 2_000_000_000
# Cache files kept per user; the oldest are removed beyond this (one per configuration tree).
MAX_ENTRIES = 16

_DOMAIN_PATHS = ("ssl_ca_file", "ssl_cert_file", "ssl_key_file")


class Source(NamedTuple):
    """A configuration file as it was read: its identity and a digest of its bytes."""

    path: str
    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    digest: str


class Sections(NamedTuple):
    """The validated sections of a tree and the warnings they gave."""

    domains: dict[str, DomainConfig]
    users: tuple[UserConfig, ...]
    mappings: tuple[MappingConfig, ...]
    warnings: tuple[str, ...]


def digest(data: bytes) -> str:
    import hashlib  # this module's imports wait until a tree is big enough to cache

    return hashlib.blake2b(data, digest_size=16).hexdigest()


def source_of(read: tuple[str, os.stat_result, bytes]) -> Source:
    """The Source of a file the loader read: (path, fstat of the open file, its bytes)."""
    path, st, data = read
    return Source(path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, digest(data))


# The modules whose code decides what a cached tree means: a change to any of them (an
# upgrade, a local patch) makes every cache stale.
_LOADER_MODULES = ("loader", "model", "values", "ini", "cache")
_code: list[str] = []


def code_digest() -> str:
    """A digest of the loader's own source files, computed once per process."""
    if not _code:
        here = Path(__file__).parent
        parts = [(here / f"{name}.py").read_bytes() for name in _LOADER_MODULES]
        parts.append((here.parent / "patterns.py").read_bytes())
        _code.append(digest(b"\0".join(parts)))
    return _code[0]


def _cache_file(main_file: Path) -> Path:
    import hashlib

    name = hashlib.blake2b(str(main_file).encode("utf-8", "surrogateescape"), digest_size=16)
    return paths.config_cache_dir() / f"config-{name.hexdigest()}.json"


def _private_dir(directory: Path) -> bool:
    """True when `directory` is a real folder that only this user (or root) can write."""
    try:
        st = os.lstat(directory)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and st.st_mode & 0o022 == 0


def lookup(main_file: Path, context: str, main: Source, files: Sequence[str]) -> Sections | None:
    """The cached sections of this tree if nothing it was built from changed, else None."""
    import json

    try:
        target = _cache_file(main_file)
        if not _private_dir(target.parent):
            return None
        fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with open(fd, "rb") as handle:
            st = os.fstat(handle.fileno())
            if st.st_uid != os.geteuid() or st.st_mode & 0o022:
                return None
            record = json.loads(handle.read())
        if not _unchanged(record, main_file, context, main, files):
            return None
        return _decode(record["sections"])
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
        return None


def _unchanged(
    record: dict[str, Any], main_file: Path, context: str, main: Source, files: Sequence[str]
) -> bool:
    if (
        record["format"] != FORMAT
        or record["version"] != __version__
        or record["code"] != code_digest()
        or record["main_file"] != str(main_file)
        or record["context"] != context
    ):
        return False
    stored = record["sources"]
    if len(stored) != len(files) + 1 or Source(*stored[0]) != main:
        return False
    racy_from = int(record["written_ns"]) - RACY_NS
    for path, entry in zip(files, stored[1:], strict=True):
        # entry is a stored Source: path, size, mtime_ns, ctime_ns, inode, digest.
        st = os.stat(path)
        if entry[:5] != [path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]:
            return False
        if entry[2] >= racy_from and digest(Path(path).read_bytes()) != entry[5]:
            return False
    # The loader checks these files exist; they are outside the tree, so check them again.
    for domain in record["sections"]["domains"]:
        names = [domain.get(key) for key in _DOMAIN_PATHS] + list(domain.get("dkim_key_file", ()))
        for name in names:
            if name is not None and not (os.path.isfile(name) and os.access(name, os.R_OK)):
                return False
    return True


def store(main_file: Path, context: str, sources: Sequence[Source], sections: Sections) -> None:
    """Write the cache for this tree (its mappings are all valid); failures change nothing."""
    if any(d.password is not None for d in sections.domains.values()):
        return  # a secret is never copied out of the file whose permissions guard it
    import json
    import tempfile

    try:
        target = _cache_file(main_file)
        directory = target.parent
        if not directory.exists():
            directory.parent.mkdir(parents=True, exist_ok=True)
            directory.mkdir(mode=0o700)
        if not _private_dir(directory):
            return
        record = {
            "format": FORMAT,
            "version": __version__,
            "code": code_digest(),
            "main_file": str(main_file),
            "context": context,
            "written_ns": time.time_ns(),
            "sources": [list(s) for s in sources],
            "sections": _encode(sections),
        }
        data = json.dumps(record, separators=(",", ":")).encode("utf-8")
        fd, temp = tempfile.mkstemp(prefix=".config-", suffix=".tmp", dir=directory)
        try:
            with open(fd, "wb") as handle:
                handle.write(data)
            os.replace(temp, target)
        except BaseException:
            os.unlink(temp)
            raise
        _prune(directory)
    except (OSError, ValueError, TypeError):
        return


def _prune(directory: Path) -> None:
    entries = sorted(directory.glob("config-*.json"), key=lambda p: p.stat().st_mtime_ns)
    for old in entries[:-MAX_ENTRIES]:
        old.unlink(missing_ok=True)


def _location(value: Location | None) -> list[Any] | None:
    return None if value is None else [value.path, value.line]


def _encode(sections: Sections) -> dict[str, Any]:
    domains = []
    for d in sections.domains.values():
        row = d._asdict()
        row["location"] = _location(d.location)
        row["password_location"] = _location(d.password_location)
        row["fallback_servers"] = [[h.host, h.port] for h in d.fallback_servers]
        row["auth_method"] = d.auth_method.value
        row["delivery_mode"] = d.delivery_mode.value
        row["direct_tls"] = d.direct_tls.value
        row["dkim_algorithm"] = d.dkim_algorithm.value
        for key in _DOMAIN_PATHS:
            value = row[key]
            row[key] = None if value is None else str(value)
        row["dkim_key_file"] = [str(p) for p in d.dkim_key_file]
        domains.append(row)
    users = []
    for u in sections.users:
        row = u._asdict()
        row["location"] = _location(u.location)
        users.append(row)
    mappings = []
    for m in sections.mappings:
        # The parsed from_pattern goes along, so the rewrite index need not check it again.
        pattern = parse_mapping(m.from_pattern, m.to_pattern)
        mappings.append(
            [
                m.name,
                m.location.path,
                m.location.line,
                m.from_pattern,
                m.to_pattern,
                m.smtp_account,
                m.domain,
                m.allowed_recipients,
                m.rewrite_headers,
                pattern.local,
                pattern.domain,
                pattern.bare,
            ]
        )
    return {
        "domains": domains,
        "users": users,
        "mappings": mappings,
        "warnings": list(sections.warnings),
    }


def _decode(data: dict[str, Any]) -> Sections:
    domains: dict[str, DomainConfig] = {}
    for row in data["domains"]:
        row["location"] = Location(*row["location"])
        if row["password_location"] is not None:
            row["password_location"] = Location(*row["password_location"])
        row["fallback_servers"] = tuple(HostPort(*h) for h in row["fallback_servers"])
        row["auth_method"] = AuthMethod(row["auth_method"])
        row["delivery_mode"] = DeliveryMode(row["delivery_mode"])
        row["direct_tls"] = DirectTls(row.get("direct_tls", DirectTls.OPPORTUNISTIC.value))
        row["dkim_algorithm"] = DkimAlgorithm(row["dkim_algorithm"])
        for key in _DOMAIN_PATHS:
            if row[key] is not None:
                row[key] = Path(row[key])
        row["dkim_selector"] = tuple(row["dkim_selector"])
        row["dkim_key_file"] = tuple(Path(p) for p in row["dkim_key_file"])
        domain = DomainConfig(**row)
        domains[domain.name] = domain
    users = []
    for row in data["users"]:
        row["location"] = Location(*row["location"])
        for key in ("allowed_types", "allowed_recipients", "allowed_domains"):
            row[key] = tuple(row[key])
        users.append(UserConfig(**row))
    mappings = []
    for row in data["mappings"]:
        name, path, line, source, target, account, route, allowed, headers = row[:9]
        mappings.append(
            MappingConfig(
                name, Location(path, line), source, target, account, route, tuple(allowed), headers
            )
        )
        remember_valid_mapping(source, target, Pattern(source, *row[9:12]))
    return Sections(domains, tuple(users), tuple(mappings), tuple(data["warnings"]))
