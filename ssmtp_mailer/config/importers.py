"""ssmtp and msmtp configurations turned into an ssmtp-mailer tree (SPEC §11); pure.

Text goes in, files and notes come out: `config import` reads the sources and writes the
result. Every notes line names something that could not be carried over, or that now
behaves differently, so that nothing changes silently on a migration.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from typing import NamedTuple

from ssmtp_mailer.config.values import parse_fingerprint, parse_hostname, parse_port
from ssmtp_mailer.errors import ConfigError
from ssmtp_mailer.patterns import pattern_problem

MAIN_FILE = "ssmtp-mailer.conf"
SYSTEM_CA_BUNDLES = frozenset({"system", "/etc/ssl/certs/ca-certificates.crt"})


class ImportedFile(NamedTuple):
    """One file of the new tree, relative to the output folder."""

    path: str
    text: str
    secret: bool  # holds a password: written so that only its owner can read it


class Imported(NamedTuple):
    files: tuple[ImportedFile, ...]
    notes: tuple[str, ...]
    # (route name, password) kept out of the files when passwords are not written inline.
    passwords: tuple[tuple[str, str], ...]
    # Routes that authenticate but whose password is in no file: the keyring holds it.
    keyring_routes: tuple[str, ...]


class _Section:
    """An INI section being built: its header, its keys in order, a comment above."""

    def __init__(self, header: str, comment: str = "") -> None:
        self.header = header
        self.comment = comment
        self.values: dict[str, str] = {}
        self.secret = False

    def set(self, key: str, value: object) -> None:
        if isinstance(value, bool):
            self.values[key] = "true" if value else "false"
        elif isinstance(value, int):
            self.values[key] = str(value)
        else:
            self.values[key] = _ini_value(str(value))

    def render(self) -> str:
        lines = [f"# {line}" for line in self.comment.splitlines()]
        lines.append(f"[{self.header}]")
        lines.extend(f"{key} = {value}" for key, value in self.values.items())
        return "\n".join(lines) + "\n"


def _ini_value(text: str) -> str:
    """The value as written: bare when the INI reader keeps it as is, else JSON-quoted."""
    plain = (
        text
        and text == text.strip()
        and text[0] not in "\"'["
        and text.splitlines() == [text]  # no line break of any kind (str.splitlines' list)
        and not any(mark in text for mark in (" #", "\t#", " ;", "\t;"))
    )
    # ASCII escapes: the reader splits lines wherever str.splitlines does (U+2028 too).
    return text if plain else json.dumps(text)


def _lines(text: str) -> list[str]:
    """Lines as ssmtp and msmtp read them: split at LF only (a U+2028 is just a character)."""
    return [line.removesuffix("\r") for line in text.split("\n")]


def _route_name(name: str) -> str:
    """A section name the INI reader takes back unchanged, and a keyring key."""
    return re.sub(r"[^a-z0-9._-]", "-", name.lower())


def _file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) + ".conf"


class _Tree:
    """Sections gathered for the output, rendered into files at the end."""

    def __init__(self, source: str, inline_passwords: bool, exists: Callable[[str], bool]) -> None:
        self.source = source
        self.inline_passwords = inline_passwords
        self.exists = exists
        self.global_ = _Section(
            "global", f"Imported from {source} by `ssmtp-mailer config import`."
        )
        self.routes: dict[str, _Section] = {}
        self.mappings: list[_Section] = []
        self.notes: list[str] = []
        self.passwords: list[tuple[str, str]] = []
        self.keyring_routes: list[str] = []

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def route(self, name: str, comment: str) -> _Section:
        section = _Section(f"domain:{name}", comment)
        self.routes[name] = section
        return section

    def file(self, section: _Section, key: str, path: str, where: str) -> None:
        """A key naming a file: carried over only when the file is there to be read."""
        if self.exists(path):
            section.set(key, path)
        else:
            self.note(f"{where}: {path}: no such file here, {key} not set")

    def password(self, route: str, section: _Section, secret: str) -> None:
        if self.inline_passwords:
            section.values["password"] = json.dumps(secret)
            section.secret = True
        else:
            self.passwords.append((route, secret))

    def mapping(self, name: str, source: str, target: str, comment: str) -> _Section | None:
        problem = pattern_problem(source, target)
        if problem:
            self.note(f"{comment}: not carried over: {problem}")
            return None
        if any(m.header == f"mapping:{name}" for m in self.mappings):
            self.note(f"{comment}: not carried over: {source} is listed twice, the first is kept")
            return None
        section = _Section(f"mapping:{name}", comment)
        section.set("from_pattern", source)
        section.set("to_pattern", target)
        self.mappings.append(section)
        return section

    def result(self, mappings_file: str) -> Imported:
        files = [ImportedFile(MAIN_FILE, self.global_.render(), False)]
        for name, section in self.routes.items():
            files.append(
                ImportedFile(f"domains/{_file_name(name)}", section.render(), section.secret)
            )
        if self.mappings:
            text = "\n".join(section.render() for section in self.mappings)
            files.append(ImportedFile(f"mappings/{mappings_file}", text, False))
        return Imported(
            tuple(files), tuple(self.notes), tuple(self.passwords), tuple(self.keyring_routes)
        )


def _host_port(text: str, what: str) -> tuple[str, int | None]:
    """`host`, `host:port` or `[address]:port`."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:]
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, ""
    try:
        return parse_hostname(host), parse_port(port) if port else None
    except ValueError as exc:
        raise ConfigError(what, str(exc)) from None


