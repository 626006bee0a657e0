"""One prepared message through routing, header fixes and the relay; outcome as a sysexit code."""

import contextlib
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from ssmtp_mailer import errors, log, rewrite
from ssmtp_mailer.config.model import Config, TempFailurePolicy
from ssmtp_mailer.errors import (
    EX_NOPERM,
    EX_NOUSER,
    EX_OK,
    CantCreateError,
    DataError,
    MailerError,
    NoUserError,
    TempFailError,
)
from ssmtp_mailer.message import Dsn, PreparedMessage, apply_group_headers
from ssmtp_mailer.relay import engine, failures
from ssmtp_mailer.relay.pool import ConnectionPool

if TYPE_CHECKING:
    from ssmtp_mailer.relay.dkim import Signer


class GroupOutcome(NamedTuple):
    """What happened to one route group: delivered, queued or failed."""

    group: rewrite.RouteGroup
    result: engine.DeliveryResult | None = None
    queued_id: str | None = None
    error: MailerError | None = None
    record: engine.DeliveryLog | None = None

    def log(self, exit_code: int) -> None:
        """Write this group's log line, now that the process's exit code is known."""
        if self.record is None:
            return
        if self.result is not None:
            self.record.sent(self.result, exit_code)
        elif self.error is not None:
            if self.queued_id is not None:
                outcome = "queued"
            elif failures.is_temporary(self.error):
                outcome = "deferred"
            else:
                outcome = "failed"
            self.record.not_sent(self.error, outcome, exit_code, self.queued_id)


class SubmitResult(NamedTuple):
    """The outcome of a whole submission; `problems` are the lines already reported."""

    exit_code: int
    message_id: str
    plan: rewrite.Plan
    outcomes: tuple[GroupOutcome, ...] = ()
    problems: tuple[str, ...] = ()

    @property
    def delivered(self) -> tuple[str, ...]:
        return tuple(a for o in self.outcomes if o.result for a in o.result.accepted)

    @property
    def summary(self) -> str:
        """One line for an SMTP reply or a log: the first problem, or what was delivered."""
        if self.problems:
            return self.problems[0]
        queued = [o.queued_id for o in self.outcomes if o.queued_id]
        if queued:
            return f"queued as {', '.join(queued)} {self.message_id}"
        return f"delivered to {len(self.delivered)} recipient(s) {self.message_id}"


def _queue_group(
    config: Config,
    group: rewrite.RouteGroup,
    data: bytes | bytearray,
    prepared: PreparedMessage,
    error: MailerError,
    report: Callable[[str], None],
    *,
    due_now: bool = False,
) -> GroupOutcome:
    """SPEC §7: queue the group (exit 0) or, with `on_temporary_failure = fail`, exit 75."""
    from ssmtp_mailer import spool

    try:
        entry_id = spool.handle_temporary_failure(
            config,
            group,
            data,
            smtputf8=prepared.smtputf8,
            eightbit=prepared.eightbit,
            error=error,
            dsn=prepared.dsn,
            due_now=due_now,
        )
    except CantCreateError as exc:
        return GroupOutcome(group, error=exc)
    if entry_id is None:
        return GroupOutcome(group, error=error)
    report(spool.queued_note(entry_id, error))
    return GroupOutcome(group, queued_id=entry_id, error=error)


def _keep_failed(
    config: Config,
    group: rewrite.RouteGroup,
    data: bytes | bytearray,
    prepared: PreparedMessage,
    error: MailerError,
    replies: dict[str, str] | None = None,
) -> str | None:
    """SPEC §7: a permanent failure keeps a copy with its reason (and each recipient's
    reply) in the spool's `failed/`; its id (None if even that could not be written)."""
    from ssmtp_mailer import spool

    return spool.handle_permanent_failure(
        config,
        group,
        data,
        error=error,
        smtputf8=prepared.smtputf8,
        eightbit=prepared.eightbit,
        dsn=prepared.dsn,
        replies=replies,
    )


def start_queue_runner(config: Config) -> None:
    """After a delivery the relay is evidently up: a detached `queue run` sends what is due.

    Detached, with no inherited descriptors, so the caller's exit and its pipes (cron
    reads ours to EOF) are never held up by queued mail.
    """
    queue_dir = config.global_.spool_dir / "queue"
    try:
        with os.scandir(queue_dir) as entries:
            if not any(e.name.endswith(".toml") for e in entries):
                return
    except OSError:
        return
    argv = [sys.executable, "-m", "ssmtp_mailer", "--config", str(config.main_file), "queue", "run"]
    null = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_RDWR, 0) for fd in (0, 1, 2)]
    with contextlib.suppress(OSError):
        os.posix_spawn(sys.executable, argv, os.environ, file_actions=null, setsid=True)


