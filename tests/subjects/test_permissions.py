"""Permissions: construction, NATS mapping, and both checks against brute-force references.

As in test_match, patterns use the literal tokens {a, b, c} and subjects are enumerated over
{a, b, c, z} (``z`` = "any other token") up to one token longer than the longest pattern, which
makes the enumeration exact: the subscribe check is compared in *both* directions.
"""

from __future__ import annotations

import itertools

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from subjects import InvalidSubject, Permissions, matches

LITERALS = ["a", "b", "c"]
ALPHABET = [*LITERALS, "z"]
MAX_TOKENS = 3

ALL_SUBJECTS = [
    ".".join(tokens) for n in range(1, MAX_TOKENS + 2) for tokens in itertools.product(ALPHABET, repeat=n)
]

patterns = st.builds(
    lambda body, full: ".".join(body + ([">"] if full else [])),
    st.lists(st.sampled_from([*LITERALS, "*"]), max_size=MAX_TOKENS - 1),
    st.booleans(),
).filter(bool)
pattern_lists = st.lists(patterns, max_size=3).map(tuple)
allow_lists = st.none() | pattern_lists
permissions = st.builds(
    Permissions,
    publish_allow=allow_lists,
    publish_deny=pattern_lists,
    subscribe_allow=allow_lists,
    subscribe_deny=pattern_lists,
)


def reference_permits(allow: tuple[str, ...] | None, deny: tuple[str, ...], subject: str) -> bool:
    allowed = allow is None or any(matches(p, subject) for p in allow)
    return allowed and not any(matches(p, subject) for p in deny)


def nats_permits(side: dict[str, list[str]], subject: str) -> bool:
    """nats-server's reading of one side of to_nats(): an empty allow list means "everything"."""
    allowed = not side["allow"] or any(matches(p, subject) for p in side["allow"])
    return allowed and not any(matches(p, subject) for p in side["deny"])


@settings(max_examples=150, deadline=None)
@given(permissions, st.sampled_from(ALL_SUBJECTS))
def test_can_publish_matches_reference(perms: Permissions, subject: str) -> None:
    assert perms.can_publish(subject) == reference_permits(perms.publish_allow, perms.publish_deny, subject)


@settings(max_examples=150, deadline=None)
@given(permissions, patterns)
def test_can_subscribe_is_exact(perms: Permissions, pattern: str) -> None:
    """Allowed iff every subject the pattern matches may be received (both directions)."""
    reachable = [s for s in ALL_SUBJECTS if matches(pattern, s)]
    expected = all(reference_permits(perms.subscribe_allow, perms.subscribe_deny, s) for s in reachable)
    assert perms.can_subscribe(pattern) == expected


@settings(max_examples=150, deadline=None)
@given(permissions)
def test_to_nats_means_the_same_to_nats_server(perms: Permissions) -> None:
    nats = perms.to_nats()
    assert set(nats) == {"pub", "sub"}
    for side in nats.values():
        assert set(side) == {"allow", "deny"}
    for subject in ALL_SUBJECTS:
        assert nats_permits(nats["pub"], subject) == perms.can_publish(subject)
        assert nats_permits(nats["sub"], subject) == perms.can_subscribe(subject)


def test_nothing_allowed_is_emitted_as_explicit_deny() -> None:
    nothing = Permissions()
    assert nothing == Permissions.deny_all()
    assert nothing.to_nats() == {"pub": {"allow": [], "deny": [">"]}, "sub": {"allow": [], "deny": [">"]}}
    assert not nothing.can_publish("a") and not nothing.can_subscribe("a")
    # deny lists are subsumed, never let an empty allow through alone
    assert Permissions(publish_deny=("a",)).to_nats()["pub"] == {"allow": [], "deny": [">"]}


def test_unrestricted_is_explicit() -> None:
    everything = Permissions.allow_all()
    assert everything.publish_allow is None and everything.subscribe_allow is None
    assert everything.to_nats() == {"pub": {"allow": [">"], "deny": []}, "sub": {"allow": [">"], "deny": []}}
    assert everything.can_publish("any.thing") and everything.can_subscribe(">")
    limited = Permissions(publish_allow=None, publish_deny=("secret.>",), subscribe_allow=None)
    assert limited.to_nats()["pub"] == {"allow": [">"], "deny": ["secret.>"]}
    assert not limited.can_publish("secret.x") and limited.can_publish("open.x")


