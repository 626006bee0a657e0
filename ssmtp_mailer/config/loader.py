"""Discovery, reading and validation of the configuration tree (SPEC §3)."""

from __future__ import annotations

import errno
import os
import socket
import stat
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ssmtp_mailer import paths
from ssmtp_mailer.addresses import domain_key, domain_problem
from ssmtp_mailer.config import values as v
from ssmtp_mailer.config.ini import RawSection, parse_ini
from ssmtp_mailer.config.model import (
    AuthMethod,
    Config,
    DeliveryMode,
    DirectTls,
    DkimAlgorithm,
    DomainConfig,
    GlobalConfig,
    Location,
    MappingConfig,
    TempFailurePolicy,
    UserConfig,
)
from ssmtp_mailer.errors import ConfigError
from ssmtp_mailer.patterns import parse_pattern, pattern_problem

if TYPE_CHECKING:
    from typing import Any

    Parser = Callable[[str], Any]

GLOBAL_KEYS: dict[str, Parser] = {
    "default_hostname": v.parse_own_hostname,
    "default_from": v.parse_address,
    "config_dir": v.parse_str,
    "domains_dir": v.parse_str,
    "users_dir": v.parse_str,
    "mappings_dir": v.parse_str,
    "ssl_dir": v.parse_str,
    "spool_dir": v.parse_str,
    "log_file": v.parse_str,
    "log_level": v.parse_log_level,
    "syslog": v.parse_bool,
    "max_connections": v.parse_positive,
    "connection_timeout": v.parse_timeout,
    "read_timeout": v.parse_timeout,
    "write_timeout": v.parse_timeout,
    "connection_reuse_idle": v.parse_seconds,
    "enable_rate_limiting": v.parse_bool,
    "rate_limit_per_minute": v.parse_positive,
    "rate_limit_wait": v.parse_seconds,
    "max_retries": v.parse_count,
    "retry_backoff": v.parse_seconds,
    "on_temporary_failure": v.enum_parser(TempFailurePolicy),
    "queue_lifetime": v.parse_seconds,
    "bounce": v.parse_bool,
    "dns_servers": v.parse_nameservers,
    "default_domain": v.parse_str,
    "users_required": v.parse_bool,
    "listen_address": v.parse_listen_addresses,
    "allowed_networks": v.parse_networks,
    "listen_tls_cert_file": v.parse_str,
    "listen_tls_key_file": v.parse_str,
    "listen_timeout": v.parse_timeout,
    "listen_user": v.parse_str,
    "listen_processes": v.parse_positive,
    "spool_user": v.parse_str,
    "max_message_size": v.parse_positive,
}

DOMAIN_KEYS: dict[str, Parser] = {
    "enabled": v.parse_bool,
    "smtp_server": v.parse_hostname,
    "smtp_port": v.parse_port,
    "fallback_servers": v.parse_hostport_list,
    "auth_method": v.enum_parser(AuthMethod, upper=True),
    "username": v.parse_str,
    "password": v.parse_str,
    "password_command": v.parse_str,
    "oauth2_token_command": v.parse_str,
    "relay_account": v.parse_address,
    "use_ssl": v.parse_bool,
    "use_starttls": v.parse_bool,
    "tls_verify": v.parse_bool,
    "ssl_ca_file": v.parse_str,
    "tls_fingerprint": v.parse_fingerprint,
    "ssl_cert_file": v.parse_str,
    "ssl_key_file": v.parse_str,
    "allow_plaintext_auth": v.parse_bool,
    "helo_name": v.parse_own_hostname,
    "delivery_mode": v.enum_parser(DeliveryMode),
    "direct_port": v.parse_port,
    "direct_tls": v.enum_parser(DirectTls),
    "dkim_selector": v.parse_selectors,
    "dkim_key_file": v.parse_list,
    "dkim_algorithm": v.enum_parser(DkimAlgorithm),
    "rate_limit_per_minute": v.parse_positive,
}

USER_KEYS: dict[str, Parser] = {
    "enabled": v.parse_bool,
    "domain": v.parse_str,
    "can_send_from": v.parse_bool,
    "can_send_to": v.parse_bool,
    "template_address": v.parse_bool,
    "allowed_types": v.parse_list,
    "allowed_recipients": v.parse_list,
    "allowed_domains": v.parse_list,
    "smtp_password_hash": v.parse_password_hash,
}

