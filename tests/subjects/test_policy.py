"""The auth policy: the permission matrix, the exact grants, properties of every grant, bad input."""

from __future__ import annotations

import pickle
import uuid

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from subjects import (
    DEFAULT_RESPONSES,
    INTEREST_PROBE,
    MASTER_BUS,
    Grant,
    InvalidBus,
    InvalidSubject,
    Permissions,
    Principal,
    ResponsePermission,
    Scope,
    bus_server_name,
    grant,
    inbox_pattern,
    inbox_prefix,
    matches,
    parse_bus,
    server_bus,
)

P = "11111111-1111-4111-8111-111111111111"  # a project running on host H
Q = "22222222-2222-4222-8222-222222222222"  # another project on host H
H = "33333333-3333-4333-8333-333333333333"  # a host
X = "44444444-4444-4444-8444-444444444444"  # another host
A = "55555555-5555-4555-8555-555555555555"  # account collaborating on P
B = "66666666-6666-4666-8666-666666666666"  # account collaborating on Q only
O = "77777777-7777-4777-8777-777777777777"  # account owning host H, collaborating on nothing
UPPER = "ABCDEF01-2345-4678-9ABC-DEF012345678"  # a UUID, but not in canonical (lower-case) form

# Column order of the matrix below.
WHO: dict[str, tuple[str, Scope]] = {
    "A": (f"account-{A}", Scope(projects=(P,))),
    "B": (f"account-{B}", Scope(projects=(Q,))),
    "P": (f"project-{P}", Scope()),
    "O": (f"account-{O}", Scope(hosts=(H,))),
    "H": (f"host-{H}", Scope()),
    "X": (f"host-{X}", Scope()),
    "U": ("hub", Scope()),
}
BUSES = {"master": MASTER_BUS, "H": f"host-{H}"}
IDS = {"P": P, "Q": Q, "H": H, "X": X, "A": A, "B": B}

