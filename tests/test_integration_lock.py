"""The integration tier never vanishes silently, and two runs never restart its relay under each other."""

from __future__ import annotations

import fcntl
import os
import subprocess

import pytest
from test_integration_postfix import HERE, RELAY_LOCK, _unavailable


def test_missing_relay_fails_under_ci_as_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    if os.geteuid() == 0:
        with pytest.raises(pytest.fail.Exception, match="cannot start under CI"):
            _unavailable("relay-setup.sh failed")
    else:
        with pytest.raises(pytest.skip.Exception):
            _unavailable("relay-setup.sh failed")


def test_missing_relay_skips_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"relay-setup\.sh failed"):
        _unavailable("relay-setup.sh failed")


@pytest.mark.skipif(os.geteuid() != 0, reason="relay-stop.sh runs as root only")
def test_relay_stop_waits_while_tests_use_the_relay(tmp_path: os.PathLike[str]) -> None:
    """While a test run holds the lock shared, relay-stop.sh cannot stop anything."""
    env = {**os.environ, "RELAY_LOCK": RELAY_LOCK, "RELAY_DIR": str(tmp_path)}
    with open(RELAY_LOCK, "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)
        blocked = subprocess.run(
            ["timeout", "2", "bash", str(HERE / "integration" / "relay-stop.sh"), "--quiet"],
            env=env,
            capture_output=True,
            check=False,
        )
    assert blocked.returncode == 124  # still waiting for the lock when timeout killed it
    done = subprocess.run(
        ["bash", str(HERE / "integration" / "relay-stop.sh"), "--quiet"],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