MAPPING_KEYS: dict[str, Parser] = {
    "from_pattern": v.parse_address,
    "to_pattern": v.parse_address,
    "smtp_account": v.parse_address,
    "domain": v.parse_str,
    "allowed_recipients": v.parse_list,
    "rewrite_headers": v.parse_bool,
}

SCHEMAS = {"global": GLOBAL_KEYS, "domain": DOMAIN_KEYS, "user": USER_KEYS, "mapping": MAPPING_KEYS}
_SSL_FILE_KEYS = ("ssl_ca_file", "ssl_cert_file", "ssl_key_file")


class _Report:
    """Problems found while loading: errors stop the load, warnings are shown by `check`."""

    __slots__ = ("errors", "unreadable", "warnings")

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.warnings: list[str] = []
        self.unreadable: list[str] = []  # the errors that are "permission denied"


class UnreadableConfigError(ConfigError):
    """Only permission stood in the way: a local user's sendmail submits instead (SPEC §8).

    `global_` is the main file's [global] when that much could be read, else None.
    """

    def __init__(self, problems: list[str], global_: GlobalConfig | None) -> None:
        super().__init__("configuration", "cannot be read", problems=problems)
        self.global_ = global_


def _raise_unreadable(report: _Report, gconf: GlobalConfig | None) -> None:
    if report.unreadable and report.errors == report.unreadable:
        raise UnreadableConfigError(report.errors, gconf)


def find_config_file(explicit: str | None = None) -> Path:
    """The main configuration file: first found of SPEC §3's discovery order."""
    candidates = paths.config_candidates(explicit)
    for path, source in candidates:
        try:
            st = path.stat()
        except PermissionError:
            if len(candidates) == 1:
                return path  # named: reading it says what is wrong, or hands the message on
            # The user file behind a home this user may not enter (cron started from a root
            # shell passes HOME=/root to every job): not this user's, the next one is.
            continue
        except OSError:
            st = None
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise ConfigError(str(path), f"is a directory, expected a file (from {source})")
        if st is not None:
            return path
        if len(candidates) == 1:
            # Named by sendmail's -C or the commands' -C/--config: the same option to both.
            given = "-C/--config" if source == "--config" else source
            raise ConfigError(str(path), f"no such file (from {given})")
    tried = ", ".join(str(p) for p, _ in candidates)
    raise ConfigError(
        "configuration",
        f"no configuration file found (tried {tried})",
        hint="pass --config PATH, set $SSMTP_MAILER_CONFIG, or copy etc/ssmtp-mailer",
    )


def load_config(explicit: str | None = None, *, strict: bool = False) -> Config:
    """Read and validate the whole tree; raise ConfigError listing every problem."""
    return load_config_file(find_config_file(explicit), strict=strict)


def load_global(explicit: str | None = None) -> GlobalConfig:
    """Only the main file's `[global]`: for `dkim keygen`, which makes the keys a tree names."""
    main_file = Path(os.path.abspath(find_config_file(explicit)))
    report = _Report()
    sections = _read_file(str(main_file), report, [], _Folders())
    if sections is None:
        raise ConfigError("configuration", "cannot be read", problems=report.errors)
    found = [s for s in sections if s.kind == "global"]
    gconf = _build_global(found[0] if found else None, main_file, report)
    if report.errors:
        raise ConfigError("configuration", "invalid", problems=report.errors)
    return gconf


def load_config_file(main_file: Path, *, strict: bool = False) -> Config:
    # The collector is left alone: the listener reloads on SIGHUP while its workers run,
    # and a sendmail run has it off already (entry.script).
    return _load_config_file(Path(os.path.abspath(main_file)), strict)