# bus, op, subject (str.format with IDS), expected for          A B P O H X U
MATRIX: list[tuple[str, str, str, str]] = [
    # project P's services on P's host bus
    ("H", "pub", "fs.project-{P}", "1 0 1 0 1 0 1"),
    ("H", "sub", "fs.project-{P}", "1 0 1 0 1 0 1"),
    ("H", "pub", "persist.project-{P}.x", "1 0 1 0 1 0 1"),
    ("H", "sub", "persist.project-{P}.>", "1 0 1 0 1 0 1"),
    ("H", "pub", "watch.project-{P}.t", "1 0 1 0 1 0 1"),
    ("H", "pub", "project.{P}.x", "1 0 1 0 1 0 1"),
    ("H", "sub", "project.{P}.>", "1 0 1 0 1 0 1"),
    # a leading * also spans $SYS.project-P (and _INBOX.project-P): conat refuses any subscription
    # overlapping a deny, so services subscribe with a literal first token
    ("H", "sub", "*.project-{P}", "0 0 0 0 0 0 0"),
    ("H", "sub", "*.project-{P}.>", "0 0 0 0 0 0 0"),
    # persist.*-style subscriptions span every project
    ("H", "sub", "persist.*.>", "0 0 0 0 1 0 1"),
    ("H", "sub", "persist.>", "0 0 0 0 1 0 1"),
    ("H", "sub", "fs.*", "0 0 0 0 1 0 1"),
    # another project's subjects
    ("H", "pub", "fs.project-{Q}", "0 1 0 0 1 0 1"),
    ("H", "pub", "persist.project-{Q}.x", "0 1 0 0 1 0 1"),
    ("H", "sub", "persist.project-{Q}.>", "0 1 0 0 1 0 1"),
    ("H", "pub", "project.{Q}.x", "0 1 0 0 1 0 1"),
    # inboxes: subscribe only one's own (H on its own bus and the hub may subscribe to all)
    ("H", "sub", "_INBOX.account-{A}.>", "1 0 0 0 1 0 1"),
    ("H", "sub", "_INBOX.account-{A}.n1.*", "1 0 0 0 1 0 1"),
    ("H", "sub", "_INBOX.account-{B}.>", "0 1 0 0 1 0 1"),
    ("H", "sub", "_INBOX.project-{P}.>", "0 0 1 0 1 0 1"),
    ("H", "sub", "_INBOX.project-{P}", "0 0 1 0 1 0 1"),
    ("H", "sub", "_INBOX.host-{X}.>", "0 0 0 0 1 1 1"),
    ("H", "sub", "_INBOX.>", "0 0 0 0 1 0 1"),
    ("H", "sub", "_INBOX.*.>", "0 0 0 0 1 0 1"),
    # nobody publishes into an inbox (replies go through response permissions)
    ("H", "pub", "_INBOX.account-{A}.n1.1", "0 0 0 0 0 0 0"),
    ("H", "pub", "_INBOX.project-{P}.n1.1", "0 0 0 0 0 0 0"),
    # $SYS is off limits, and so is anything overlapping it
    ("H", "pub", "$SYS.REQ.SERVER.x.KICK", "0 0 0 0 0 0 0"),
    ("H", "sub", "$SYS.>", "0 0 0 0 0 0 0"),
    ("H", "sub", ">", "0 0 0 0 0 0 0"),
    ("H", "pub", "public.x", "1 1 1 1 1 1 1"),
    ("H", "sub", "public.>", "1 1 1 1 1 1 1"),
    # boot logs
    ("H", "pub", "bootlog.project.{P}", "1 0 0 0 1 0 1"),
    ("H", "sub", "bootlog.project.{P}", "1 0 0 0 1 0 1"),
    ("H", "sub", "bootlog.project.{Q}", "0 1 0 0 1 0 1"),
    ("H", "pub", "bootlog.host.{H}", "0 0 0 1 1 0 1"),
    ("H", "sub", "bootlog.host.{H}", "0 0 0 1 1 0 1"),
    ("H", "sub", "bootlog.host.{X}", "0 0 0 0 1 0 1"),
    ("H", "sub", "bootlog.>", "0 0 0 0 1 0 1"),
    # services of the host itself, discovery
    ("H", "sub", "runner.host-{H}", "0 0 0 0 1 0 1"),
    ("H", "sub", "$SRV.>", "0 0 0 0 1 0 1"),
    # master bus
    ("master", "pub", "master.account-{A}.api", "1 0 0 0 0 0 1"),
    ("master", "pub", "master.account-{B}.api", "0 1 0 0 0 0 1"),
    ("master", "sub", "master.account-{A}.api", "0 0 0 0 0 0 1"),
    ("master", "pub", "master.host-{H}.api", "0 0 0 0 1 0 1"),
    ("master", "pub", "bootlog.host.{H}", "0 0 0 0 1 0 1"),
    ("master", "sub", "runner.host-{H}", "0 0 0 0 1 0 1"),
    ("master", "sub", "runner.host-{X}", "0 0 0 0 0 1 1"),
    ("master", "sub", "runner.*", "0 0 0 0 0 0 1"),
    ("master", "pub", "runner.host-{H}", "0 0 0 0 0 0 1"),
    ("master", "pub", "fs.project-{P}", "0 0 0 0 0 0 1"),
    ("master", "pub", "bootlog.project.{P}", "0 0 0 0 0 0 1"),
    ("master", "sub", "_INBOX.account-{A}.>", "1 0 0 0 0 0 1"),
    ("master", "sub", "_INBOX.project-{P}.>", "0 0 1 0 0 0 1"),
    ("master", "sub", "_INBOX.host-{H}.>", "0 0 0 0 1 0 1"),
    ("master", "sub", "_INBOX.hub.>", "0 0 0 0 0 0 1"),
    ("master", "sub", "_INBOX.>", "0 0 0 0 0 0 1"),
    ("master", "pub", "_INBOX.hub.n1.1", "0 0 0 0 0 0 0"),
    ("master", "pub", "$SYS.REQ.SERVER.x.KICK", "0 0 0 0 0 0 0"),
    ("master", "sub", "$SYS.>", "0 0 0 0 0 0 0"),
    ("master", "pub", "public.x", "1 1 1 1 1 1 1"),
    ("master", "sub", "public.>", "1 1 1 1 1 1 1"),
]