def _yes(value: str) -> bool:
    return value.strip().lower() in ("yes", "on", "true", "1")


# ---------------------------------------------------------------------------- ssmtp

SSMTP_KEYS = (
    "root", "mailhub", "port", "remoteport", "hostname", "rewritedomain", "fromlineoverride",
    "usetls", "usestarttls", "usetlscert", "tlscert", "tlskey", "tls_ca_file", "tls_ca_dir",
    "authuser", "authpass", "authmethod", "debug",
)  # fmt: skip


def parse_ssmtp(text: str, source: str) -> tuple[dict[str, tuple[int, str]], list[str]]:
    """`Key=Value` settings (keys in any case) with the line of each, and notes.

    Read as ssmtp reads them: `#` starts a comment anywhere on a line, a line without
    `=` is skipped, and a value is the first word after the key (words end at a space,
    a tab or `=`). A later line for the same key wins.
    """
    out: dict[str, tuple[int, str]] = {}
    notes: list[str] = []
    for number, raw in enumerate(_lines(text), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        words = [word for word in re.split(r"[= \t]+", line) if word]
        if "=" not in line or len(words) < 2:
            notes.append(f"{source}:{number}: not a Key=Value line, skipped (as ssmtp does)")
            continue
        key = words[0].lower()
        out[key] = (number, words[1])
        if key == "authpass" and raw.partition("=")[2].strip() != words[1]:
            notes.append(
                f"{source}:{number}: AuthPass: ssmtp reads a value only up to a space, tab,"
                " '=' or '#', and so does this import: if the password goes on, store it"
                " with `ssmtp-mailer password set`"
            )
    return out, notes


def parse_revaliases(text: str, source: str) -> list[tuple[int, str, str, str]]:
    """`local:address[:mailhub[:port]]` lines: (line, local, address, mailhub or "")."""
    out = []
    for number, raw in enumerate(_lines(text), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = [part.strip() for part in line.split(":", 2)]
        if len(parts) < 2 or not parts[0] or not parts[1]:
            raise ConfigError(
                f"{source}:{number}", f"expected local_account:address[:mailhub], got {line!r}"
            )
        out.append((number, parts[0], parts[1], parts[2] if len(parts) > 2 else ""))
    return out


def import_ssmtp(
    text: str,
    source: str,
    *,
    revaliases: str | None = None,
    revaliases_source: str = "revaliases",
    route: str = "relay",
    inline_passwords: bool = True,
    exists: Callable[[str], bool] = lambda _path: True,
) -> Imported:
    """An ssmtp.conf (and its revaliases) as one route that every sender uses."""
    conf, notes = parse_ssmtp(text, source)
    route = _route_name(route)
    tree = _Tree(source, inline_passwords, exists)
    for note in notes:
        tree.note(note)
    where = {key: f"{source}:{line}" for key, (line, _) in conf.items()}
    val = {key: value for key, (_, value) in conf.items()}
    for key in conf:
        if key not in SSMTP_KEYS:
            tree.note(f"{where[key]}: {key}: unknown to ssmtp-mailer's importer, not carried over")
    if not val.get("mailhub"):
        raise ConfigError(f"{source}: mailhub", "not set; there is no relay to import")

    starttls = _yes(val.get("usestarttls", "no"))
    use_tls = _yes(val.get("usetls", "no")) or starttls  # ssmtp: UseSTARTTLS=YES implies TLS
    hostname = val.get("hostname") or None
    rewrite_domain = val.get("rewritedomain") or None
    if rewrite_domain and "@" in rewrite_domain:  # ssmtp keeps what follows the last @
        rewrite_domain = rewrite_domain.rpartition("@")[2]
    default_hostname = rewrite_domain or hostname
    g = tree.global_
    if default_hostname:
        try:
            g.set("default_hostname", parse_hostname(default_hostname))
        except ValueError as exc:
            raise ConfigError(where.get("rewritedomain") or where["hostname"], str(exc)) from None
    else:
        tree.note(
            "hostname and rewriteDomain not set: bare names (root) are qualified with"
            " this system's host name, as ssmtp did"
        )
    g.set("default_domain", route)
    if _yes(val.get("debug", "no")):
        g.set("log_level", "DEBUG")

    section = tree.route(
        route, "The relay of ssmtp's mailhub; every sender uses it (default_domain)."
    )
    _ssmtp_relay(tree, section, val, where, val["mailhub"], use_tls, starttls)
    if hostname and rewrite_domain and hostname.lower() != rewrite_domain.lower():
        try:
            section.set("helo_name", parse_hostname(hostname))
        except ValueError as exc:
            raise ConfigError(where["hostname"], str(exc)) from None
    user = val.get("authuser")
    if user:
        section.set("username", user)
        if "@" in user:
            section.set("relay_account", user)
        method = val.get("authmethod", "").lower()
        if method == "cram-md5":
            section.set("auth_method", "CRAM-MD5")
        elif method and method != "login":
            tree.note(f"{where['authmethod']}: AuthMethod={method}: unknown, AUTO is used")
        password = val.get("authpass")
        if password:
            tree.password(route, section, password)
        else:
            tree.keyring_routes.append(route)
        if not use_tls:
            tree.note(
                f"{where['authuser']}: ssmtp sent the password without TLS; ssmtp-mailer"
                " refuses to: set use_starttls = true (or allow_plaintext_auth = true)"
            )
    else:
        section.set("auth_method", "NONE")

    fromline = val.get("fromlineoverride", "no")
    if not _yes(fromline):
        tree.note(
            "FromLineOverride=NO: ssmtp replaced every From header with the sender's login"
            " address; ssmtp-mailer keeps the From header a program writes (as with"
            " FromLineOverride=YES) and masquerades senders only through mappings"
        )

    root = val.get("root")
    if root:
        tree.mapping("ssmtp-root", "root", root, f"ssmtp's root=: mail for root goes to {root}.")
        tree.note(
            f"{where['root']}: root={root}: only root is mapped; ssmtp also sent mail for"
            " the other system accounts (uid < 1000) there: add a [mapping:] for each one"
            " that gets mail (from_pattern = www-data)"
        )
    if revaliases is not None:
        _ssmtp_revaliases(tree, revaliases, revaliases_source, route, val, where, use_tls, starttls)

    return tree.result("ssmtp.conf")


def _ssmtp_relay(
    tree: _Tree,
    section: _Section,
    val: dict[str, str],
    where: dict[str, str],
    mailhub: str,
    use_tls: bool,
    starttls: bool,
) -> None:
    host, port = _host_port(mailhub, f"{where.get('mailhub', 'mailhub')}: mailhub")
    port_text = val.get("remoteport") or val.get("port")
    if port is None and port_text:
        try:
            port = parse_port(port_text)
        except ValueError as exc:
            raise ConfigError(where.get("remoteport") or where["port"], str(exc)) from None
    implicit = use_tls and not starttls
    if port is None:
        port = 465 if implicit else 25
    section.set("smtp_server", host)
    section.set("smtp_port", port)
    if implicit:
        section.set("use_ssl", True)
        section.set("use_starttls", False)
    else:
        section.set("use_starttls", use_tls)
    if port == 25:
        tree.note(
            f"{host}: port 25: many networks and cloud providers block it;"
            " a submission relay usually listens on 587 (STARTTLS) or 465"
        )
    ca_file = val.get("tls_ca_file")
    if ca_file and ca_file not in SYSTEM_CA_BUNDLES:
        tree.file(section, "ssl_ca_file", ca_file, where["tls_ca_file"])
    elif use_tls:
        tree.note(
            f"{host}: ssmtp did not verify the relay's certificate; ssmtp-mailer does, against"
            " the system's CA store: for a self-signed relay set tls_fingerprint"
            " (`ssmtp-mailer test` prints it)"
        )
    if val.get("tls_ca_dir"):
        tree.note(
            f"{where['tls_ca_dir']}: TLS_CA_Dir: ssl_ca_file takes one PEM file; concatenate"
            " the directory's certificates into one and set ssl_ca_file"
        )
    if _yes(val.get("usetlscert", "no")):
        cert = val.get("tlscert") or "/etc/ssl/certs/ssmtp.pem"
        tree.file(section, "ssl_cert_file", cert, where.get("tlscert") or where["usetlscert"])
        if val.get("tlskey"):
            tree.file(section, "ssl_key_file", val["tlskey"], where["tlskey"])


def _ssmtp_revaliases(
    tree: _Tree,
    text: str,
    source: str,
    route: str,
    val: dict[str, str],
    where: dict[str, str],
    use_tls: bool,
    starttls: bool,
) -> None:
    main_hub = _host_port(val["mailhub"], "mailhub")
    hubs: dict[tuple[str, int | None], str] = {main_hub: route}
    mapped = 0
    for number, local, address, mailhub in parse_revaliases(text, source):
        at = f"{source}:{number}"
        target = route
        if mailhub:
            hub = _host_port(mailhub, f"{at}: mailhub")
            if hub[1] is None and main_hub[0] == hub[0]:
                hub = main_hub
            if hub not in hubs:
                name = _route_name(f"{route}-{hub[0]}" + (f"-{hub[1]}" if hub[1] else ""))
                hubs[hub] = name
                section = tree.route(
                    name, f"The mailhub {mailhub} that {source} names for {local}."
                )
                main = tree.routes[route]
                for key, value in main.values.items():
                    section.values[key] = value
                section.secret = main.secret
                _ssmtp_relay(tree, section, val, where, mailhub, use_tls, starttls)
                if route in tree.keyring_routes:
                    tree.keyring_routes.append(name)
                for owner, secret in list(tree.passwords):
                    if owner == route:
                        tree.passwords.append((name, secret))
            target = hubs[hub]
        if local == "root" and val.get("root"):
            tree.note(
                f"{at}: root:{address}: root= ({val['root']}) is kept: one mapping rewrites"
                " root both as recipient and as sender"
            )
            for section in tree.mappings:
                if section.header == "mapping:ssmtp-root":
                    section.set("domain", target)
            continue
        mapping = tree.mapping(
            f"revaliases-{local}",
            local,
            address,
            f"{at}: mail from {local} leaves as {address}.",
        )
        if mapping is not None:
            mapping.set("domain", target)
            mapped += 1
    if mapped:
        tree.note(
            f"{source}: a mapping rewrites its address as a recipient too: mail to a local"
            " account listed there now goes to its outgoing address"
        )


# ---------------------------------------------------------------------------- msmtp

# Keys read where the route's TLS and protocol are set up; every key that is neither
# handled nor here is reported as not carried over.
_MSMTP_IGNORED_QUIETLY = frozenset({"tls_starttls", "tls", "protocol"})
_MSMTP_AUTH = {
    "on": "AUTO",
    "off": "NONE",
    "plain": "PLAIN",
    "login": "LOGIN",
    "cram-md5": "CRAM-MD5",
    "xoauth2": "XOAUTH2",
}


class _Account(NamedTuple):
    name: str
    line: int
    values: dict[str, tuple[int, str]]


def parse_msmtprc(text: str, source: str) -> tuple[list[_Account], str | None]:
    """Accounts with `defaults` and `account A : B` inheritance applied, and the default."""
    defaults: dict[str, tuple[int, str]] = {}
    accounts: dict[str, _Account] = {}
    current: dict[str, tuple[int, str]] | None = None
    default: str | None = None
    for number, raw in enumerate(_lines(text), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, *rest = line.split(None, 1)
        key, value = key.lower(), _msmtp_value(rest[0].strip() if rest else "")
        if key == "defaults":
            current = defaults
            continue
        if key == "account":
            name, sep, parents = value.partition(":")
            name = name.strip()
            if not name:
                raise ConfigError(f"{source}:{number}", "account without a name")
            if name == "default" and sep and not accounts.get("default"):
                chosen = [p.strip() for p in parents.split(",") if p.strip()]
                if len(chosen) == 1 and chosen[0] in accounts and not _has_own_lines(text, number):
                    default = chosen[0]
                    current = None
                    continue
            values = dict(defaults)
            for parent in (p.strip() for p in parents.split(",") if p.strip()):
                if parent not in accounts:
                    raise ConfigError(f"{source}:{number}", f"account {parent}: not defined above")
                values.update(accounts[parent].values)
            accounts[name] = _Account(name, number, values)
            current = values
            continue
        if current is None:
            raise ConfigError(
                f"{source}:{number}", f"{key}: outside any account (add `defaults` or `account`)"
            )
        current[key] = (number, value)
    if default is None and "default" in accounts:
        default = "default"
    return list(accounts.values()), default


def _has_own_lines(text: str, number: int) -> bool:
    """Whether `account default : x` at line `number` is followed by settings of its own."""
    for raw in _lines(text)[number:]:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        return line.split(None, 1)[0].lower() not in ("account", "defaults")
    return False


def _msmtp_value(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return value


def parse_aliases(text: str, source: str) -> list[tuple[int, str, list[str]]]:
    """msmtp's aliases file: `local: address, address` per line (`default:` for the rest)."""
    out = []
    for number, raw in enumerate(_lines(text), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        local, sep, targets = line.partition(":")
        addresses = [t.strip() for t in targets.split(",") if t.strip()]
        if not sep or not local.strip() or not addresses:
            raise ConfigError(f"{source}:{number}", f"expected 'local: address', got {line!r}")
        out.append((number, local.strip(), addresses))
    return out


def import_msmtp(
    text: str,
    source: str,
    *,
    read_aliases: Callable[[str], str | None] = lambda _path: None,
    account: str | None = None,
    inline_passwords: bool = True,
    exists: Callable[[str], bool] = lambda _path: True,
) -> Imported:
    """Each msmtp account as a route named after its `from` domain (SPEC §4.4 picks it)."""
    accounts, default = parse_msmtprc(text, source)
    if account == "default" and default is not None:
        account = default
    if account is not None:
        accounts = [a for a in accounts if a.name == account]
        if not accounts:
            raise ConfigError(f"{source}: account {account}", "not defined")
        default = account
    if not accounts:
        raise ConfigError(source, "no account defined")
    tree = _Tree(source, inline_passwords, exists)
    domains: dict[str, list[str]] = {}
    for acc in accounts:
        sender = acc.values.get("from", (0, ""))[1]
        domains.setdefault(sender.rpartition("@")[2].lower(), []).append(acc.name)
    names: dict[str, str] = {}
    for acc in accounts:
        names[acc.name] = _msmtp_account(tree, acc, source, domains)
    if default is not None and default in names:
        tree.global_.set("default_domain", names[default])
    elif len(accounts) > 1:
        tree.note(
            f"{source}: no default account: senders of other domains have no route"
            " (set default_domain)"
        )
    else:
        tree.global_.set("default_domain", names[accounts[0].name])
    _msmtp_globals(tree, accounts, source)
    for path in sorted({a.values["aliases"][1] for a in accounts if "aliases" in a.values}):
        aliases = read_aliases(path)
        if aliases is None:
            tree.note(
                f"{path}: msmtp's aliases file cannot be read, its aliases are not carried over"
            )
            continue
        for number, local, addresses in parse_aliases(aliases, path):
            at = f"{path}:{number}"
            if len(addresses) > 1:
                tree.note(
                    f"{at}: {local}: a mapping has one target: only {addresses[0]} is kept"
                    f" ({', '.join(addresses[1:])} dropped)"
                )
            if local.lower() == "default":
                tree.note(
                    f"{at}: default: {addresses[0]}: not carried over; for every other local"
                    f" name add a mapping from_pattern = *@<this host's name>,"
                    f" to_pattern = {addresses[0]}"
                )
                continue
            tree.mapping(f"aliases-{local}", local, addresses[0], f"{at}: mail for {local}.")
        tree.note(
            f"{path}: a mapping rewrites its name as a sender too: mail sent by a listed"
            " local account leaves as its alias address"
        )
    return tree.result("msmtp.conf")


def _msmtp_account(tree: _Tree, acc: _Account, source: str, domains: dict[str, list[str]]) -> str:
    vals = {key: value for key, (_, value) in acc.values.items()}
    at = {key: f"{source}:{line}" for key, (line, _) in acc.values.items()}
    label = f"{source}:{acc.line}: account {acc.name}"
    sender = vals.get("from", "")
    domain = sender.rpartition("@")[2].lower()
    wildcard = "*" in sender or "%" in sender
    # The only account sending from this domain (`a@`, `*@` or `%U@example.com`) names it.
    named_by_domain = (
        bool(domain) and not {"*", "%"} & set(domain) and len(domains.get(domain, [])) == 1
    )
    name = _route_name(domain if named_by_domain else acc.name)
    while name in tree.routes:
        name += "-" + acc.name.lower()
    if not vals.get("host"):
        raise ConfigError(label, "host: not set")
    section = tree.route(name, f"msmtp {label}" + (f" (from {sender})" if sender else ""))
    if not sender:
        tree.note(f"{label}: no from: the route is named {name} and only the default reaches it")
    elif not named_by_domain:
        if wildcard:
            tree.note(
                f"{label}: from {sender}: route named {name}; route senders to it with a mapping"
            )
        else:
            mapping = tree.mapping(
                f"msmtp-{acc.name}", sender, sender, f"msmtp account {acc.name} sends as {sender}."
            )
            if mapping is not None:
                mapping.set("domain", name)
    if sender and not wildcard:
        section.set("relay_account", sender)

    try:
        host = parse_hostname(vals["host"])
    except ValueError as exc:
        raise ConfigError(f"{at['host']}: host", str(exc)) from None
    tls = _yes(vals.get("tls", "off"))
    starttls = _yes(vals.get("tls_starttls", "on"))
    implicit = tls and not starttls
    port = 465 if implicit else 25
    if "port" in vals:
        try:
            port = parse_port(vals["port"])
        except ValueError as exc:
            raise ConfigError(f"{at['port']}: port", str(exc)) from None
    section.set("smtp_server", host)
    section.set("smtp_port", port)
    if implicit:
        section.set("use_ssl", True)
        section.set("use_starttls", False)
    else:
        section.set("use_starttls", tls)
    if vals.get("protocol", "smtp").lower() != "smtp":
        tree.note(f"{at['protocol']}: protocol {vals['protocol']}: only SMTP is supported")
    trust = vals.get("tls_trust_file")
    if trust and trust not in SYSTEM_CA_BUNDLES:
        tree.file(section, "ssl_ca_file", trust, at["tls_trust_file"])
    fingerprint = vals.get("tls_fingerprint")
    if fingerprint:
        try:
            section.set("tls_fingerprint", parse_fingerprint(fingerprint))
        except ValueError:
            tree.note(
                f"{at['tls_fingerprint']}: tls_fingerprint: not SHA-256 (SHA-1 and MD5 are not"
                " accepted): `ssmtp-mailer test` prints the SHA-256 one to set"
            )
    if vals.get("tls_certcheck", "on").lower() == "off" or "tls_nocertcheck" in vals:
        section.set("tls_verify", False)
        tree.note(
            f"{at.get('tls_certcheck') or at['tls_nocertcheck']}: tls_certcheck off:"
            " carried over as tls_verify = false; pin the certificate with tls_fingerprint instead"
        )
    for ours, theirs in (("ssl_cert_file", "tls_cert_file"), ("ssl_key_file", "tls_key_file")):
        if vals.get(theirs):
            tree.file(section, ours, vals[theirs], at[theirs])
    if vals.get("domain"):
        try:
            section.set("helo_name", parse_hostname(vals["domain"]))
        except ValueError as exc:
            raise ConfigError(f"{at['domain']}: domain", str(exc)) from None

    auth = vals.get("auth", "off").lower()  # msmtp's default, even with a user set
    if auth == "off" and vals.get("user"):
        tree.note(
            f"{label}: user {vals['user']} but auth off: msmtp did not authenticate, and"
            " neither does this route (set auth_method = AUTO to)"
        )
    method = _MSMTP_AUTH.get(auth)
    if method is None:
        tree.note(f"{at['auth']}: auth {auth}: not supported, AUTO is used")
        method = "AUTO"
    if method != "AUTO":
        section.set("auth_method", method)
    if method != "NONE":
        if vals.get("user"):
            section.set("username", vals["user"])
        if method == "XOAUTH2":
            if vals.get("passwordeval"):
                section.set("oauth2_token_command", vals["passwordeval"])
            else:
                tree.note(f"{label}: auth xoauth2 without passwordeval: set oauth2_token_command")
        elif vals.get("passwordeval"):
            section.set("password_command", vals["passwordeval"])
        elif vals.get("password"):
            tree.password(name, section, vals["password"])
        elif vals.get("user"):
            tree.keyring_routes.append(name)
        if not tls:
            tree.note(
                f"{label}: authentication without TLS: ssmtp-mailer refuses to send a password"
                " in clear; set use_starttls = true (or allow_plaintext_auth = true)"
            )
    for key in sorted(vals):
        if key in _MSMTP_HANDLED or key in _MSMTP_IGNORED_QUIETLY:
            continue
        if key == "remove_bcc_headers" and _yes(vals[key]):
            continue  # what ssmtp-mailer always does
        tree.note(
            f"{at[key]}: {key}: {_MSMTP_UNSUPPORTED.get(key, 'no counterpart')}, not carried over"
        )
    return name


_MSMTP_HANDLED = frozenset({
    "host", "port", "from", "tls_trust_file", "tls_fingerprint", "tls_certcheck",
    "tls_cert_file", "tls_key_file", "domain", "auth", "user", "password", "passwordeval",
    "aliases", "logfile", "syslog", "timeout", "tls_nocertcheck",
})  # fmt: skip
_MSMTP_UNSUPPORTED = {
    "dsn_notify": "pass -N to sendmail instead",
    "dsn_return": "pass -R to sendmail instead",
    "set_from_header": "a From header is added when missing",
    "set_date_header": "a Date header is added when missing",
    "set_msgid_header": "a Message-ID header is added when missing",
    "auto_from": "the sender comes from -f or the From header",
    "maildomain": "the sender comes from -f or the From header",
    "undisclosed_recipients": "no counterpart",
    "remove_bcc_headers": "Bcc headers are always removed",
    "tls_crl_file": "no counterpart",
    "tls_priorities": "TLS 1.2 or later with Python's defaults",
    "tls_min_dh_prime_bits": "TLS 1.2 or later with Python's defaults",
    "tls_host_override": "no counterpart",
    "proxy_host": "no proxy support",
    "proxy_port": "no proxy support",
    "source_ip": "no counterpart",
    "socket": "no counterpart",
    "logfile_time_format": "no counterpart",
    "eval": "no counterpart",
}


def _msmtp_globals(tree: _Tree, accounts: Iterable[_Account], source: str) -> None:
    """logfile, syslog and timeout are per account in msmtp and global here: the first wins."""
    seen: dict[str, tuple[str, str]] = {}
    for acc in accounts:
        for key in ("logfile", "syslog", "timeout"):
            if key not in acc.values:
                continue
            line, value = acc.values[key]
            if key in seen and seen[key][1] != value:
                tree.note(
                    f"{source}:{line}: {key} {value}: one setting for all routes here;"
                    f" {seen[key][1]} ({seen[key][0]}) is kept"
                )
                continue
            seen.setdefault(key, (f"{source}:{line}", value))
    g = tree.global_
    if "logfile" in seen and seen["logfile"][1] not in ("", "-"):
        g.set("log_file", seen["logfile"][1])
    elif "logfile" in seen:
        tree.note(f"{seen['logfile'][0]}: logfile -: the log goes to a file or to syslog")
    if "syslog" in seen and seen["syslog"][1].lower() != "off":
        g.set("syslog", True)
        if seen["syslog"][1].upper() != "LOG_MAIL":
            tree.note(f"{seen['syslog'][0]}: syslog facility {seen['syslog'][1]}: LOG_MAIL is used")
    if "timeout" in seen:
        timeout = seen["timeout"][1]
        if timeout.lower() != "off" and timeout.isdigit() and int(timeout) > 0:
            g.set("connection_timeout", int(timeout))
            g.set("read_timeout", int(timeout))
            g.set("write_timeout", int(timeout))