def _load_config_file(main_file: Path, strict: bool) -> Config:
    report = _Report()
    read: list[tuple[str, os.stat_result, bytes]] = []
    folders = _Folders()
    main_sections = _read_file(str(main_file), report, read, folders)
    if main_sections is None:
        _raise_unreadable(report, None)
        raise ConfigError("configuration", "cannot be read", problems=report.errors)
    globals_raw = [s for s in main_sections if s.kind == "global"]
    for extra in globals_raw[1:]:
        report.errors.append(
            f"{extra.location}: [global] appears twice (first at {globals_raw[0].location})"
        )
    global_section = globals_raw[0] if globals_raw else None
    gconf = _build_global(global_section, main_file, report)

    files = [str(main_file)]
    sections = [s for s in main_sections if s.kind != "global"]
    # Every folder is listed before any file is read, so the cache can be checked first;
    # each folder's problems are still reported in the order the tree is read.
    listings: list[tuple[list[str], _Report]] = []
    seen_dirs: set[Path] = set()
    for key, directory in (
        ("domains_dir", gconf.domains_dir),
        ("users_dir", gconf.users_dir),
        ("mappings_dir", gconf.mappings_dir),
    ):
        explicit = global_section is not None and key in global_section.values
        resolved = directory.resolve()
        if resolved in seen_dirs:
            continue
        seen_dirs.add(resolved)
        listed = _Report()
        found = _dir_files(directory, key, explicit, global_section, listed, folders)
        listings.append((found, listed))
    dir_files = [path for found, _ in listings for path in found]

    use_cache = (
        not strict
        and not report.errors
        and not any(listed.errors for _, listed in listings)
        and _worth_caching(read[0][1].st_size, dir_files)
    )
    context = repr((gconf, os.environ.get("HOME"), os.geteuid()))
    if use_cache:
        # Imported only for a tree big enough: a small one never pays for the module.
        from ssmtp_mailer.config import cache

        hit = cache.lookup(main_file, context, cache.source_of(read[0]), dir_files)
        if hit is not None:
            for _, listed in listings:
                report.warnings.extend(listed.warnings)
            return Config(
                main_file=main_file,
                global_=gconf,
                domains=hit.domains,
                users=hit.users,
                mappings=hit.mappings,
                files=tuple(files + dir_files),
                warnings=(*report.warnings, *hit.warnings),
            )

    for found, listed in listings:
        report.errors.extend(listed.errors)
        report.unreadable.extend(listed.unreadable)
        report.warnings.extend(listed.warnings)
        for path in found:
            files.append(path)
            for section in _read_file(path, report, read) or []:
                if section.kind == "global":
                    report.errors.append(
                        f"{section.location}: [global] belongs in the main file {main_file}"
                    )
                else:
                    sections.append(section)

    earlier_warnings = len(report.warnings)
    # A file this user may not read (the route holding the relay's password) is a reason
    # to hand the message to the system, even if what it defines is then missing
    # (default_domain naming that route): decide before building the sections.
    _raise_unreadable(report, gconf)
    config = _build_sections(main_file, gconf, sections, files, report, strict)
    if report.errors:
        _raise_unreadable(report, gconf)
        raise ConfigError(
            "configuration", "invalid", problems=report.errors, warnings=report.warnings
        )
    if use_cache and len(read) == len(files):
        from ssmtp_mailer.config import cache

        found_sections = cache.Sections(
            config.domains, config.users, config.mappings, config.warnings[earlier_warnings:]
        )
        cache.store(main_file, context, [cache.source_of(r) for r in read], found_sections)
    return config


# Below this many bytes of configuration, parsing is cheaper than checking a cache.
CACHE_MIN_BYTES = 64 * 1024


def _worth_caching(main_size: int, files: Sequence[str]) -> bool:
    """True when the tree is large enough for the cache to pay (stat sizes, no reading)."""
    total = main_size
    for path in files:
        if total >= CACHE_MIN_BYTES:
            return True
        try:
            total += os.stat(path).st_size
        except OSError:
            return False
    return total >= CACHE_MIN_BYTES


def _unsafe(path: str, st: os.stat_result, *, sticky_ok: bool = False) -> str | None:
    """Why a configuration file or folder someone else could change is refused, or None.

    The tree says which commands run (password_command) and where mail goes; root's
    sendmail reads it, so only root and the user running the program may be able to
    write it. A sticky folder open to all (/tmp) is fine where `sticky_ok`: no one may
    replace a file in it that they do not own.
    """
    euid = os.geteuid()
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid not in (0, euid):
        import pwd

        def name(uid: int) -> str:
            try:
                return pwd.getpwuid(uid).pw_name
            except KeyError:
                return str(uid)

        me = "" if euid == 0 else f" or {name(euid)}"
        return f"owned by {name(st.st_uid)}, not root{me}; chown root {path}"
    if mode & stat.S_IWOTH and not (sticky_ok and mode & stat.S_ISVTX):
        return f"writable by others (mode {mode:04o}); chmod o-w {path}"
    # Group-writable: root's group, or the user's own (a user-private group, as git clone
    # under umask 002 leaves a user's tree), never a group root shares with others.
    if mode & stat.S_IWGRP and st.st_gid not in (0, os.getegid()):
        import grp

        try:
            group = grp.getgrgid(st.st_gid).gr_name
        except KeyError:
            group = str(st.st_gid)
        return f"writable by group {group} (mode {mode:04o}); chmod g-w {path}"
    return None