def submit(
    config: Config,
    prepared: PreparedMessage,
    *,
    transcript: Callable[[str], None] | None = None,
    report: Callable[[str], None] = errors.report,
    run_queue: bool = True,
    retries: int = 0,
    pool: ConnectionPool | None = None,
    accepted: bool = False,
    held: bool = False,
    told: bool = True,
    foreign: bool = False,
) -> SubmitResult:
    """Route, fix headers per group and deliver; each problem is reported as one line.

    `retries`: the engine's quick retries, for the listener's workers only (SPEC §6).
    `accepted`: the answer is an SMTP reply (the listener, `-bs`, the maildrop's pickup):
    a fault of our own set-up is queued, as for a queue entry (relay/failures.py).
    Recipients the relay refuses while the others get it are told to the sender in a
    failure notice, since the 250 or exit 0 the caller gets cannot name them.
    `told`: False when nobody hears the outcome (the maildrop's pickup: its submitter
    heard 0 long ago): then every failure is told in a notice.
    `held`: the sender cannot take the message back (a maildrop file; a local submission,
    which falls back to the maildrop on a 4xx): a temporary failure is queued whatever
    on_temporary_failure says, since handing it back would only bring it here again and
    give the recipients that already have it a second copy. Whichever way the message
    came, that holds once some recipient has it: a retry by the caller would be a second
    copy for them.
    `foreign`: from a client of the listener that is not ours (rewrite.explain_delivery).

    Errors about the whole message (sender refused by policy, no route) are raised. The
    prepared message's buffer is reused for the last group's headers: read it before, not after.
    A caller with many messages (`-bs`, the listener) passes its `pool` and closes it
    itself; otherwise the message's groups share one of their own.
    """
    # Where a 4xx would bring the message back whole: once part of it went, or from the
    # start (held), what fails for a while is queued.
    queueing = config
    if config.global_.on_temporary_failure != TempFailurePolicy.QUEUE:
        queueing = config._replace(
            global_=config.global_._replace(on_temporary_failure=TempFailurePolicy.QUEUE)
        )
    if held:
        config = queueing
    plan = rewrite.plan_delivery(config, prepared.sender, prepared.recipients, foreign=foreign)
    if prepared.dsn is not None and prepared.dsn.orcpt:
        # Each ORCPT follows its recipient to the address a mapping made of it.
        finals = {r.original: r.final for r in plan.rewrites if r.role == "recipient"}
        prepared = prepared._replace(dsn=prepared.dsn.renamed(finals))
    problems: list[str] = []

    def problem(line: str) -> None:
        problems.append(line)
        report(line)

    for refusal in plan.refused:
        where = f" ({refusal.rule})" if refusal.rule else ""
        problem(f"{refusal.address}: refused by policy: {refusal.reason}{where}")

    signers = _signers(plan)
    outcomes: list[GroupOutcome] = []
    failed_ids: list[str] = []  # the failed/ copies made of this message

    def settle(
        policy: Config,
        group: rewrite.RouteGroup,
        data: bytes | bytearray,
        this: PreparedMessage,
        attempted: Attempted,
        record: engine.DeliveryLog,
    ) -> None:
        """A group that did not go: queued or kept in failed/ by `policy`."""
        outcome, failed_id = _handle_failure(policy, group, data, this, attempted, report)
        if failed_id is not None:
            failed_ids.append(failed_id)
        if outcome.error is not None and outcome.queued_id is None:
            for line in outcome.error.lines():
                problem(line)
        outcomes.append(outcome._replace(record=record))

    # A group that failed waits for the others: once any of them got the message, the
    # caller must not send it again, so a temporary failure is queued whatever the policy
    # (a 451 or an exit 75 would give the others a second copy).
    unsettled: list[
        tuple[rewrite.RouteGroup, bytes | bytearray, PreparedMessage, Attempted, engine.DeliveryLog]
    ] = []
    last = len(plan.groups) - 1
    # Groups that go to the same server share one connection (SPEC §6 reuse).
    connections = pool or ConnectionPool(config.global_.connection_reuse_idle)
    for index, group in enumerate(plan.groups):
        data = apply_group_headers(prepared, plan, group, in_place=index == last)
        signer = signers.get(group.route.name)
        # A mapping may have rewritten an address to a non-ASCII one (RFC 6531).
        addresses = (group.envelope_from, *group.recipients)
        this = prepared
        if not prepared.smtputf8 and not all(a.isascii() for a in addresses):
            this = prepared._replace(smtputf8=True)
        attempted: Attempted | None = None
        unsigned = False
        if signer is not None:
            # After the last header change, before the first attempt: a queued entry
            # keeps these signed bytes, so a retry sends them as they are.
            from ssmtp_mailer.relay import dkim

            try:
                data = dkim.sign(signer, data, group.envelope_from)
            except Exception as exc:
                # Never queued unsigned (the runner sends what it has): kept in failed/
                # with why, the sender told, and refused for good (a 5xx, not a 451 that
                # brings it back for another copy in failed/). The keys' own faults were
                # found before anything went (_signers).
                unsigned = True
                attempted = _unsigned(config, group, exc)
        record = engine.DeliveryLog(config, group, data)
        attempted = attempted or attempt(
            config,
            group,
            data,
            record=record,
            smtputf8=this.smtputf8,
            eightbit=this.eightbit,
            dsn=this.dsn,
            pool=connections,
            queued=False,
            transcript=transcript,
            retries=retries,
        )
        if attempted.result is None:
            assert attempted.error is not None
            if accepted and not unsigned:
                attempted = attempted._replace(fate=failures.fate(attempted.error, queued=True))
            unsettled.append((group, data, this, attempted, record))
            continue
        some_went = bool(attempted.result.accepted) or any(
            o.result is not None and o.result.accepted for o in outcomes
        )
        queued, failed_id = _handle_refusals(
            queueing if accepted or some_went else config,
            group,
            data,
            this,
            attempted.result,
            problem,
            report,
        )
        outcomes.extend(queued)
        if failed_id is not None:
            failed_ids.append(failed_id)
        outcomes.append(GroupOutcome(group, result=attempted.result, record=record))
    went = any(o.result is not None and o.result.accepted for o in outcomes)
    for failed in unsettled:
        settle(queueing if went else config, *failed)
    code = _exit_code(plan, outcomes)
    for outcome in outcomes:
        outcome.log(code)
    # Whoever cannot hear what failed gets a notice: the client of a 250 or the caller of
    # an exit 0 (those refused while the others got it: a program reads the exit code,
    # not stderr, as Postfix's sendmail leaves them to a bounce), and the maildrop's
    # submitter, told 0 long ago (any of it).
    if failed_ids and (not told or code == EX_OK):
        from ssmtp_mailer.spool import bounce

        for failed_id in failed_ids:
            bounce.notify_failed(config, failed_id, connections)
    if pool is None:
        # QUIT only now: every group's outcome is known and logged before it is sent.
        connections.close()
    # The listener runs the queue itself (run_queue=False): one runner, not one per message.
    if run_queue and any(o.result is not None and o.result.accepted for o in outcomes):
        start_queue_runner(config)
    return SubmitResult(code, prepared.message_id, plan, tuple(outcomes), tuple(problems))


