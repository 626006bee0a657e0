"""The effective configuration as plain data, and as INI, TOML or JSON, secrets redacted."""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Any

from ssmtp_mailer.config.model import (
    Config,
    DeliveryMode,
    DomainConfig,
    GlobalConfig,
    HostPort,
    Location,
    MappingConfig,
    UserConfig,
)

REDACTED = "<redacted>"
_HIDDEN = {"location", "password_location", "name", "address", "key_lines"}
_SECRET = {"password", "smtp_password_hash"}


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    # Checked before tuple: HostPort and Location are NamedTuples but are written as text.
    if isinstance(value, (Path, HostPort, Location)):
        return str(value)
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def _section(obj: GlobalConfig | DomainConfig | UserConfig | MappingConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in obj._asdict().items():
        if name in _HIDDEN or value is None:
            continue
        out[name] = REDACTED if name in _SECRET else _plain(value)
    return out


def _route(route: DomainConfig) -> dict[str, Any]:
    """A route's section; a relay route's keys for direct delivery only are left out."""
    out = _section(route)
    if route.delivery_mode == DeliveryMode.RELAY:
        del out["direct_port"], out["direct_tls"]
    return out


def effective(config: Config) -> dict[str, Any]:
    """Every section with its defaults filled in; absent values are left out."""
    return {
        "global": _section(config.global_),
        "domain": {name: _route(d) for name, d in config.domains.items()},
        "user": {u.address: _section(u) for u in config.users},
        "mapping": {m.name: _section(m) for m in config.mappings},
    }


def to_json(config: Config) -> str:
    return json.dumps(effective(config), indent=2)


def to_toml(config: Config) -> str:
    import tomli_w

    return tomli_w.dumps(effective(config))


def _ini_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return json.dumps(value) if any("," in str(v) for v in value) else ", ".join(value)
    text = str(value)
    if text != text.strip() or " #" in text or " ;" in text or text.startswith('"'):
        return json.dumps(text)
    return text


def to_ini(config: Config) -> str:
    data = effective(config)
    lines: list[str] = ["[global]"]
    lines += [f"{k} = {_ini_value(v)}" for k, v in data["global"].items()]
    for kind in ("domain", "user", "mapping"):
        for name, values in data[kind].items():
            lines += ["", f"[{kind}:{name}]"]
            lines += [f"{k} = {_ini_value(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"