class _Folders:
    """The folders on the way to the tree's files, each looked at once a load.

    Who may write a folder may rename anything in it (put another file, or another folder,
    in the place of ours), so every folder a name is looked up in on the way to a file,
    from / down and links followed, must be safe, as OpenSSH's StrictModes checks. One open
    to all is fine there if sticky (/tmp): what is in it on the way is checked next.
    """

    __slots__ = ("_entries", "_reported")

    def __init__(self) -> None:
        self._entries: dict[str, tuple[os.stat_result, str | None]] = {}  # lstat, link target
        self._reported: set[str] = set()

    def check(self, path: str, report: _Report) -> bool:
        """Add an error for each folder on the way to `path` others may write (once a load)."""
        try:
            folders = self._on_the_way(path)
        except OSError as exc:
            report.errors.append(f"{path}: cannot read: {exc.strerror or exc}")
            return False
        safe = True
        for folder in folders:
            problem = _unsafe(folder, self._entry(folder)[0], sticky_ok=True)
            if problem is not None:
                safe = False
                if folder not in self._reported:
                    self._reported.add(folder)
                    report.errors.append(f"{folder}: {problem}")
        return safe

    def _entry(self, path: str) -> tuple[os.stat_result, str | None]:
        known = self._entries.get(path)
        if known is None:
            st = os.lstat(path)
            target = os.readlink(path) if stat.S_ISLNK(st.st_mode) else None
            known = self._entries[path] = (st, target)
        return known

    def _on_the_way(self, path: str) -> list[str]:
        """The folders a name is looked up in on the way to `path` (absolute), as the kernel
        resolves it: each one real, no link among them."""
        folders: dict[str, None] = {}
        folder = "/"
        names = path.split("/")[::-1]
        links = 0
        while names:
            name = names.pop()
            if name in ("", "."):
                continue
            if name == "..":
                folder = os.path.dirname(folder)
                continue
            folders[folder] = None
            entry = os.path.join(folder, name)
            target = self._entry(entry)[1]
            if target is None:
                folder = entry
                continue
            links += 1
            if links > 40:  # the kernel's MAXSYMLINKS
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
            names.extend(target.split("/")[::-1])
            if target.startswith("/"):
                folder = "/"
        return list(folders)


def _check_safe(
    path: str,
    st: os.stat_result,
    report: _Report,
    folders: _Folders | None = None,
    *,
    sticky_ok: bool = False,
) -> bool:
    """Add the errors if `path` (stat `st`, links followed) may be changed by others; with
    `folders`, also if a folder on the way to it may."""
    on_the_way_safe = folders is None or folders.check(path, report)
    problem = _unsafe(path, st, sticky_ok=sticky_ok)
    if problem is not None:
        report.errors.append(f"{path}: {problem}")
    return on_the_way_safe and problem is None


def _read_file(
    path: str,
    report: _Report,
    read: list[tuple[str, os.stat_result, bytes]],
    folders: _Folders | None = None,
) -> list[RawSection] | None:
    """The file's sections; what was read is added to `read` (for the cache).

    With `folders`, the main file and the folders on the way to it are checked here for
    who may write them; included files and their folders are checked when listed
    (_dir_files).
    """
    try:
        with open(path, "rb") as handle:
            st = os.fstat(handle.fileno())
            if folders is not None and not _check_safe(path, st, report, folders):
                return None
            data = handle.read()
    except IsADirectoryError:
        report.errors.append(f"{path}: is a directory, expected a configuration file")
        return None
    except OSError as exc:
        report.errors.append(f"{path}: cannot read: {exc.strerror or exc}")
        if isinstance(exc, PermissionError):
            report.unreadable.append(report.errors[-1])
        return None
    if b"\0" in data:
        report.errors.append(f"{path}: not a text file (contains NUL bytes)")
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        report.errors.append(f"{path}:{line}: not valid UTF-8")
        return None
    read.append((path, st, data))
    return parse_ini(text, path, report.errors)


