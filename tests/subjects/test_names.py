"""Well-known subject builders: the table of subjects, id checking, and token validation."""

from __future__ import annotations

from collections.abc import Callable
from uuid import UUID

import pytest

import subjects
from subjects import (
    HUB,
    PUBLIC_PATTERN,
    InvalidSubject,
    account_scope,
    bootlog_host,
    bootlog_project,
    decode_token_str,
    fs_project,
    host_scope,
    inbox_pattern,
    inbox_prefix,
    is_valid_pattern,
    is_valid_subject,
    key_token,
    master_account_api,
    master_host_api,
    matches,
    parse_scope,
    persist_pattern,
    persist_scope,
    project_pattern,
    project_scope,
    project_subject,
    public,
    runner_host,
    scope_patterns,
    service_subject,
    watch_project,
    watch_project_pattern,
)

P = "6f1c2b9e-3a4d-4e5f-8a7b-9c0d1e2f3a4b"
A = "0a1b2c3d-4e5f-4a6b-8c7d-8e9f0a1b2c3d"
H = "f0e1d2c3-b4a5-4968-8778-695a4b3c2d1e"


def test_design_table() -> None:
    assert project_scope(P) == f"project-{P}"
    assert account_scope(A) == f"account-{A}"
    assert host_scope(H) == f"host-{H}"
    assert HUB == "hub"
    assert master_account_api(A) == f"master.account-{A}.api"
    assert master_host_api(H) == f"master.host-{H}.api"
    assert runner_host(H) == f"runner.host-{H}"
    assert fs_project(P) == f"fs.project-{P}"
    assert watch_project(P, "w1") == f"watch.project-{P}.w1"
    assert watch_project(P, "w1", "x") == f"watch.project-{P}.w1.x"
    assert watch_project_pattern(P) == f"watch.project-{P}.>"
    assert persist_scope(project_scope(P), "stream", "s1") == f"persist.project-{P}.stream.s1"
    assert persist_scope(HUB, "kv") == "persist.hub.kv"
    assert persist_pattern(account_scope(A)) == f"persist.account-{A}.>"
    assert bootlog_project(P) == f"bootlog.project.{P}"
    assert bootlog_host(H) == f"bootlog.host.{H}"
    assert project_subject(P, "api") == f"project.{P}.api"
    assert project_pattern(P) == f"project.{P}.>"
    assert inbox_prefix(account_scope(A)) == f"_INBOX.account-{A}"
    assert inbox_pattern(account_scope(A)) == f"_INBOX.account-{A}.>"
    assert inbox_prefix(HUB) == "_INBOX.hub"
    assert public("announce") == "public.announce"
    assert PUBLIC_PATTERN == "public.>"
    assert service_subject("fs", project_scope(P)) == fs_project(P)
    assert service_subject("master", account_scope(A), "api") == master_account_api(A)
    assert scope_patterns(project_scope(P)) == (f"*.project-{P}", f"*.project-{P}.>")


def test_builders_agree_with_their_patterns() -> None:
    assert matches(watch_project_pattern(P), watch_project(P, "a", "b"))
    assert matches(persist_pattern(HUB), persist_scope(HUB, "x"))
    assert matches(project_pattern(P), project_subject(P, "x", "y"))
    assert matches(inbox_pattern(HUB), inbox_prefix(HUB) + ".abc")
    assert matches(PUBLIC_PATTERN, public("a", "b"))
    star, full = scope_patterns(project_scope(P))
    assert matches(star, fs_project(P))
    assert matches(full, watch_project(P, "x"))
    assert matches(full, persist_scope(project_scope(P), "x"))
    assert not matches(star, fs_project(A)) and not matches(full, watch_project(A, "x"))
    for pattern in (
        watch_project_pattern(P),
        persist_pattern(HUB),
        project_pattern(P),
        inbox_pattern(HUB),
        star,
        full,
    ):
        assert is_valid_pattern(pattern)


UUID_BUILDERS: list[tuple[Callable[[str], str], str]] = [
    (project_scope, "project"),
    (account_scope, "account"),
    (host_scope, "host"),
    (master_account_api, "account"),
    (master_host_api, "host"),
    (runner_host, "host"),
    (fs_project, "project"),
    (watch_project_pattern, "project"),
    (bootlog_project, "project"),
    (bootlog_host, "host"),
    (project_pattern, "project"),
]


@pytest.mark.parametrize(("build", "field"), UUID_BUILDERS)
def test_ids_are_uuids_in_one_spelling(build: Callable[[str], str], field: str) -> None:
    canonical = build(P)
    assert is_valid_pattern(canonical)
    assert build(UUID(P)) == canonical  # type: ignore[arg-type]
    for bad in [P.upper(), P.replace("-", ""), "{" + P + "}", "urn:uuid:" + P, "x" * 36, "", "hub", P + ".x"]:
        with pytest.raises(InvalidSubject) as info:
            build(bad)
        assert (info.value.reason, info.value.field) == ("bad-id", field)
        assert field in str(info.value)
    with pytest.raises(InvalidSubject) as info:
        build(12)  # type: ignore[arg-type]
    assert info.value.reason == "bad-id"


def test_parse_scope() -> None:
    assert parse_scope(project_scope(P)) == ("project", P)
    assert parse_scope(account_scope(A)) == ("account", A)
    assert parse_scope(host_scope(H)) == ("host", H)
    assert parse_scope(HUB) == ("hub", None)
    for bad in [
        "",
        "project",
        "project-",
        f"project-{P.upper()}",
        f"user-{P}",
        f"project-{P}.x",
        "Hub",
        P,
        None,
    ]:
        with pytest.raises(InvalidSubject) as info:
            parse_scope(bad)  # type: ignore[arg-type]
        assert (info.value.reason, info.value.field) == ("bad-scope", "scope")


@pytest.mark.parametrize(
    "build",
    [
        lambda: persist_scope("project-x", "a"),
        lambda: persist_pattern("nope"),
        lambda: inbox_prefix(P),
        lambda: inbox_pattern("_INBOX"),
        lambda: service_subject("fs", "project"),
        lambda: scope_patterns("*"),
    ],
)
def test_scope_arguments_are_checked(build: Callable[[], str]) -> None:
    with pytest.raises(InvalidSubject) as info:
        build()
    assert info.value.reason == "bad-scope"


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("a.b", "dot-in-token"),
        ("*", "wildcard-in-literal"),
        (">", "wildcard-in-literal"),
        ("", "empty-subject"),
        ("a b", "whitespace"),
    ],
)
def test_rest_tokens_are_validated_not_escaped(token: str, reason: str) -> None:
    builders: list[Callable[[], str]] = [
        lambda: watch_project(P, token),
        lambda: watch_project(P, "ok", token),
        lambda: persist_scope(HUB, token),
        lambda: project_subject(P, token),
        lambda: public(token),
        lambda: service_subject("fs", HUB, token),
        lambda: service_subject(token, HUB),
    ]
    for build in builders:
        with pytest.raises(InvalidSubject) as info:
            build()
        assert info.value.reason == reason


def test_arbitrary_text_goes_through_key_token() -> None:
    path = "dir with spaces/file.name.txt"
    subject = watch_project(P, key_token(path))
    assert is_valid_subject(subject)
    assert decode_token_str(subject.split(".")[-1]) == path
    assert key_token is subjects.encode_token


def test_joined_subjects_respect_the_length_cap() -> None:
    long_token = "x" * 1500
    assert is_valid_subject(public(long_token))
    with pytest.raises(InvalidSubject) as info:
        public(long_token, long_token)
    assert info.value.reason == "too-long"