def _check(g: Grant, op: str, subject: str) -> bool:
    return g.permissions.can_publish(subject) if op == "pub" else g.permissions.can_subscribe(subject)


@pytest.mark.parametrize(
    ("bus", "op", "subject", "expected"), MATRIX, ids=[f"{r[0]}-{r[1]}-{r[2]}" for r in MATRIX]
)
def test_permission_matrix(bus: str, op: str, subject: str, expected: str) -> None:
    subject = subject.format(**IDS)
    got = " ".join(
        "1" if _check(grant(principal, scope, BUSES[bus]), op, subject) else "0"
        for principal, scope in WHO.values()
    )
    assert got == expected, f"{op} {subject} on {bus}: got {got} for {' '.join(WHO)}"


def _nats_permits(side: dict[str, list[str]], subject: str) -> bool:
    """nats-server's reading of one side: an empty allow list means "everything"."""
    allowed = not side["allow"] or any(matches(p, subject) for p in side["allow"])
    return allowed and not any(matches(p, subject) for p in side["deny"])


def test_matrix_publish_rows_mean_the_same_to_nats_server() -> None:
    for bus, op, template, expected in MATRIX:
        if op != "pub":
            continue
        subject = template.format(**IDS)
        for (principal, scope), want in zip(WHO.values(), expected.split(), strict=True):
            nats = grant(principal, scope, BUSES[bus]).permissions.to_nats()
            assert _nats_permits(nats["pub"], subject) == (want == "1"), (principal, subject)


# --- exact grants --------------------------------------------------------------------------------

PUB_DENY = ("$SYS.>", "_INBOX.>")
SUB_DENY = ("$SYS.>",)


def _restricted(
    publish: tuple[str, ...], subscribe: tuple[str, ...], sub_deny: tuple[str, ...] = ()
) -> Permissions:
    """``publish`` as listed, each with its partitioned twin after them (what a bus's subject mapping
    makes of it: nats-server checks a publish after mapping)."""
    return Permissions(
        publish_allow=(*publish, *(f"$CONAT.part.*.*.{p}" for p in publish), INTEREST_PROBE),
        publish_deny=PUB_DENY,
        subscribe_allow=subscribe,
        subscribe_deny=(*SUB_DENY, *sub_deny),
    )


EVERYTHING = Permissions(
    publish_allow=None, publish_deny=PUB_DENY, subscribe_allow=None, subscribe_deny=SUB_DENY
)