def _dir_files(
    directory: Path,
    key: str,
    explicit: bool,
    global_section: RawSection | None,
    report: _Report,
    folders: _Folders,
) -> list[str]:
    where = (
        str(global_section.location_of(key))
        if explicit and global_section is not None
        else str(directory)
    )
    if not directory.exists():
        if explicit:
            report.warnings.append(f"{where}: {key}: no such directory: {directory}")
        return []
    if not directory.is_dir():
        report.errors.append(f"{where}: {key}: {directory} is not a directory")
        return []
    if not _check_safe(str(directory), directory.stat(), report, folders):
        return []
    try:
        # Like Path.glob("*.conf"): hidden names included, symbolic links followed. As
        # strings: a tree of one file a section has thousands, and pathlib costs more
        # than the cache's check of each (bench/bench_routing.py).
        with os.scandir(directory) as entries:
            names = sorted((e.path, e.is_symlink()) for e in entries if e.name.endswith(".conf"))
    except OSError as exc:
        report.errors.append(f"{where}: {key}: cannot list {directory}: {exc.strerror}")
        if isinstance(exc, PermissionError):
            report.unreadable.append(report.errors[-1])
        return []
    found = []
    for path, is_link in names:
        # A broken entry is an error: skipped, that sender's mail took another route.
        try:
            st = os.stat(path)
        except OSError as exc:
            if os.path.islink(path):
                why = f"a symbolic link to {os.readlink(path)}, which cannot be read"
                report.errors.append(f"{path}: {why}: {exc.strerror or exc}")
            else:
                report.errors.append(f"{path}: cannot read: {exc.strerror or exc}")
            if isinstance(exc, PermissionError):
                report.unreadable.append(report.errors[-1])
            continue
        if stat.S_ISDIR(st.st_mode):
            report.errors.append(f"{path}: is a directory, expected a configuration file")
        elif not stat.S_ISREG(st.st_mode):
            report.errors.append(f"{path}: is not a regular file, expected a configuration file")
        # Only a link leads out of the folder, which was checked above.
        elif _check_safe(path, st, report, folders if is_link else None):
            found.append(path)
    return found


