"""The run-time stand-ins of ssmtp_mailer.typed behave as typing's NamedTuple and Generic.

The type checker only ever reads typing's own, so these tests are what checks the classes
every sendmail run actually builds.
"""

from __future__ import annotations

import copy
import pickle
import typing

import pytest

from ssmtp_mailer.config.model import DomainConfig, HostPort, Location
from ssmtp_mailer.typed import Generic, NamedTuple, TypeVar

T = TypeVar("T")


class Point(NamedTuple):
    """A point."""

    x: int
    label: str = "origin"
    tags: tuple[str, ...] = ()

    def shown(self) -> str:
        return f"{self.label}@{self.x}"

    def __str__(self) -> str:
        return self.shown()


class TypingPoint(typing.NamedTuple):
    x: int
    label: str = "origin"
    tags: tuple[str, ...] = ()


class Child(NamedTuple):
    name: str

    def __repr__(self) -> str:
        # Zero-argument super() needs the __class__ cell set; above the record is the tuple.
        return "Child" + super().__repr__()


def test_named_tuple_matches_typing() -> None:
    ours, theirs = Point(3, tags=("a",)), TypingPoint(3, tags=("a",))
    assert ours == theirs == (3, "origin", ("a",))
    assert Point._fields == TypingPoint._fields == ("x", "label", "tags")
    assert Point._field_defaults == TypingPoint._field_defaults
    assert repr(ours) == repr(theirs).replace("TypingPoint", "Point")
    assert ours._asdict() == theirs._asdict()
    assert ours._replace(x=4) == theirs._replace(x=4) == (4, "origin", ("a",))
    assert hash(ours) == hash(theirs)
    assert isinstance(ours, tuple) and type(ours._replace(x=1)) is Point
    assert (Point.__name__, Point.__qualname__, Point.__module__) == ("Point", "Point", __name__)
    assert Point.__doc__ == "A point."


def test_named_tuple_keeps_the_class_body() -> None:
    p = Point(1, "here")
    assert (p.shown(), str(p)) == ("here@1", "here@1")
    assert repr(Child("c")) == "Child('c',)"


def test_named_tuple_is_immutable_and_checks_its_arguments() -> None:
    p = Point(1)
    with pytest.raises(AttributeError):
        p.x = 2  # type: ignore[misc]
    with pytest.raises(AttributeError):
        p.other = 1  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        Point()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Point(1, colour="red")  # type: ignore[call-arg]
    with pytest.raises((ValueError, TypeError)):  # TypeError from Python 3.13 on
        p._replace(colour="red")


def test_a_field_without_default_after_one_with_is_refused() -> None:
    with pytest.raises(TypeError, match="Bad: field y has no default"):

        class Bad(NamedTuple):  # type: ignore[misc]
            x: int = 0
            y: int


def test_named_tuples_copy_and_pickle() -> None:
    p = Point(2, "there", ("t",))
    assert pickle.loads(pickle.dumps(p)) == p
    assert copy.copy(p) == p and copy.deepcopy(p) == p
    location = Location("/etc/ssmtp-mailer/ssmtp-mailer.conf", 12)
    assert pickle.loads(pickle.dumps(location)) == location
    assert str(location) == "/etc/ssmtp-mailer/ssmtp-mailer.conf:12"
    assert str(HostPort("::1", 25)) == "[::1]:25" and HostPort("relay").port is None


def test_configuration_records_keep_their_own_methods() -> None:
    fields = {name: None for name in DomainConfig._fields}
    domain = DomainConfig(**{**fields, "password": "s3cret", "smtp_server": "relay"})
    assert "s3cret" not in repr(domain) and "relay" in repr(domain)


class Box(Generic[T]):
    def __init__(self, item: T) -> None:
        self.item = item


def test_generic_subscripting_gives_the_class() -> None:
    assert Box[int] is Box
    assert Box("x").item == "x"