EXACT: list[tuple[str, Scope, str, Permissions]] = [
    (
        f"account-{A}",
        Scope(projects=(P,), hosts=(H,)),
        MASTER_BUS,
        _restricted((f"master.account-{A}.api", "public.>"), (f"_INBOX.account-{A}.>", "public.>")),
    ),
    (
        f"account-{A}",
        Scope(projects=(P,), hosts=(H,)),
        f"host-{H}",
        _restricted(
            (
                f"*.project-{P}",
                f"*.project-{P}.>",
                f"project.{P}.>",
                f"bootlog.project.{P}",
                f"bootlog.host.{H}",
                "public.>",
            ),
            (
                f"*.project-{P}",
                f"*.project-{P}.>",
                f"project.{P}.>",
                f"bootlog.project.{P}",
                f"bootlog.host.{H}",
                f"_INBOX.account-{A}.>",
                "public.>",
            ),
            (f"_INBOX.project-{P}", f"_INBOX.project-{P}.>"),
        ),
    ),
    (
        f"host-{H}",
        Scope(),
        MASTER_BUS,
        _restricted(
            (f"master.host-{H}.api", f"bootlog.host.{H}", "public.>"),
            (f"runner.host-{H}", f"_INBOX.host-{H}.>", "public.>"),
        ),
    ),
    (f"host-{H}", Scope(), f"host-{H}", EVERYTHING),
    (
        f"host-{H}",
        Scope(projects=(P,)),
        f"host-{X}",
        _restricted(("public.>",), (f"_INBOX.host-{H}.>", "public.>")),
    ),
    (
        f"project-{P}",
        Scope(),
        f"host-{H}",
        _restricted(
            (f"*.project-{P}", f"*.project-{P}.>", f"project.{P}.>", "public.>"),
            (f"*.project-{P}", f"*.project-{P}.>", f"project.{P}.>", f"_INBOX.project-{P}.>", "public.>"),
        ),
    ),
    (f"project-{P}", Scope(), MASTER_BUS, _restricted(("public.>",), (f"_INBOX.project-{P}.>", "public.>"))),
    ("hub", Scope(), MASTER_BUS, EVERYTHING),
    ("hub", Scope(), f"host-{H}", EVERYTHING),
]


@pytest.mark.parametrize(("principal", "scope", "bus", "expected"), EXACT)
def test_every_grant_may_send_the_interest_probe(
    principal: str, scope: Scope, bus: str, expected: Permissions
) -> None:
    assert grant(principal, scope, bus).permissions.can_publish(INTEREST_PROBE)


@pytest.mark.parametrize(("principal", "scope", "bus", "expected"), EXACT)
def test_exact_grants(principal: str, scope: Scope, bus: str, expected: Permissions) -> None:
    g = grant(principal, scope, bus)
    assert g.permissions == expected
    assert g.inbox_prefix == inbox_prefix(principal)
    assert g.responses == DEFAULT_RESPONSES


def test_account_with_empty_scope_on_a_host_bus_gets_the_minimum() -> None:
    g = grant(f"account-{A}", Scope(admin=True), f"host-{H}")
    assert g.permissions == _restricted(("public.>",), (f"_INBOX.account-{A}.>", "public.>"))


def test_admin_flag_widens_nothing() -> None:
    for bus in (MASTER_BUS, f"host-{H}"):
        scope = Scope(projects=(P,), hosts=(H,))
        admin = Scope(projects=(P,), hosts=(H,), admin=True)
        assert grant(f"account-{A}", scope, bus) == grant(f"account-{A}", admin, bus)


def test_to_nats_is_never_unrestricted_by_accident() -> None:
    # an open grant is an explicit ">": next to response permissions (every grant has them)
    # nats-server reads an empty publish allow list as "nothing"
    nats = grant("hub", Scope(), MASTER_BUS).permissions.to_nats()
    assert nats == {
        "pub": {"allow": [">"], "deny": ["$SYS.>", "_INBOX.>"]},
        "sub": {"allow": [">"], "deny": ["$SYS.>"]},
    }
    assert grant(f"host-{H}", Scope(), f"host-{H}").permissions.to_nats() == nats
    minimal = grant(f"project-{P}", Scope(), MASTER_BUS).permissions.to_nats()
    assert minimal["pub"] == {
        "allow": ["public.>", "$CONAT.part.*.*.public.>", INTEREST_PROBE],
        "deny": ["$SYS.>", "_INBOX.>"],
    }


def test_response_permission_claim() -> None:
    assert DEFAULT_RESPONSES.to_nats() == {"max": 10_000, "ttl": 120_000_000_000}
    assert ResponsePermission(max=1, ttl=1e-12).to_nats() == {"max": 1, "ttl": 1}


def test_grant_encodes_and_decodes() -> None:
    for principal, scope, bus, _ in EXACT:
        g = grant(principal, scope, bus)
        for codec in (msgspec.json, msgspec.msgpack):
            assert codec.decode(codec.encode(g), type=Grant) == g


