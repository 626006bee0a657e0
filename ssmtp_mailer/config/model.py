"""The typed, immutable configuration: what the loader produces and everything else reads.

NamedTuples, not frozen dataclasses: this module is imported on every sendmail run, and
making a dataclass (plus importing `dataclasses` itself) costs several times as much
(bench/bench_sendmail.py measures the path).
"""

import enum
from pathlib import Path
from typing import NamedTuple


class AuthMethod(str, enum.Enum):
    AUTO = "AUTO"
    NONE = "NONE"
    PLAIN = "PLAIN"
    LOGIN = "LOGIN"
    CRAM_MD5 = "CRAM-MD5"
    XOAUTH2 = "XOAUTH2"


class DeliveryMode(str, enum.Enum):
    RELAY = "relay"
    DIRECT = "direct"
    HYBRID = "hybrid"


class DirectTls(str, enum.Enum):
    OPPORTUNISTIC = "opportunistic"
    VERIFY = "verify"


class TempFailurePolicy(str, enum.Enum):
    QUEUE = "queue"
    FAIL = "fail"


class DkimAlgorithm(str, enum.Enum):
    AUTO = "auto"
    RSA = "rsa-sha256"
    ED25519 = "ed25519-sha256"
    BOTH = "both"


class Location(NamedTuple):
    path: str
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}"


class HostPort(NamedTuple):
    host: str
    port: int | None = None

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"


class GlobalConfig(NamedTuple):
    default_hostname: str
    default_from: str
    config_dir: Path
    domains_dir: Path
    users_dir: Path
    mappings_dir: Path
    ssl_dir: Path
    spool_dir: Path
    log_file: Path | None = None
    log_level: str = "INFO"
    syslog: bool = False
    max_connections: int = 10
    connection_timeout: int = 30
    read_timeout: int = 60
    write_timeout: int = 60
    connection_reuse_idle: int = 5
    enable_rate_limiting: bool = True
    rate_limit_per_minute: int = 100
    rate_limit_wait: int = 2
    max_retries: int = 3
    retry_backoff: int = 2
    on_temporary_failure: TempFailurePolicy = TempFailurePolicy.QUEUE
    queue_lifetime: int = 432000
    bounce: bool = True
    dns_servers: tuple[HostPort, ...] = ()
    default_domain: str | None = None
    users_required: bool = False
    listen_address: tuple[HostPort, ...] = (HostPort("127.0.0.1", 25),)
    allowed_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    listen_tls_cert_file: Path | None = None
    listen_tls_key_file: Path | None = None
    listen_timeout: int = 300
    listen_user: str = "mail"
    listen_processes: int = 1
    spool_user: str = "mail"
    max_message_size: int = 52428800
    location: Location | None = None
    key_lines: tuple[tuple[str, int], ...] = ()  # the line each key set in [global] is on

    def location_of(self, key: str) -> Location | None:
        """Where `key` is set in [global] (else the section's own line; None without one)."""
        if self.location is None:
            return None
        line = dict(self.key_lines).get(key)
        return self.location if line is None else Location(self.location.path, line)


class DomainConfig(NamedTuple):
    """A relay route, `[domain:NAME]`."""

    name: str
    location: Location
    enabled: bool = True
    smtp_server: str | None = None
    smtp_port: int = 587
    fallback_servers: tuple[HostPort, ...] = ()
    auth_method: AuthMethod = AuthMethod.AUTO
    username: str | None = None
    password: str | None = None
    password_location: Location | None = None
    password_command: str | None = None
    oauth2_token_command: str | None = None
    relay_account: str | None = None
    use_ssl: bool = False
    use_starttls: bool = True
    tls_verify: bool = True
    ssl_ca_file: Path | None = None
    tls_fingerprint: str | None = None
    ssl_cert_file: Path | None = None
    ssl_key_file: Path | None = None
    allow_plaintext_auth: bool = False
    helo_name: str = ""
    delivery_mode: DeliveryMode = DeliveryMode.RELAY
    direct_port: int = 25
    direct_tls: DirectTls = DirectTls.OPPORTUNISTIC
    dkim_selector: tuple[str, ...] = ()
    dkim_key_file: tuple[Path, ...] = ()
    dkim_algorithm: DkimAlgorithm = DkimAlgorithm.AUTO
    rate_limit_per_minute: int = 100

    @property
    def unverified_tls(self) -> str | None:
        """What to say of a route that speaks TLS to its relay without checking the
        certificate (tls_verify = false, nothing pinned), or None."""
        if not (self.use_ssl or self.use_starttls) or self.tls_verify or self.tls_fingerprint:
            return None
        return (
            "tls_verify = false: the relay's certificate is not checked; pin it with"
            " tls_fingerprint instead (`ssmtp-mailer test` prints it)"
        )

    def __repr__(self) -> str:
        # Reprs reach tracebacks and debug output; the password must not.
        shown = (f"{k}={v!r}" for k, v in self._asdict().items() if k != "password")
        return f"DomainConfig({', '.join(shown)})"


class UserConfig(NamedTuple):
    """A sender's permissions, `[user:ADDRESS]`; ADDRESS is a pattern or a `{type}` template."""

    address: str
    location: Location
    enabled: bool = True
    domain: str | None = None
    can_send_from: bool = True
    can_send_to: bool = True
    template_address: bool = False
    allowed_types: tuple[str, ...] = ()
    allowed_recipients: tuple[str, ...] = ()
    allowed_domains: tuple[str, ...] = ()
    smtp_password_hash: str | None = None

    def __repr__(self) -> str:
        shown = (f"{k}={v!r}" for k, v in self._asdict().items() if k != "smtp_password_hash")
        return f"UserConfig({', '.join(shown)})"


class MappingConfig(NamedTuple):
    """An address rewrite, `[mapping:NAME]`."""

    name: str
    location: Location
    from_pattern: str
    to_pattern: str
    smtp_account: str | None = None
    domain: str | None = None
    allowed_recipients: tuple[str, ...] = ()
    rewrite_headers: bool = True


class Config(NamedTuple):
    main_file: Path
    global_: GlobalConfig
    domains: dict[str, DomainConfig]
    users: tuple[UserConfig, ...]
    mappings: tuple[MappingConfig, ...]
    files: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    def domain_for_account(self, account: str) -> DomainConfig | None:
        """The route whose relay_account or username is `account` (case-insensitive)."""
        wanted = account.lower()
        for domain in self.domains.values():
            for candidate in (domain.relay_account, domain.username):
                if candidate and candidate.lower() == wanted:
                    return domain
        return None