def _typed_values(
    section: RawSection, schema: dict[str, Parser], report: _Report
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, text in section.values.items():
        parser = schema.get(key)
        if parser is None:
            report.warnings.append(
                f"{section.location_of(key)}: {key}: unknown key in [{section.kind}"
                f"{':' + section.name if section.name else ''}], ignored"
            )
            continue
        try:
            out[key] = parser(text)
        except ValueError as exc:
            report.errors.append(f"{section.location_of(key)}: {key}: {exc}")
    return out


def _system_hostname() -> str:
    name = socket.gethostname()
    if "." not in name:
        fqdn = socket.getfqdn(name)
        if "." in fqdn and not fqdn.startswith("localhost"):
            return fqdn
    return name


def _login_name() -> str:
    import getpass  # only when default_from is not set; it brings termios along

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "root" if os.geteuid() == 0 else str(os.geteuid())


def default_global(main_file: Path) -> GlobalConfig:
    """[global] with every default, for a main file that could not be read at all."""
    return _build_global(None, main_file, _Report())


def _build_global(section: RawSection | None, main_file: Path, report: _Report) -> GlobalConfig:
    raw = section or RawSection("global", "", Location(str(main_file), 0))
    vals = _typed_values(raw, GLOBAL_KEYS, report)
    base = main_file.parent

    def resolve(key: str, default: Path, against: Path) -> Path:
        text = vals.pop(key, None)
        path = Path(text).expanduser() if text else default
        return path if path.is_absolute() else against / path

    config_dir = resolve("config_dir", base, base)
    hostname = vals.pop("default_hostname", None) or _system_hostname()
    default_from = vals.pop("default_from", None) or f"{_login_name()}@{hostname}"
    domains_dir = resolve("domains_dir", config_dir / "domains", config_dir)
    users_dir = resolve("users_dir", config_dir / "users", config_dir)
    mappings_dir = resolve("mappings_dir", config_dir / "mappings", config_dir)
    ssl_dir = resolve("ssl_dir", config_dir / "ssl", config_dir)
    spool_text = vals.pop("spool_dir", None)
    spool_dir = Path(spool_text).expanduser() if spool_text else paths.default_spool_dir()
    if not spool_dir.is_absolute():
        spool_dir = config_dir / spool_dir
    log_text = vals.pop("log_file", None)
    log_file = None
    if log_text:
        log_file = Path(log_text).expanduser()
        if not log_file.is_absolute():
            log_file = config_dir / log_file
    # Resolved only: the key is root's, and a user's sendmail reading this file never needs it
    # (the listener checks both when it starts).
    for key in ("listen_tls_cert_file", "listen_tls_key_file"):
        if key in vals:
            path = Path(vals[key]).expanduser()
            vals[key] = path if path.is_absolute() else ssl_dir / path
    if ("listen_tls_cert_file" in vals) != ("listen_tls_key_file" in vals):
        given = "listen_tls_cert_file" if "listen_tls_cert_file" in vals else "listen_tls_key_file"
        report.errors.append(
            f"{raw.location_of(given)}: listen_tls_cert_file and listen_tls_key_file:"
            " set both or neither"
        )
    return GlobalConfig(
        default_hostname=hostname,
        default_from=default_from,
        config_dir=config_dir,
        domains_dir=domains_dir,
        users_dir=users_dir,
        mappings_dir=mappings_dir,
        ssl_dir=ssl_dir,
        spool_dir=spool_dir,
        log_file=log_file,
        location=raw.location if section else None,
        key_lines=tuple(raw.lines.items()),
        **vals,
    )


def _build_sections(
    main_file: Path,
    gconf: GlobalConfig,
    sections: list[RawSection],
    files: list[str],
    report: _Report,
    strict: bool,
) -> Config:
    domains: dict[str, DomainConfig] = {}
    users: list[UserConfig] = []
    mappings: list[MappingConfig] = []
    first_seen: dict[tuple[str, str], RawSection] = {}
    for section in sections:
        if section.kind == "unknown":
            continue
        ident = (section.kind, _section_key(section))
        if ident in first_seen:
            first = first_seen[ident]
            same = first.name.lower() == section.name.lower()
            spelled = "" if same else f" as [{first.kind}:{first.name}]"
            report.errors.append(
                f"{section.location}: [{section.kind}:{section.name}] is defined twice"
                f" (also at {first.location}{spelled})"
            )
            continue
        first_seen[ident] = section
        if section.kind == "domain":
            domain = _build_domain(section, gconf, report)
            if domain is not None:
                domains[domain.name] = domain
        elif section.kind == "user":
            user = _build_user(section, report)
            if user is not None:
                users.extend(user)
        elif section.kind == "mapping":
            mapping = _build_mapping(section, report)
            if mapping is not None:
                mappings.append(mapping)

    # A [domain:] with errors of its own is still there to name: no second error for that.
    defined = {name for kind, name in first_seen if kind == "domain"}
    _check_references(gconf, domains, defined, users, mappings, report)
    if strict:
        report.errors.extend(report.warnings)
        report.warnings.clear()
    return Config(
        main_file=main_file,
        global_=gconf,
        domains=domains,
        users=tuple(users),
        mappings=tuple(mappings),
        files=tuple(files),
        warnings=tuple(report.warnings),
    )


def _section_key(section: RawSection) -> str:
    """What two sections are the same under: a route's name and a user's address compare
    as routing compares them (`bücher.example` is `xn--bcher-kva.example`, a final dot
    changes nothing)."""
    if section.kind == "domain":
        return domain_key(section.name)
    if section.kind == "user" and "@" in section.name:
        local, _, domain = section.name.rpartition("@")
        return f"{local.lower()}@{domain_key(domain)}"
    return section.name.lower()


def _build_domain(section: RawSection, gconf: GlobalConfig, report: _Report) -> DomainConfig | None:
    before = len(report.errors)
    vals = _typed_values(section, DOMAIN_KEYS, report)
    where = section.location_of
    at = section.location
    name = section.name.lower()
    # Named after a domain: the senders it serves and its DKIM d= are that domain. `*`
    # alone is the catch-all (SPEC §3); any other name that is no domain never matches.
    # A `_` is let through as in host names: routes imported from msmtp keep an
    # account's name (`work_mail`), used through default_domain or a mapping.
    bare = name.removesuffix(".")
    if name != "*" and domain_problem(bare.replace("_", "x")):
        problem = domain_problem(bare)
        report.errors.append(
            f"{at}: [domain:{section.name}]: {problem} (only * alone is the catch-all)"
        )
    if vals.get("use_ssl") and vals.get("use_starttls"):
        report.errors.append(
            f"{where('use_starttls')}: use_starttls: cannot be true together with use_ssl"
            f" ({where('use_ssl')}): use_ssl is TLS from the first byte (port 465),"
            " use_starttls upgrades a plain connection (port 587)"
        )
    if vals.get("use_ssl"):
        vals.setdefault("use_starttls", False)
    vals.setdefault("smtp_port", 465 if vals.get("use_ssl") else 587)
    vals.setdefault("helo_name", gconf.default_hostname)
    vals.setdefault("rate_limit_per_minute", gconf.rate_limit_per_minute)
    mode = vals.get("delivery_mode", DeliveryMode.RELAY)
    if vals.get("enabled", True) and mode != DeliveryMode.DIRECT and "smtp_server" not in vals:
        report.errors.append(f"{at}: smtp_server: required for a relay route, not set")
    for key in ("direct_port", "direct_tls"):
        if key in vals and mode == DeliveryMode.RELAY:
            report.warnings.append(
                f"{where(key)}: {key}: used only with delivery_mode = direct or hybrid"
            )
    if "password" in vals and "password_command" in vals:
        report.errors.append(
            f"{where('password_command')}: password_command: set together with password"
            f" ({where('password')}); keep one"
        )
    # What relay/engine.py (Credentials.needed) and relay/smtp.py (authenticate) refuse at
    # every send, refused here, where `config check` can say it.
    method = vals.get("auth_method", AuthMethod.AUTO)
    relays = vals.get("enabled", True) and mode != DeliveryMode.DIRECT
    if relays and method not in (AuthMethod.NONE, AuthMethod.AUTO) and "username" not in vals:
        report.errors.append(
            f"{where('auth_method')}: auth_method: {method.value} needs a username, not set"
        )
    if (
        relays
        and method != AuthMethod.NONE
        and "username" in vals
        and not vals.get("use_ssl")
        and not vals.get("use_starttls", True)
        and not vals.get("allow_plaintext_auth")
    ):
        # A warning (an error with --strict): a tree imported from msmtp's `tls off` with
        # `auth on` still loads, and each send says why it will not log in.
        report.warnings.append(
            f"{where('use_starttls')}: use_starttls: false with a username, and use_ssl is not"
            " set: every send refuses to log in unencrypted (exit 77); use TLS, or set"
            " allow_plaintext_auth = true for a relay on this host"
        )
    secret = next(
        (k for k in ("password", "password_command", "oauth2_token_command") if k in vals), None
    )
    if relays and method == AuthMethod.AUTO and "username" not in vals and secret is not None:
        report.warnings.append(
            f"{where(secret)}: {secret}: set without a username, so no login is tried"
            " (a relay that wants one refuses with 530); add username"
        )
    if vals.get("auth_method") == AuthMethod.XOAUTH2 and "oauth2_token_command" not in vals:
        report.errors.append(
            f"{where('auth_method')}: auth_method: XOAUTH2 needs oauth2_token_command"
        )
    selectors, key_files = vals.get("dkim_selector", ()), vals.get("dkim_key_file", ())
    if len(selectors) != len(key_files):
        report.errors.append(
            f"{at}: dkim_selector and dkim_key_file: lists of equal length, one selector per key"
            f" (got {len(selectors)} selectors and {len(key_files)} key files)"
        )
    elif len({s.lower() for s in selectors}) != len(selectors):
        report.errors.append(f"{where('dkim_selector')}: dkim_selector: a selector is repeated")
    for key in _SSL_FILE_KEYS:
        if key in vals:
            vals[key] = _existing_file(vals[key], gconf.ssl_dir, key, where(key), report)
    if "dkim_key_file" in vals:
        vals["dkim_key_file"] = tuple(
            _existing_file(text, gconf.ssl_dir, "dkim_key_file", where("dkim_key_file"), report)
            for text in vals["dkim_key_file"]
        )
    if "password" in vals:
        vals["password_location"] = where("password")
    if len(report.errors) > before:
        return None
    route = DomainConfig(name=name, location=at, **vals)
    if route.unverified_tls:
        report.warnings.append(f"{where('tls_verify')}: {route.unverified_tls}")
    return route


def _existing_file(text: str, base: Path, key: str, where: Location, report: _Report) -> Path:
    """The path of a file a route reads (a certificate, a key). One this user may not read
    counts as unreadable configuration: a key in root's 0700 ssl_dir is a secret, as a
    password is, and the message goes to the system (SPEC §8) instead of being refused."""
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = base / path
    why = None
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            report.errors.append(f"{where}: {key}: {path}: is not a file")
            return path
        if not os.access(path, os.R_OK):
            why = "not readable"
    except PermissionError:
        why = "not readable (a folder on its path is closed to this user)"
    except OSError:
        report.errors.append(f"{where}: {key}: {path}: no such file")
        return path
    if why is not None:
        report.errors.append(f"{where}: {key}: {path}: {why}")
        report.unreadable.append(report.errors[-1])
    return path


def _build_user(section: RawSection, report: _Report) -> list[UserConfig] | None:
    before = len(report.errors)
    vals = _typed_values(section, USER_KEYS, report)
    where = section.location_of
    at = section.location
    address = section.name
    try:
        parse_pattern(address.replace("{type}", "x"))
    except ValueError as exc:
        report.errors.append(f"{at}: [user:{address}]: {exc}")
    _check_allowed(vals, where, report)
    if vals.get("template_address"):
        if "{type}" not in address:
            report.errors.append(f"{at}: template_address: the address has no {{type}} to expand")
        if not vals.get("allowed_types"):
            report.errors.append(f"{at}: allowed_types: required when template_address = true")
    elif "{type}" in address:
        report.errors.append(f"{at}: [user:{address}]: {{type}} needs template_address = true")
    if len(report.errors) > before:
        return None
    if vals.get("template_address"):
        return [
            UserConfig(address=address.replace("{type}", t), location=at, **vals)
            for t in vals["allowed_types"]
        ]
    return [UserConfig(address=address, location=at, **vals)]


def _build_mapping(section: RawSection, report: _Report) -> MappingConfig | None:
    before = len(report.errors)
    vals = _typed_values(section, MAPPING_KEYS, report)
    where = section.location_of
    at = section.location
    for key in ("from_pattern", "to_pattern"):
        if key not in vals and key not in section.values:
            report.errors.append(f"{at}: {key}: required in a mapping, not set")
    source, target = vals.get("from_pattern"), vals.get("to_pattern")
    if source and target:
        problem = pattern_problem(source, target)
        if problem:
            key = "from_pattern" if problem.startswith("from_pattern: ") else "to_pattern"
            report.errors.append(f"{where(key)}: {key}: {problem.removeprefix(key + ': ')}")
    _check_allowed(vals, where, report)
    if len(report.errors) > before:
        return None
    return MappingConfig(name=section.name, location=at, **vals)


def _check_allowed(vals: dict[str, Any], where: Callable[[str], Location], report: _Report) -> None:
    """Every allowed_recipients entry is a pattern and every allowed_domains entry a domain."""
    for text in vals.get("allowed_recipients", ()):
        try:
            parse_pattern(text)
        except ValueError as exc:
            report.errors.append(f"{where('allowed_recipients')}: allowed_recipients: {exc}")
    for text in vals.get("allowed_domains", ()):
        problem = domain_problem(text)
        if problem:
            report.errors.append(f"{where('allowed_domains')}: allowed_domains: {problem}")


def _check_references(
    gconf: GlobalConfig,
    domains: dict[str, DomainConfig],
    defined: set[str],
    users: list[UserConfig],
    mappings: list[MappingConfig],
    report: _Report,
) -> None:
    names = ", ".join(sorted(domains)) or "none configured"
    if gconf.default_domain and domain_key(gconf.default_domain) not in defined:
        where = gconf.location_of("default_domain") or gconf.config_dir
        report.errors.append(
            f"{where}: default_domain: no [domain:{gconf.default_domain}] (routes: {names})"
        )
    accounts = {
        a.lower() for d in domains.values() for a in (d.relay_account, d.username) if a is not None
    }
    for mapping in mappings:
        if mapping.domain and domain_key(mapping.domain) not in defined:
            report.errors.append(
                f"{mapping.location}: domain: [mapping:{mapping.name}] names"
                f" [domain:{mapping.domain}], which is not configured (routes: {names})"
            )
        if mapping.smtp_account and mapping.smtp_account.lower() not in accounts:
            report.errors.append(
                f"{mapping.location}: smtp_account: [mapping:{mapping.name}] names"
                f" {mapping.smtp_account}, which no route has as relay_account or username"
            )
    for user in users:
        if user.domain and domain_key(user.domain) not in defined:
            report.errors.append(
                f"{user.location}: domain: [user:{user.address}] names [domain:{user.domain}],"
                f" which is not configured (routes: {names})"
            )