# --- Principal, Scope, buses --------------------------------------------------------------------


def test_principal_parse() -> None:
    assert Principal.parse(f"account-{A}") == Principal("account", A)
    assert Principal.parse(f"host-{H}").kind == "host"
    assert Principal.parse(f"project-{P}").id == P
    assert Principal.parse("hub") == Principal("hub", None)
    assert str(Principal("project", P)) == f"project-{P}"
    assert Principal("hub", None).token == "hub"


def test_parse_bus() -> None:
    assert parse_bus("master") is None
    assert parse_bus(f"host-{H}") == H


def test_scope_normalizes_and_round_trips() -> None:
    scope = Scope(projects=[Q, P, Q], hosts=(uuid.UUID(H),))  # type: ignore[arg-type]
    assert scope.projects == (P, Q)
    assert scope.hosts == (H,)
    assert scope == Scope(projects=(P, Q), hosts=(H,))
    assert msgspec.json.encode(Scope()) == b"{}"
    for codec in (msgspec.json, msgspec.msgpack):
        assert codec.decode(codec.encode(scope), type=Scope) == scope


# --- bad input ----------------------------------------------------------------------------------

BAD_PRINCIPALS = [
    "",
    "nobody",
    "robot-" + A,
    "account-" + UPPER,
    "account-x",
    f"account-{A}.x",
    "HUB",
    "master",
]


@pytest.mark.parametrize("principal", BAD_PRINCIPALS)
def test_bad_principal(principal: str) -> None:
    with pytest.raises(InvalidSubject) as info:
        grant(principal, Scope(), MASTER_BUS)
    assert info.value.reason == "bad-scope"
    assert info.value.field == "principal"
    assert "invalid principal" in str(info.value)


def test_bad_principal_fields() -> None:
    with pytest.raises(InvalidSubject) as info:
        Principal("hub", A)
    assert info.value.reason == "bad-scope"
    with pytest.raises(InvalidSubject) as info:
        Principal("account", None)
    assert (info.value.reason, info.value.field) == ("bad-id", "account")
    with pytest.raises(InvalidSubject) as info:
        Principal("robot", A)  # type: ignore[arg-type]
    assert info.value.reason == "bad-scope"


@pytest.mark.parametrize(
    "bus", ["", "hub", "Master", f"project-{P}", f"account-{A}", "host-x", f"host-{H}.x", 42]
)
def test_bad_bus(bus: str) -> None:
    with pytest.raises(InvalidBus) as info:
        grant("hub", Scope(), bus)
    assert info.value.reason == "bad-bus"
    assert info.value.code == 400
    assert "invalid bus" in str(info.value)
    again = pickle.loads(pickle.dumps(info.value))
    assert (again.bus, str(again)) == (info.value.bus, str(info.value))


@pytest.mark.parametrize("field", ["projects", "hosts"])
@pytest.mark.parametrize("bad", ["x", UPPER, "{" + A + "}", "", 7])
def test_bad_scope_ids(field: str, bad: object) -> None:
    with pytest.raises(InvalidSubject) as info:
        Scope(**{field: (bad,)})  # type: ignore[arg-type]
    assert (info.value.reason, info.value.field) == ("bad-id", field)