def test_subscribe_examples() -> None:
    perms = Permissions(subscribe_allow=("a.*", "a.*.>", "b.>"), subscribe_deny=("b.secret",))
    assert perms.can_subscribe("a.>")  # covered by the union, by no single allow pattern
    assert perms.can_subscribe("a.x") and perms.can_subscribe("a.x.y.z")
    assert not perms.can_subscribe("a")
    assert not perms.can_subscribe(">")
    assert perms.can_subscribe("b.open")
    assert not perms.can_subscribe("b.secret")
    # nats-server would accept these and filter b.secret at delivery; conat refuses up front
    assert not perms.can_subscribe("b.*")
    assert not perms.can_subscribe("b.>")
    assert perms.can_subscribe("b.*.x")


def test_auth_policy_example() -> None:
    project = "project-6f1c2b9e-3a4d-4e5f-8a7b-9c0d1e2f3a4b"
    perms = Permissions(
        publish_allow=(f"*.{project}", f"*.{project}.>"),
        subscribe_allow=(f"*.{project}", f"*.{project}.>", f"_INBOX.{project}.>"),
    )
    assert perms.can_publish(f"fs.{project}")
    assert perms.can_publish(f"watch.{project}.x")
    assert not perms.can_publish(f"fs.{project[:-1]}c")
    assert not perms.can_publish(f"a.b.{project}")
    assert perms.can_subscribe(f"_INBOX.{project}.*")
    assert not perms.can_subscribe("_INBOX.>")
    assert perms.can_subscribe(f"*.{project}.>")


def test_checks_never_raise_on_invalid_input() -> None:
    perms = Permissions.allow_all()
    for bad in ["", "a..b", "a b", "a.>.b"]:
        assert not perms.can_publish(bad)
        assert not perms.can_subscribe(bad)
    assert not perms.can_publish("a.*")  # a pattern is not publishable
    assert not perms.can_publish(None)  # type: ignore[arg-type]
    assert perms.can_subscribe("a.*")


def test_decisions_stay_right_beyond_the_cache() -> None:
    perms = Permissions(publish_allow=("a.*",), publish_deny=("a.7",))
    for _ in range(2):
        for i in range(3000):
            assert perms.can_publish(f"a.{i}") == (i != 7)
            assert not perms.can_publish(f"b.{i}")


def test_construction_normalizes_and_validates() -> None:
    perms = Permissions(publish_allow=["a", "b.>"], subscribe_deny=iter(["x"]))  # type: ignore[arg-type]
    assert perms.publish_allow == ("a", "b.>") and perms.subscribe_deny == ("x",)
    with pytest.raises(InvalidSubject) as info:
        Permissions(subscribe_allow=("ok", "a..b"))
    assert (info.value.field, info.value.reason, info.value.subject) == (
        "subscribe_allow",
        "empty-token",
        "a..b",
    )
    assert "subscribe_allow" in str(info.value)
    with pytest.raises(TypeError, match="publish_deny"):
        Permissions(publish_deny="a.b")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="publish_deny"):
        Permissions(publish_deny=None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="publish_allow"):
        Permissions(publish_allow=5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Permissions(("a",))  # type: ignore[call-arg]  # keyword-only: four tuples are easy to mix up


def test_frozen_hashable_and_msgspec_round_trip() -> None:
    perms = Permissions(publish_allow=None, publish_deny=("x",), subscribe_allow=("a.>",))
    with pytest.raises(AttributeError):
        perms.publish_allow = ()  # type: ignore[misc]
    assert perms == Permissions(publish_allow=None, publish_deny=("x",), subscribe_allow=("a.>",))
    assert len({perms, Permissions(publish_allow=None, publish_deny=("x",), subscribe_allow=("a.>",))}) == 1
    for codec in (msgspec.json, msgspec.msgpack):
        encoded = codec.encode(perms)
        decoded = codec.decode(encoded, type=Permissions)
        assert decoded == perms
        assert decoded.publish_allow is None and decoded.can_publish("anything")
        assert decoded.subscribe_allow == ("a.>",) and not decoded.can_subscribe("b")
    assert msgspec.json.decode(msgspec.json.encode(perms)) == {
        "publish_allow": None,
        "publish_deny": ["x"],
        "subscribe_allow": ["a.>"],
        "subscribe_deny": [],
    }
    with pytest.raises(msgspec.ValidationError, match="publish_deny"):
        msgspec.json.decode(b'{"publish_deny": ["a..b"]}', type=Permissions)
    replaced = msgspec.structs.replace(perms, publish_deny=())
    assert replaced.can_publish("x") and not perms.can_publish("x")
