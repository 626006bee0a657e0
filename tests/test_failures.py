"""The one failure policy, as a table: every error class, at submission and in the queue."""

from __future__ import annotations

import pytest

from ssmtp_mailer.errors import (
    ConfigError,
    DataError,
    MailerError,
    NoHostError,
    NoPermError,
    NoUserError,
    ProtocolError,
    SoftwareError,
    TempFailError,
    UnavailableError,
)
from ssmtp_mailer.relay.failures import Fate, exit_code_of, fate, is_temporary, unexpected

QUEUE, FAIL = Fate.QUEUE, Fate.FAIL


@pytest.mark.parametrize(
    ("error", "at_submission", "in_the_queue", "code"),
    [
        (TempFailError("relay", "451 try later"), QUEUE, QUEUE, 75),
        (NoHostError("relay", "relay host not found"), QUEUE, QUEUE, 68),
        (NoPermError("relay", "535 authentication refused"), FAIL, QUEUE, 77),
        (ProtocolError("relay", "TLS certificate not accepted"), FAIL, QUEUE, 76),
        (ConfigError("[domain:x]", "no password"), FAIL, QUEUE, 78),
        (SoftwareError("[domain:x]", "internal error"), FAIL, QUEUE, 70),
        (DataError("relay", "554 message refused"), FAIL, FAIL, 65),
        (NoUserError("relay", "550 every recipient unknown"), FAIL, FAIL, 67),
        (UnavailableError("relay", "550 relay refused"), FAIL, FAIL, 69),
    ],
)
def test_policy_table(
    error: MailerError, at_submission: Fate, in_the_queue: Fate, code: int
) -> None:
    assert fate(error, queued=False) is at_submission
    assert fate(error, queued=True) is in_the_queue
    assert is_temporary(error) is (at_submission is QUEUE)
    assert exit_code_of([error]) == code


def test_a_permanent_error_outranks_a_temporary_one() -> None:
    temporary, permanent = TempFailError("a", "451"), DataError("b", "554")
    assert exit_code_of([temporary, permanent]) == 65
    assert exit_code_of([temporary]) == 75
    assert exit_code_of([]) is None


def test_a_bug_is_a_software_error_that_waits_in_the_queue() -> None:
    error = unexpected(KeyError("x"), "[domain:x]")
    assert error.exit_code == 70 and "KeyError" in error.why
    assert fate(error, queued=False) is FAIL and fate(error, queued=True) is QUEUE