def test_bad_scope_types() -> None:
    with pytest.raises(TypeError, match=r"Scope\.projects"):
        Scope(projects=P)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"Scope\.admin"):
        Scope(admin="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="scope must be a Scope"):
        grant("hub", {"projects": []}, MASTER_BUS)  # type: ignore[arg-type]


def test_bad_scope_on_the_wire() -> None:
    with pytest.raises(msgspec.ValidationError, match="canonical UUID"):
        msgspec.json.decode(b'{"projects": ["x"]}', type=Scope)
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        msgspec.json.decode(b'{"superuser": true}', type=Scope)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"max": 0, "ttl": 1.0}, ValueError),
        ({"max": 1, "ttl": 0.0}, ValueError),
        ({"max": 1, "ttl": float("inf")}, ValueError),
        ({"max": 1, "ttl": float("nan")}, ValueError),
        ({"max": True, "ttl": 1.0}, TypeError),
        ({"max": 1, "ttl": "1"}, TypeError),
    ],
)
def test_bad_response_permission(kwargs: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        ResponsePermission(**kwargs)  # type: ignore[arg-type]


# --- properties ---------------------------------------------------------------------------------

POOL = [P, Q, H, X]
ids = st.sampled_from(POOL)
principals = st.just("hub") | st.builds(
    lambda kind, ident: f"{kind}-{ident}", st.sampled_from(["account", "host", "project"]), ids
)
scopes = st.builds(
    Scope,
    projects=st.lists(ids, max_size=3).map(tuple),
    hosts=st.lists(ids, max_size=3).map(tuple),
    admin=st.booleans(),
)
buses = st.just(MASTER_BUS) | ids.map(lambda ident: f"host-{ident}")


def _privileged(principal: str, bus: str) -> bool:
    """The hub anywhere, a host on its own bus: "everything" but $SYS (module docstring)."""
    return principal == "hub" or principal == bus


def _project_subjects(project: str) -> list[str]:
    return [
        f"fs.project-{project}",
        f"persist.project-{project}.x",
        f"watch.project-{project}.t",
        f"project.{project}.x",
        f"bootlog.project.{project}",
    ]


@settings(max_examples=300, deadline=None)
@given(principals, scopes, buses)
def test_sys_is_never_reachable(principal: str, scope: Scope, bus: str) -> None:
    perms = grant(principal, scope, bus).permissions
    for subject in ("$SYS.REQ.SERVER.x.KICK", "$SYS.ACCOUNT.x.CONNECT"):
        assert not perms.can_publish(subject)
        assert not perms.can_subscribe(subject)
    for pattern in ("$SYS.>", "$SYS.*", ">", "*.>"):
        assert not perms.can_subscribe(pattern)
    nats = perms.to_nats()
    assert "$SYS.>" in nats["pub"]["deny"]
    assert "$SYS.>" in nats["sub"]["deny"]


@settings(max_examples=300, deadline=None)
@given(principals, principals, scopes, buses)
def test_inboxes_are_private(principal: str, other: str, scope: Scope, bus: str) -> None:
    g = grant(principal, scope, bus)
    perms = g.permissions
    own = inbox_prefix(principal)
    assert g.inbox_prefix == own
    assert perms.can_subscribe(inbox_pattern(principal))
    assert perms.can_subscribe(own + ".n1.*")
    for target in (own, inbox_prefix(other)):
        assert not perms.can_publish(target + ".n1.1")  # replies go through response permissions
    if _privileged(principal, bus):
        return
    assert not perms.can_subscribe("_INBOX.>")
    assert not perms.can_subscribe("_INBOX.*.>")
    if other != principal:
        assert not perms.can_subscribe(inbox_pattern(other))
        assert not perms.can_subscribe(inbox_prefix(other))
        assert not perms.can_subscribe(inbox_prefix(other) + ".n1.*")
        assert not perms.can_subscribe(inbox_prefix(other) + ".n1.1")


@settings(max_examples=300, deadline=None)
@given(principals, scopes, buses, ids)
def test_projects_outside_the_scope_are_unreachable(
    principal: str, scope: Scope, bus: str, project: str
) -> None:
    if _privileged(principal, bus):
        return
    kind, _, ident = principal.partition("-")
    on_host_bus = bus != MASTER_BUS
    if kind == "account":
        allowed = on_host_bus and project in scope.projects
    elif kind == "project":
        allowed = on_host_bus and project == ident
    else:
        allowed = False
    perms = grant(principal, scope, bus).permissions
    for subject in _project_subjects(project):
        if subject.startswith("bootlog.") and kind == "project":
            assert not perms.can_publish(subject)  # the host writes a project's boot log
            continue
        assert perms.can_publish(subject) == allowed, subject
        assert perms.can_subscribe(subject) == allowed, subject


@settings(max_examples=300, deadline=None)
@given(principals, scopes, buses)
def test_grants_are_never_unrestricted_by_accident(principal: str, scope: Scope, bus: str) -> None:
    perms = grant(principal, scope, bus).permissions
    nats = perms.to_nats()
    for side in ("pub", "sub"):
        assert nats[side]["deny"], side
        assert _nats_permits(nats[side], "public.x")
        assert not _nats_permits(nats[side], "$SYS.x")
    if not _privileged(principal, bus):
        assert nats["pub"]["allow"] and nats["sub"]["allow"]
        assert not _nats_permits(nats["pub"], "somewhere.else")
        assert not _nats_permits(nats["sub"], "somewhere.else")


@settings(max_examples=300, deadline=None)
@given(principals, scopes, buses)
def test_subscribe_allow_never_ends_in_star(principal: str, scope: Scope, bus: str) -> None:
    allow = grant(principal, scope, bus).permissions.subscribe_allow or ()
    assert not [p for p in allow if p.endswith("*")]


@settings(max_examples=300, deadline=None)
@given(principals, scopes, buses)
def test_grants_are_deterministic(principal: str, scope: Scope, bus: str) -> None:
    first = grant(principal, scope, bus)
    shuffled = Scope(projects=scope.projects[::-1], hosts=scope.hosts[::-1], admin=scope.admin)
    second = grant(principal, shuffled, bus)
    assert first == second
    assert msgspec.msgpack.encode(first) == msgspec.msgpack.encode(second)
    assert first.permissions.to_nats() == second.permissions.to_nats()


def test_a_bus_server_names_its_bus() -> None:
    host_bus = f"host-{H}"
    assert bus_server_name(MASTER_BUS) == "conat-master"
    assert bus_server_name(host_bus, "n1") == f"conat-{host_bus}.n1"
    for name, bus in [
        ("conat-master", MASTER_BUS),
        (f"conat-{host_bus}", host_bus),
        (f"conat-{host_bus}.n1", host_bus),
    ]:
        assert server_bus(name) == bus
    for other in [
        "conat-test",
        "conat-bench",
        "n1",
        "",
        "conat-",
        f"conat-host-{UPPER}",
        f"conat-project-{P}",
    ]:
        assert server_bus(other) is None
    with pytest.raises(InvalidBus):
        bus_server_name("hub")
    with pytest.raises(ValueError, match="node"):
        bus_server_name(MASTER_BUS, "a b")


@given(st.uuids(), st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=20))
def test_server_names_round_trip(host: uuid.UUID, node: str) -> None:
    bus = f"host-{host}"
    assert server_bus(bus_server_name(bus)) == bus
    assert server_bus(bus_server_name(bus, node)) == bus


def test_a_hosts_leaf_link_carries_its_master_subjects_and_replies_to_master_only() -> None:
    from subjects import leaf_permissions

    link = leaf_permissions(H)
    assert link.can_publish(f"master.host-{H}.api") and link.can_publish(f"bootlog.host.{H}")
    assert link.can_publish("_INBOX.hub.abc.1")  # replies to master's requests cross as publishes
    for subject in (f"master.host-{X}.api", f"fs.project-{P}", "_INBOX.account-x.y", "$SYS.REQ.SERVER.PING"):
        assert not link.can_publish(subject), subject
    assert link.can_subscribe(f"runner.host-{H}") and link.can_subscribe(f"runner.host-{H}.{P}")
    assert link.can_subscribe(f"_INBOX.host-{H}.>")
    for subject in (f"runner.host-{X}", f"fs.project-{P}", f"persist.project-{P}.>", "_INBOX.hub.>"):
        assert not link.can_subscribe(subject), subject