def _signers(plan: rewrite.Plan) -> "dict[str, Signer]":
    """Each signing route's keys, read before any group is attempted (a bad key is EX_CONFIG)."""
    signing = {g.route.name: g.route for g in plan.groups if g.route.dkim_key_file}
    if not signing:
        return {}
    from ssmtp_mailer.relay import dkim

    signers = {name: dkim.signer_for(route) for name, route in signing.items()}
    return {name: signer for name, signer in signers.items() if signer is not None}


def _handle_refusals(
    config: Config,
    group: rewrite.RouteGroup,
    data: bytes | bytearray,
    prepared: PreparedMessage,
    result: engine.DeliveryResult,
    problem: Callable[[str], None],
    report: Callable[[str], None],
) -> tuple[list[GroupOutcome], str | None]:
    """After a partial delivery: queue the 4xx-refused recipients, keep the 5xx ones in
    failed/; the queued outcomes, and the failed/ copy's id."""
    deferred, refused = result.deferred, result.rejected
    for address in refused:
        code, text = result.refused[address]
        problem(f"{address}: refused by {result.refuser_of(address)}: {code} {text}")
    outcomes: list[GroupOutcome] = []
    failed_id = None
    if refused:
        failed = group._replace(recipients=tuple(refused))
        refusal = result.refusal(refused, NoUserError)
        replies = result.reply_to_each(refused)
        failed_id = _keep_failed(config, failed, data, prepared, refusal, replies)
    if deferred:
        pending = group._replace(recipients=deferred)
        error = result.refusal(deferred, TempFailError)
        # Over the relay's limit of recipients per transaction: the queue runner started
        # after this delivery (the listener's within a minute) sends the rest at once, in
        # as many transactions as it takes, each recorded before the next.
        outcome = _queue_group(
            config, pending, data, prepared, error, report, due_now=result.over_limit
        )
        if outcome.error is not None and outcome.queued_id is None:
            for line in outcome.error.lines():
                problem(line)
        outcomes.append(outcome)
    return outcomes, failed_id


