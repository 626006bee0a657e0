"""SPEC §4: patterns, rewriting, routing, the From/Reply-To decision and sender policy."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ssmtp_mailer import addresses as addr
from ssmtp_mailer import patterns as pat
from ssmtp_mailer import rewrite
from ssmtp_mailer.config.loader import load_config
from ssmtp_mailer.config.model import (
    Config,
    DomainConfig,
    GlobalConfig,
    Location,
    MappingConfig,
    UserConfig,
)
from ssmtp_mailer.errors import ConfigError, NoPermError
from ssmtp_mailer.rewrite import Plan, explain_delivery, plan_delivery

HOST = "host.example"


def at(line: int) -> Location:
    return Location("test.conf", line)


def route(name: str, line: int = 1, **kw: Any) -> DomainConfig:
    kw.setdefault("smtp_server", f"smtp.{name}" if name != "*" else "smtp.any.example")
    return DomainConfig(name=name, location=at(line), **kw)


def mapping(name: str, source: str, target: str, line: int = 1, **kw: Any) -> MappingConfig:
    return MappingConfig(name, at(line), source, target, **kw)


def user(address: str, line: int = 1, **kw: Any) -> UserConfig:
    return UserConfig(address=address, location=at(line), **kw)


def make_config(
    domains: Sequence[DomainConfig] = (),
    mappings: Sequence[MappingConfig] = (),
    users: Sequence[UserConfig] = (),
    **global_kw: Any,
) -> Config:
    base = Path("/nonexistent")
    g = GlobalConfig(
        default_hostname=HOST,
        default_from=f"root@{HOST}",
        config_dir=base,
        domains_dir=base,
        users_dir=base,
        mappings_dir=base,
        ssl_dir=base,
        spool_dir=base,
        location=at(1),
        **global_kw,
    )
    return Config(
        main_file=base / "test.conf",
        global_=g,
        domains={d.name: d for d in domains},
        users=tuple(users),
        mappings=tuple(mappings),
    )


def routing(plan: Plan) -> list[tuple[str, str, tuple[str, ...]]]:
    return [(g.route.name, g.envelope_from, g.recipients) for g in plan.groups]


# --- patterns ------------------------------------------------------------------------------

MATCH_CASES = [
    # (pattern, address, matches)
    ("a@b.example", "a@b.example", True),
    ("a@b.example", "a@B.EXAMPLE", True),  # domains are case-insensitive
    ("a@b.example", "A@b.example", True),  # so are local parts, as at every provider
    ("a@b.example", "b@b.example", False),
    ('"a"@b.example', "a@b.example", True),  # quoting that changes nothing is no difference
    ('"a b"@b.example', '"a\\ b"@b.example', True),
    ("*@b.example", "anyone@b.example", True),
    ("*@b.example", "anyone@B.Example", True),
    ("*@b.example", "anyone@c.b.example", False),
    ("root@*", "root@anywhere.example", True),
    ("root@*", "Root@anywhere.example", True),
    ("root", "root", True),
    ("root", f"root@{HOST}", True),
    ("root", f"root@{HOST.upper()}", True),
    ("root", "root@other.example", False),
    ("*", f"cron@{HOST}", True),
    ("*", "cron@other.example", False),
    ("*@*", "x@y.example", True),
    ("a@bücher.example", "a@xn--bcher-kva.example", True),  # IDNA U-label == A-label
    ("a@xn--bcher-kva.example", "a@BÜCHER.example", True),
    ("*@bücher.example", "a@BÜCHER.EXAMPLE", True),
]


@pytest.mark.parametrize(("pattern", "address", "matches"), MATCH_CASES)
def test_pattern_matching(pattern: str, address: str, matches: bool) -> None:
    index = pat.PatternIndex([(pat.parse_pattern(pattern), "hit")], HOST)
    assert (index.match(address) is not None) is matches


def test_first_match_in_file_order_wins_across_pattern_kinds() -> None:
    patterns = ["*@b.example", "a@b.example", "a@*", "*@*"]
    index = pat.PatternIndex([(pat.parse_pattern(p), p) for p in patterns], HOST)
    assert index.match("a@b.example") == (0, "*@b.example")
    index = pat.PatternIndex([(pat.parse_pattern(p), p) for p in reversed(patterns)], HOST)
    assert index.match("a@b.example") == (0, "*@*")
    index = pat.PatternIndex([(pat.parse_pattern(p), p) for p in patterns[1:3]], HOST)
    assert index.match("a@c.example") == (1, "a@*")
    assert index.match("z@c.example") is None


@pytest.mark.parametrize(
    ("target", "matched", "result"),
    [
        ("*@domain1.com", "Contact-General@mailer.domain1.com", "Contact-General@domain1.com"),
        ("admin@example.com", "root@host.example", "admin@example.com"),
        ("admin", "root@x.example", f"admin@{HOST}"),
        ("*", "cron@x.example", f"cron@{HOST}"),
    ],
)
def test_apply_target_keeps_the_local_part_for_star(target: str, matched: str, result: str) -> None:
    assert pat.apply_target(target, matched, HOST) == result


PATTERN_PROBLEMS = [
    # (from_pattern, to_pattern, problem substring or None)
    ("contact@mailer.domain1.com", "contact@domain1.com", None),
    ("*@mailer.domain1.com", "*@domain1.com", None),
    ("root", "alerts@example.com", None),
    ("root@*", "admin@example.com", None),
    ("*@*", "catch@example.com", None),
    ("*@x.example", "*", None),
    ("a@bücher.example", "b@bücher.example", None),
    ('"a b"@x.example', "a@[192.0.2.1]", None),
    ("a@x.example", "b@*", "real domain"),
    ("a@x.example", "*@y.example", "no '*' local part"),
    ("a*@x.example", "b@y.example", "whole local part"),
    ("a@x.example", "b*@y.example", "whole local part"),
    ("a@x*.example", "b@y.example", "whole domain"),
    ("a@x.example", "b@y..example", "not a valid domain"),
    ("a@x.example", "b@-y.example", "not a valid domain"),
    ("a@x.example", "b c@y.example", "not a valid local part"),
    ("a@x.example", "b.@y.example", "not a valid local part"),
    ("a@x.example", f"{'l' * 65}@y.example", "64 octets"),
    ("a@x.example", "b@[300.1.1.1]", "address literal"),
    ("a@x.example", "b@", "empty"),
    ("a@x..example", "b@y.example", "from_pattern"),
]


@pytest.mark.parametrize(("source", "target", "problem"), PATTERN_PROBLEMS)
def test_pattern_problem(source: str, target: str, problem: str | None) -> None:
    found = pat.pattern_problem(source, target)
    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert problem in found


@pytest.mark.parametrize(
    ("address", "valid"),
    [
        ("a@b.example", True),
        ("first.last+tag@sub.b.example", True),
        ('"john doe"@b.example', True),
        ("jörg@bücher.example", True),
        ("a@[IPv6:2001:db8::1]", True),
        ("a@localhost", True),
        ("a", False),
        ("a@", False),
        ("@b.example", False),
        ("a..b@b.example", False),
        ("a@b_c.example", False),
        ("a b@b.example", False),
    ],
)
def test_address_validity(address: str, valid: bool) -> None:
    assert addr.is_valid_address(address) is valid


def test_qualify() -> None:
    assert addr.qualify("root", HOST) == f"root@{HOST}"
    assert addr.qualify("a@b.example", HOST) == "a@b.example"
    assert addr.qualify("", HOST) == ""


# --- rewriting ------------------------------------------------------------------------------

SEED_DOMAINS = (
    route(
        "domain1.com",
        3,
        smtp_server="smtp.gmail.com",
        username="mail-relay@domain1.com",
        relay_account="mail-relay@domain1.com",
    ),
    route(
        "mailer.domain1.com",
        4,
        smtp_server="localhost",
        relay_account="mail-relay@mailer.domain1.com",
    ),
)
ALIASES = ("general", "legal", "privacy", "support", "sales")
SEED_MAPPINGS = tuple(
    mapping(
        f"contact-{a}",
        f"contact-{a}@mailer.domain1.com",
        f"contact-{a}@domain1.com",
        10 + n,
        smtp_account="mail-relay@domain1.com",
        domain="domain1.com",
    )
    for n, a in enumerate(ALIASES)
)


def seed_config(**kw: Any) -> Config:
    return make_config(SEED_DOMAINS, SEED_MAPPINGS, default_domain="domain1.com", **kw)


@pytest.mark.parametrize("alias", ALIASES)
def test_forwarding_from_an_outside_sender(alias: str) -> None:
    plan = plan_delivery(seed_config(), "bob@example.org", [f"contact-{alias}@mailer.domain1.com"])
    assert plan.sender == "bob@example.org"
    [group] = plan.groups
    assert group.route.name == "domain1.com"
    assert group.recipients == (f"contact-{alias}@domain1.com",)
    # Gmail refuses a foreign From: envelope and From are the relay account, author in Reply-To.
    assert group.envelope_from == "mail-relay@domain1.com"
    assert group.header_from == "mail-relay@domain1.com"
    assert group.reply_to == "bob@example.org"
    assert plan.address_rewrites == {
        f"contact-{alias}@mailer.domain1.com": f"contact-{alias}@domain1.com"
    }
    [record] = plan.rewrites
    assert (record.role, record.mapping, record.rule) == (
        "recipient",
        f"contact-{alias}",
        f"test.conf:{10 + ALIASES.index(alias)}",
    )


def test_forwarding_keeps_from_on_a_relay_that_accepts_it() -> None:
    relay = route("relay.example", smtp_server="mx.relay.example", relay_account="fw@relay.example")
    config = make_config(
        [relay], [mapping("m", "*@in.example", "*@relay.example", domain="relay.example")]
    )
    [group] = plan_delivery(config, "bob@outside.example", ["ann@in.example"]).groups
    assert (group.envelope_from, group.header_from, group.reply_to) == (
        "fw@relay.example",
        None,
        None,
    )
    assert group.recipients == ("ann@relay.example",)


def test_masquerading_the_sender() -> None:
    config = make_config(
        [route("example.com", smtp_server="mail.example.com", relay_account="alerts@example.com")],
        [mapping("root", "root", "alerts@example.com", 7)],
    )
    plan = plan_delivery(config, f"root@{HOST}", ["admin@example.net"])
    assert plan.sender == "alerts@example.com"
    assert plan.original_sender == f"root@{HOST}"
    assert routing(plan) == [("example.com", "alerts@example.com", ("admin@example.net",))]
    assert plan.address_rewrites == {f"root@{HOST}": "alerts@example.com"}
    assert any("[mapping:root] (test.conf:7)" in s for s in plan.steps)


def test_rewrite_headers_false_rewrites_only_the_envelope() -> None:
    config = make_config(
        [route("*", relay_account=None)],
        [mapping("m", "a@x.example", "b@y.example", rewrite_headers=False)],
    )
    plan = plan_delivery(config, "s@x.example", ["a@x.example"])
    assert plan.groups[0].recipients == ("b@y.example",)
    assert plan.address_rewrites == {}
    assert plan.rewrites[0].headers is False


def test_rewriting_is_applied_once() -> None:
    config = make_config(
        [route("*")],
        [mapping("ab", "a@x.example", "b@x.example"), mapping("ba", "b@x.example", "a@x.example")],
    )
    plan = plan_delivery(config, "a@x.example", ["a@x.example", "b@x.example"])
    assert plan.sender == "b@x.example"
    assert plan.groups[0].recipients == ("b@x.example", "a@x.example")


def test_star_keeps_the_local_part_with_its_case() -> None:
    config = make_config([route("*")], [mapping("w", "*@Mailer.X.example", "*@x.example")])
    plan = plan_delivery(config, "s@x.example", ["Jane.Doe@MAILER.x.EXAMPLE"])
    assert plan.groups[0].recipients == ("Jane.Doe@x.example",)


def test_malformed_addresses_are_not_rewritten() -> None:
    config = make_config([route("*")], [mapping("w", "*@x.example", "*@y.example")])
    plan = plan_delivery(config, "s@x.example", ["a b@x.example"])
    assert plan.groups[0].recipients == ("a b@x.example",)


def test_duplicates_after_rewriting_are_delivered_once() -> None:
    config = make_config([route("*")], [mapping("m", "alias@x.example", "real@x.example")])
    plan = plan_delivery(
        config, "s@x.example", ["alias@x.example", "real@X.EXAMPLE", "alias@x.example"]
    )
    assert plan.groups[0].recipients == ("real@x.example",)


def test_an_invalid_mapping_in_a_built_config_is_a_config_error() -> None:
    config = make_config([route("*")], [mapping("bad", "a@x.example", "b@y..example", 9)])
    with pytest.raises(ConfigError) as info:
        plan_delivery(config, "s@x.example", ["a@x.example"])
    assert "test.conf:9" in info.value.problems[0]


def test_the_index_is_built_once_per_config() -> None:
    config = seed_config()
    first = rewrite._index(config)
    assert rewrite._index(config) is first
    assert rewrite._index(seed_config()) is not first


def test_a_plan_is_made_once_per_config_and_envelope() -> None:
    config = seed_config()
    first = plan_delivery(config, "app@x.example", ["a@y.example"])
    assert plan_delivery(config, "app@x.example", ("a@y.example",)) is first
    assert plan_delivery(config, "app@x.example", ["b@y.example"]) is not first
    assert plan_delivery(seed_config(), "app@x.example", ["a@y.example"]) == first
    # A reloaded configuration plans afresh.
    reloaded = plan_delivery(make_config([route("*")]), "app@x.example", ["a@y.example"])
    assert [g.route.name for g in reloaded.groups] == ["*"] != [g.route.name for g in first.groups]
    for n in range(rewrite.PLANS_KEPT + 1):
        plan_delivery(config, "app@x.example", [f"r{n}@y.example"])
    assert len(rewrite._index(config).plans) <= rewrite.PLANS_KEPT


def test_the_index_cache_keeps_only_recent_configs() -> None:
    configs = [make_config([route("*")]) for _ in range(3 * rewrite._INDEX_ENTRIES)]
    indexes = [rewrite._index(config) for config in configs]
    assert len(rewrite._INDEXES) == rewrite._INDEX_ENTRIES
    assert rewrite._index(configs[-1]) is indexes[-1]
    assert rewrite._index(configs[0]) is not indexes[0]


# --- routes ---------------------------------------------------------------------------------

ROUTE_CASES = [
    # (id, domains, mappings, default_domain, sender, recipient, expected route)
    (
        "mapping domain",
        [route("a.example"), route("b.example")],
        [mapping("m", "x@in.example", "x@out.example", domain="b.example")],
        None,
        "s@a.example",
        "x@in.example",
        "b.example",
    ),
    (
        "mapping smtp_account",
        [route("a.example"), route("b.example", relay_account="acct@b.example")],
        [mapping("m", "x@in.example", "x@out.example", smtp_account="acct@b.example")],
        None,
        "s@a.example",
        "x@in.example",
        "b.example",
    ),
    (
        "sender mapping beats recipient mapping",
        [route("a.example"), route("b.example")],
        [
            mapping("s", "s@in.example", "s@a.example", domain="a.example"),
            mapping("r", "x@in.example", "x@out.example", domain="b.example"),
        ],
        None,
        "s@in.example",
        "x@in.example",
        "a.example",
    ),
    (
        "sender domain section",
        [route("a.example"), route("b.example")],
        [],
        "b.example",
        "s@A.Example",
        "r@c.example",
        "a.example",
    ),
    (
        "default_domain",
        [route("a.example"), route("b.example"), route("*")],
        [],
        "b.example",
        "s@c.example",
        "r@c.example",
        "b.example",
    ),
    ("catch-all", [route("a.example"), route("*")], [], None, "s@c.example", "r@c.example", "*"),
    (
        "disabled mapping route falls through",
        [route("a.example"), route("b.example", enabled=False)],
        [mapping("m", "x@in.example", "x@out.example", domain="b.example")],
        None,
        "s@a.example",
        "x@in.example",
        "a.example",
    ),
    (
        "disabled sender-domain route falls through",
        [route("a.example", enabled=False), route("b.example")],
        [],
        "b.example",
        "s@a.example",
        "r@c.example",
        "b.example",
    ),
    (
        "IDNA route name",
        [route("bücher.example")],
        [],
        None,
        "s@xn--bcher-kva.example",
        "r@c.example",
        "bücher.example",
    ),
]


@pytest.mark.parametrize(
    ("domains", "mappings", "default", "sender", "recipient", "expected"),
    [case[1:] for case in ROUTE_CASES],
    ids=[case[0] for case in ROUTE_CASES],
)
def test_route_order(
    domains: list[DomainConfig],
    mappings: list[MappingConfig],
    default: str | None,
    sender: str,
    recipient: str,
    expected: str,
) -> None:
    config = make_config(domains, mappings, default_domain=default)
    plan = plan_delivery(config, sender, [recipient])
    assert [g.route.name for g in plan.groups] == [expected]


def test_disabled_routes_are_skipped_with_a_reason() -> None:
    config = make_config([route("a.example", 5, enabled=False), route("*", 6)])
    plan = plan_delivery(config, "s@a.example", ["r@c.example"])
    assert plan.groups[0].route.name == "*"
    assert any(
        "skipped [domain:a.example] (test.conf:5)" in s and "enabled = false" in s
        for s in plan.steps
    )


def test_no_route_is_a_config_error_naming_the_sender() -> None:
    config = make_config([route("a.example"), route("*", enabled=False)])
    with pytest.raises(ConfigError) as info:
        plan_delivery(config, "s@c.example", ["r@c.example"])
    assert info.value.exit_code == 78
    assert info.value.what == "s@c.example"
    assert "no [domain:c.example]" in info.value.why
    assert "[domain:*] disabled" in info.value.why


def test_no_route_is_fine_when_every_recipient_is_forwarded() -> None:
    config = make_config(
        [route("b.example")], [mapping("m", "x@in.example", "x@b.example", domain="b.example")]
    )
    assert routing(plan_delivery(config, "s@c.example", ["x@in.example"]))[0][0] == "b.example"


def test_recipients_needing_different_routes_are_split() -> None:
    config = make_config(
        [route("a.example"), route("b.example"), route("c.example")],
        [
            mapping("b", "*@to-b.example", "*@b.example", domain="b.example"),
            mapping("c", "*@to-c.example", "*@c.example", domain="c.example"),
        ],
    )
    plan = plan_delivery(
        config,
        "s@a.example",
        ["1@to-b.example", "2@other.example", "3@to-c.example", "4@to-b.example"],
    )
    assert routing(plan) == [
        ("b.example", "s@a.example", ("1@b.example", "4@b.example")),
        ("a.example", "s@a.example", ("2@other.example",)),
        ("c.example", "s@a.example", ("3@c.example",)),
    ]


# --- SPEC §4.5: who the route sends as ------------------------------------------------------

GMAIL: dict[str, Any] = dict(
    smtp_server="smtp.gmail.com", username="acct@d.example", relay_account="acct@d.example"
)
PLAIN: dict[str, Any] = dict(smtp_server="mail.d.example", relay_account="acct@d.example")

IDENTITY_CASES = [
    # (id, route kwargs, sender, users, (envelope_from, header_from, reply_to))
    ("the account itself", GMAIL, "ACCT@d.example", [], ("ACCT@d.example", None, None)),
    (
        "outsider via Gmail",
        GMAIL,
        "bob@o.example",
        [],
        ("acct@d.example",) * 2 + ("bob@o.example",),
    ),
    ("own domain via Gmail", GMAIL, "x@d.example", [], ("acct@d.example",) * 2 + ("x@d.example",)),
    ("outsider via plain relay", PLAIN, "bob@o.example", [], ("acct@d.example", None, None)),
    ("own domain via plain relay", PLAIN, "x@d.example", [], ("x@d.example", None, None)),
    ("route named after the sender", PLAIN, "x@d.example", [], ("x@d.example", None, None)),
    ("null sender", GMAIL, "", [], ("", None, None)),
    (
        "no relay_account",
        dict(smtp_server="smtp.gmail.com"),
        "bob@o.example",
        [],
        ("bob@o.example", None, None),
    ),
    (
        "user section names the route",
        GMAIL,
        "bob@o.example",
        [user("bob@o.example", domain="d.example")],
        ("bob@o.example", None, None),
    ),
    (
        "SES",
        dict(smtp_server="email-smtp.eu-west-1.amazonaws.com", relay_account="a@d.example"),
        "b@o.example",
        [],
        ("a@d.example", "a@d.example", "b@o.example"),
    ),
]


@pytest.mark.parametrize(
    ("route_kw", "sender", "users", "expected"),
    [case[1:] for case in IDENTITY_CASES],
    ids=[case[0] for case in IDENTITY_CASES],
)
def test_who_the_route_sends_as(
    route_kw: dict[str, Any], sender: str, users: list[UserConfig], expected: tuple[str, ...]
) -> None:
    config = make_config([route("d.example", **route_kw)], users=users, default_domain="d.example")
    [group] = plan_delivery(config, sender, ["r@r.example"]).groups
    assert (group.envelope_from, group.header_from, group.reply_to) == expected


def test_sender_mapping_naming_the_route_may_send_as_the_masquerade() -> None:
    config = make_config(
        [route("d.example", **GMAIL)],
        [mapping("root", "root", "alerts@other.example", domain="d.example")],
    )
    [group] = plan_delivery(config, f"root@{HOST}", ["r@r.example"]).groups
    assert (group.envelope_from, group.header_from) == ("alerts@other.example", None)


def test_recipient_mapping_smtp_account_is_the_forwarding_envelope_sender() -> None:
    gmail = dict(GMAIL, username="second@d.example")
    config = make_config(
        [route("d.example", **gmail)],
        [mapping("m", "x@in.example", "x@d.example", smtp_account="second@d.example")],
    )
    [group] = plan_delivery(config, "bob@o.example", ["x@in.example"]).groups
    assert group.envelope_from == "second@d.example"


# --- policy ---------------------------------------------------------------------------------


def policy_config(*users: UserConfig, **kw: Any) -> Config:
    return make_config([route("*", relay_account=None)], users=users, **kw)


SENDER_REFUSALS = [
    ("disabled", [user("s@x.example", 4, enabled=False)], {}, "is disabled", "test.conf:4"),
    (
        "can_send_from",
        [user("s@x.example", 5, can_send_from=False)],
        {},
        "can_send_from = false",
        "test.conf:5",
    ),
    ("pattern section", [user("*@x.example", 6, enabled=False)], {}, "disabled", "test.conf:6"),
    ("any-domain section", [user("s@*", 7, enabled=False)], {}, "disabled", "test.conf:7"),
    (
        "users_required",
        [user("t@x.example")],
        {"users_required": True},
        "users_required",
        "test.conf:1",
    ),
]


@pytest.mark.parametrize(
    ("users", "global_kw", "reason", "rule"),
    [case[1:] for case in SENDER_REFUSALS],
    ids=[case[0] for case in SENDER_REFUSALS],
)
def test_sender_refusals(
    users: list[UserConfig], global_kw: dict[str, Any], reason: str, rule: str
) -> None:
    config = policy_config(*users, **global_kw)
    with pytest.raises(NoPermError) as info:
        plan_delivery(config, "s@x.example", ["r@y.example"])
    assert info.value.exit_code == 77
    assert info.value.what == "s@x.example"
    assert reason in info.value.why
    assert rule in info.value.why
    plan = explain_delivery(config, "s@x.example", ["r@y.example"])
    assert plan.groups == ()
    assert plan.sender_refusal is not None
    assert plan.sender_refusal.rule == rule


def test_first_matching_user_section_wins() -> None:
    config = policy_config(user("s@x.example", 2), user("*@x.example", 3, enabled=False))
    assert plan_delivery(config, "s@x.example", ["r@y.example"]).sender_rule == "test.conf:2"
    with pytest.raises(NoPermError):
        plan_delivery(config, "t@x.example", ["r@y.example"])


def test_users_required_with_a_section_passes() -> None:
    config = policy_config(user("root"), users_required=True)
    assert plan_delivery(config, f"root@{HOST}", ["r@y.example"]).groups


def test_null_sender_is_checked_as_mailer_daemon() -> None:
    with pytest.raises(NoPermError):
        plan_delivery(policy_config(users_required=True), "", ["r@y.example"])
    config = policy_config(user("MAILER-DAEMON"), users_required=True)
    assert plan_delivery(config, "", ["r@y.example"]).groups[0].envelope_from == ""


def test_masqueraded_sender_section_applies_when_the_given_one_has_none() -> None:
    config = make_config(
        [route("*")],
        [mapping("root", "root", "alerts@x.example")],
        [user("alerts@x.example", 8, can_send_from=False)],
    )
    with pytest.raises(NoPermError, match=re.escape("test.conf:8")):
        plan_delivery(config, f"root@{HOST}", ["r@y.example"])


RECIPIENT_POLICY = [
    # (id, users, mappings, recipients, refused addresses)
    (
        "allowed_domains",
        [user("s@x.example", allowed_domains=("ok.example",))],
        [],
        ["a@ok.example", "b@OK.example", "c@bad.example"],
        ["c@bad.example"],
    ),
    (
        "allowed_domains sees the rewritten address",
        [user("s@x.example", allowed_domains=("ok.example",))],
        [mapping("fw", "*@alias.example", "*@ok.example")],
        ["a@alias.example"],
        [],
    ),
    (
        "allowed_recipients patterns",
        [user("s@x.example", allowed_recipients=("boss@ok.example", "*@team.example", "root"))],
        [],
        ["boss@ok.example", "x@team.example", f"root@{HOST}", "y@ok.example"],
        ["y@ok.example"],
    ),
    (
        "mapping allowed_recipients",
        [],
        [mapping("m", "s@x.example", "s@x.example", allowed_recipients=("*@ok.example",))],
        ["a@ok.example", "b@no.example"],
        ["b@no.example"],
    ),
    (
        "can_send_to",
        [user("nomail@y.example", can_send_to=False)],
        [],
        ["nomail@y.example", "a@y.example"],
        ["nomail@y.example"],
    ),
    (
        "template users expanded per type",
        [
            user(f"alerts-{t}@y.example", can_send_to=False, template_address=True)
            for t in ("cron", "disk")
        ],
        [],
        ["alerts-cron@y.example", "alerts-disk@y.example", "alerts-mail@y.example"],
        ["alerts-cron@y.example", "alerts-disk@y.example"],
    ),
]


@pytest.mark.parametrize(
    ("users", "mappings", "recipients", "refused"),
    [case[1:] for case in RECIPIENT_POLICY],
    ids=[case[0] for case in RECIPIENT_POLICY],
)
def test_recipient_policy(
    users: list[UserConfig],
    mappings: list[MappingConfig],
    recipients: list[str],
    refused: list[str],
) -> None:
    config = make_config([route("*")], mappings, users)
    plan = plan_delivery(config, "s@x.example", recipients)
    assert [r.address for r in plan.refused] == refused
    assert all(r.rule.startswith("test.conf:") for r in plan.refused)
    delivered = [a for g in plan.groups for a in g.recipients]
    assert len(delivered) == len(recipients) - len(refused)


def test_every_recipient_refused_is_a_noperm_error_naming_them() -> None:
    config = policy_config(user("s@x.example", 3, allowed_domains=("ok.example",)))
    with pytest.raises(NoPermError) as info:
        plan_delivery(config, "s@x.example", ["a@bad.example", "b@bad.example"])
    assert "a@bad.example" in info.value.why
    assert "b@bad.example" in info.value.why
    assert "test.conf:3" in info.value.why


# --- through the loader --------------------------------------------------------------------


def write_tree(tmp: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return tmp / "ssmtp-mailer.conf"


def test_loaded_tree_with_templates_and_bare_names(tmp_path: Path) -> None:
    main = write_tree(
        tmp_path,
        {
            "ssmtp-mailer.conf": """\
                [global]
                default_hostname = srv.example
                default_from = root@srv.example
                default_domain = relay
                spool_dir = spool
            """,
            "domains/relay.conf": """\
                [domain:relay]
                smtp_server = smtp.gmail.com
                username = server@example.com
                relay_account = server@example.com
            """,
            "mappings/local.conf": """\
                [mapping:root]
                from_pattern = root
                to_pattern = admin@example.com
                domain = relay
            """,
            "users/alerts.conf": """\
                [user:alerts-{type}@example.com]
                template_address = true
                allowed_types = cron, backup
                allowed_domains = example.com
            """,
        },
    )
    config = load_config(str(main))
    plan = plan_delivery(config, "cron@srv.example", ["root@srv.example"])
    assert routing(plan) == [("relay", "server@example.com", ("admin@example.com",))]
    assert plan.groups[0].header_from == "server@example.com"
    assert plan.groups[0].reply_to == "cron@srv.example"
    plan = plan_delivery(config, "alerts-backup@example.com", ["a@example.com", "b@other.example"])
    assert [r.address for r in plan.refused] == ["b@other.example"]
    assert plan.refused[0].rule == f"{tmp_path / 'users' / 'alerts.conf'}:1"
    with pytest.raises(NoPermError):
        plan_delivery(config, "alerts-cron@example.com", ["b@other.example"])
    # The masqueraded root is sendable on this route only because its mapping names it.
    plan = plan_delivery(config, "root@srv.example", ["a@example.com"])
    assert routing(plan) == [("relay", "admin@example.com", ("a@example.com",))]


# --- properties ----------------------------------------------------------------------------

LOCALS = ["root", "Root", "alice", "bob", "x.y", '"q r"', "jörg"]
DOMAINS = ["a.example", "B.example", "mailer.a.example", "bücher.example", "xn--bcher-kva.example"]
ROUTE_NAMES = ["a.example", "b.example", "bücher.example", "relay", "*"]

addresses = st.builds(lambda lo, d: f"{lo}@{d}", st.sampled_from(LOCALS), st.sampled_from(DOMAINS))
local_patterns = st.sampled_from([*LOCALS, "*"])
domain_patterns = st.sampled_from([*DOMAINS, "*", None])
mostly_true = st.sampled_from([True, True, True, False])


@st.composite
def source_patterns(draw: st.DrawFn) -> str:
    local, domain = draw(local_patterns), draw(domain_patterns)
    return local if domain is None else f"{local}@{domain}"


@st.composite
def mappings_st(draw: st.DrawFn, n: int) -> MappingConfig:
    source = draw(source_patterns())
    keep = source.split("@")[0] == "*" and draw(st.booleans())
    local = "*" if keep else draw(st.sampled_from(LOCALS))
    target = f"{local}@{draw(st.sampled_from(DOMAINS))}"
    return mapping(
        f"m{n}",
        source,
        target,
        n,
        domain=draw(st.sampled_from([None, *ROUTE_NAMES])),
        smtp_account=draw(st.sampled_from([None, "acct@a.example"])),
        rewrite_headers=draw(st.booleans()),
        allowed_recipients=draw(st.sampled_from([(), ("*@a.example",), ("bob@*",)])),
    )


@st.composite
def configs(draw: st.DrawFn) -> Config:
    names = draw(st.lists(st.sampled_from(ROUTE_NAMES), unique=True, max_size=5))
    domains = [
        route(
            name,
            n,
            enabled=draw(mostly_true),
            smtp_server=draw(st.sampled_from(["smtp.gmail.com", "relay.example"])),
            relay_account=draw(st.sampled_from([None, "acct@a.example", f"fw@{DOMAINS[n % 5]}"])),
        )
        for n, name in enumerate(names)
    ]
    maps = [draw(mappings_st(100 + n)) for n in range(draw(st.integers(0, 6)))]
    maps = [m for m in maps if m.domain is None or m.domain in names]
    users = [
        user(
            draw(source_patterns()),
            200 + n,
            enabled=draw(mostly_true),
            can_send_from=draw(mostly_true),
            can_send_to=draw(mostly_true),
            domain=draw(st.sampled_from([None, *names])),
            allowed_domains=draw(st.sampled_from([(), ("a.example",), ("bücher.example",)])),
        )
        for n in range(draw(st.integers(0, 3)))
    ]
    default = draw(st.sampled_from([None, *names]))
    return make_config(
        domains,
        maps,
        users,
        default_domain=default,
        users_required=not draw(mostly_true),
    )


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(configs(), st.one_of(st.just(""), addresses), st.lists(addresses, min_size=1, max_size=6))
def test_plans_are_deterministic_complete_and_well_formed(
    config: Config, sender: str, recipients: list[str]
) -> None:
    try:
        plan = explain_delivery(config, sender, recipients)
    except ConfigError as exc:
        assert "no route" in exc.why
        event("no route")
        return
    # Deterministic: again, and for an equal but separately built configuration.
    assert explain_delivery(config, sender, recipients) == plan
    assert explain_delivery(config._replace(), sender, recipients) == plan
    if plan.sender_refusal is not None:
        event("sender refused")
        assert plan.groups == ()
        return
    event(f"planned: {len(plan.groups)} groups, {len(plan.refused)} refused")
    finals = {r.original: r.final for r in plan.rewrites if r.role == "recipient"}
    refused = {r.address for r in plan.refused}
    carried = [addr.address_key(a) for g in plan.groups for a in g.recipients]
    assert len(carried) == len(set(carried)), "an address is in two transactions"
    for recipient in recipients:
        if recipient in refused:
            continue
        assert addr.address_key(finals.get(recipient, recipient)) in carried
    for group in plan.groups:
        assert group.route.enabled
        assert group.recipients
        for address in (*group.recipients, group.header_from, group.reply_to):
            assert address is None or addr.is_valid_address(address)
        assert group.envelope_from == "" or addr.is_valid_address(group.envelope_from)
    for new in plan.address_rewrites.values():
        assert addr.is_valid_address(new)
    assert plan.sender == "" or addr.is_valid_address(plan.sender)
