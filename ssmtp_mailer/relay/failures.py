"""One failure policy (SPEC §6, §7, §9) for the sendmail path, the queue runner and the listener.

Pure: an error in, a decision out. Two questions are asked of every failure:

- Is it temporary? Then the message is kept for a later attempt, wherever it came from.
- Does it say anything final about the message? A refusal of the message itself (5xx to
  its data, every recipient unknown) does; a fault of the relay or of our own set-up
  (authentication refused, TLS, the configuration, a bug) does not. A message just
  submitted reports such a fault to its sender at once (a non-zero exit, a copy in
  `failed/`); an entry already queued waits for the fix until `queue_lifetime`, as
  Postfix defers on SASL failures.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

from ssmtp_mailer.errors import (
    ConfigError,
    MailerError,
    NoPermError,
    ProtocolError,
    SoftwareError,
    TempFailError,
)


class Fate(enum.Enum):
    """What becomes of a message, or of the recipients, a failure was about."""

    QUEUE = "queue"  # kept for a later attempt
    FAIL = "fail"  # a copy in failed/; the sender is told (exit code, or a bounce)


# Faults of the relay or of this machine's set-up: nothing final about the message.
_SETUP_FAULTS: tuple[type[MailerError], ...] = (
    ConfigError,
    NoPermError,
    ProtocolError,
    SoftwareError,
)


def is_temporary(error: MailerError) -> bool:
    """A failure worth a later attempt whatever its source (4xx, network, DNS, rate limit)."""
    return isinstance(error, TempFailError)


def fate(error: MailerError, *, queued: bool) -> Fate:
    """The policy: `queued` is True for an entry the runner retries, False at submission."""
    if is_temporary(error):
        return Fate.QUEUE
    if queued and isinstance(error, _SETUP_FAULTS):
        return Fate.QUEUE
    return Fate.FAIL


def unexpected(exc: Exception, what: str) -> SoftwareError:
    """A bug met while delivering, as an error the policy knows (EX_SOFTWARE, a setup fault)."""
    return SoftwareError(what, f"internal error: {type(exc).__name__}: {exc}")


def exit_code_of(errors: Sequence[MailerError]) -> int | None:
    """The SPEC §9 code of a message's unresolved errors: a permanent one outranks a
    temporary one (it is what the caller must fix); None when there are none."""
    permanent = [e for e in errors if not is_temporary(e)]
    if permanent:
        return permanent[0].exit_code
    return errors[0].exit_code if errors else None
