"""Shared fixtures: an isolated environment for every test, and the real SMTP servers."""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from relayconf import RunMain

from ssmtp_mailer.entry import main

pytest_plugins = ["smtpserver", "dnsserver"]


@pytest.fixture(autouse=True)
def isolated_env(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """No test sees the user's or the system's configuration, keyring or spool."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    for var, sub in (
        ("XDG_CONFIG_HOME", "config"),
        ("XDG_STATE_HOME", "state"),
        ("XDG_DATA_HOME", "data"),
    ):
        (home / sub).mkdir()
        monkeypatch.setenv(var, str(home / sub))
    monkeypatch.delenv("SSMTP_MAILER_CONFIG", raising=False)
    monkeypatch.setenv("SSMTP_MAILER_CACHE_DIR", str(home / "cache" / "ssmtp-mailer"))
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyrings.alt.file.PlaintextKeyring")
    yield home


@pytest.fixture
def run_main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> RunMain:
    """Run the console script in-process: `run_main(args, stdin=b"", prog="sendmail")`."""

    def invoke(args: list[str], stdin: bytes = b"", prog: str = "sendmail") -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
        capsys.readouterr()
        code = main(args, prog_name=prog)
        out, err = capsys.readouterr()
        return code, out, err

    return invoke
