"""Where things live on disk; every location follows platformdirs and the environment."""

from __future__ import annotations

import os
from pathlib import Path

APP_NAME = "ssmtp-mailer"
CONFIG_ENV = "SSMTP_MAILER_CONFIG"
CACHE_ENV = "SSMTP_MAILER_CACHE_DIR"
SYSTEM_CONFIG = Path("/etc/ssmtp-mailer/ssmtp-mailer.conf")
ROOT_SPOOL = Path("/var/spool/ssmtp-mailer")
ROOT_CACHE = Path("/var/cache/ssmtp-mailer")


def user_config_file() -> Path:
    from platformdirs import user_config_dir

    return Path(user_config_dir(APP_NAME)) / "ssmtp-mailer.conf"


def user_state_dir() -> Path:
    from platformdirs import user_state_dir as state_dir

    return Path(state_dir(APP_NAME))


def config_cache_dir() -> Path:
    """Where the compiled configuration cache lives (FHS /var/cache for root)."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override)
    if os.geteuid() == 0:
        return ROOT_CACHE
    from platformdirs import user_cache_dir

    return Path(user_cache_dir(APP_NAME))


def default_spool_dir() -> Path:
    return ROOT_SPOOL if os.geteuid() == 0 else user_state_dir() / "spool"


def config_candidates(explicit: str | None) -> list[tuple[Path, str]]:
    """The configuration files to try, first found wins, each with why it is tried."""
    if explicit:
        return [(Path(explicit), "--config")]
    env = os.environ.get(CONFIG_ENV)
    if env:
        return [(Path(env), f"${CONFIG_ENV}")]
    return [(user_config_file(), "user configuration"), (SYSTEM_CONFIG, "system configuration")]