class Attempted(NamedTuple):
    """One group's delivery attempt: the relay's result, or the error and its fate."""

    result: engine.DeliveryResult | None = None
    error: MailerError | None = None
    fate: failures.Fate | None = None


def attempt(
    config: Config,
    group: rewrite.RouteGroup,
    data: bytes | bytearray,
    *,
    record: engine.DeliveryLog,
    smtputf8: bool,
    eightbit: bool,
    dsn: Dsn | None,
    pool: ConnectionPool | None,
    queued: bool,
    transcript: Callable[[str], None] | None = None,
    retries: int = 0,
) -> Attempted:
    """The delivery step every path takes, a new message (`queued` False) or a queue entry:
    the engine, then the failure policy (relay/failures.py) on whatever it raised.

    A caller waits at most `rate_limit_wait` for a rate-limit slot; the runner as long as
    the limit needs, since it sends at the allowed pace.
    """
    try:
        result = engine.deliver(
            config,
            group,
            data,
            record=record,
            smtputf8=smtputf8,
            eightbit=eightbit,
            dsn=dsn,
            transcript=transcript,
            rate_wait=None if queued else config.global_.rate_limit_wait,
            retries=retries,
            pool=pool,
        )
    except Exception as exc:
        return _not_attempted(config, group, exc, queued=queued)
    return Attempted(result=result)


def _unsigned(config: Config, group: rewrite.RouteGroup, exc: Exception) -> Attempted:
    """A group its route could not sign: this message's own problem (EX_DATAERR)."""
    error = _not_attempted(config, group, exc).error
    assert error is not None
    if not isinstance(error, DataError):
        error = DataError(error.what, f"cannot be DKIM-signed: {error.why}", hint=error.hint)
    return Attempted(error=error, fate=failures.Fate.FAIL)


def _not_attempted(
    config: Config, group: rewrite.RouteGroup, exc: Exception, *, queued: bool = False
) -> Attempted:
    """An error on the way to the relay, with its fate; a bug must not cost the message."""
    if isinstance(exc, MailerError):
        error = exc
    else:
        log.write_traceback(config, exc)
        error = failures.unexpected(exc, f"[domain:{group.route.name}]")
    return Attempted(error=error, fate=failures.fate(error, queued=queued))


def _handle_failure(
    config: Config,
    group: rewrite.RouteGroup,
    data: bytes | bytearray,
    prepared: PreparedMessage,
    attempted: Attempted,
    report: Callable[[str], None],
) -> tuple[GroupOutcome, str | None]:
    """Queue the group or keep it in failed/, as the failure policy decided; and the
    failed/ copy's id."""
    assert attempted.error is not None
    if attempted.fate is failures.Fate.QUEUE:
        return _queue_group(config, group, data, prepared, attempted.error, report), None
    failed_id = _keep_failed(config, group, data, prepared, attempted.error)
    return GroupOutcome(group, error=attempted.error), failed_id


def _exit_code(plan: rewrite.Plan, outcomes: list[GroupOutcome]) -> int:
    """SPEC §9 for the whole message, given what happened to each group."""
    errors = [o.error for o in outcomes if o.error is not None and o.queued_id is None]
    code = failures.exit_code_of(errors)
    if code is not None:
        return code
    delivered = any(o.result is not None and o.result.accepted for o in outcomes)
    queued = any(o.queued_id is not None for o in outcomes)
    if plan.refused:
        # SPEC §4.6: policy refusals are EX_NOPERM, even when the other recipients got it.
        return EX_NOPERM
    if not delivered and not queued:
        return EX_NOUSER
    return EX_OK
