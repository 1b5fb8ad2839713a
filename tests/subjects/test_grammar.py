"""Subject grammar: example tables, error fields, and a property test against a reference checker."""

from __future__ import annotations

import pickle
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from subjects import (
    MAX_SUBJECT_BYTES,
    InvalidSubject,
    is_literal,
    is_valid_pattern,
    is_valid_subject,
    split_tokens,
    validate_pattern,
    validate_subject,
    validate_token,
)

VALID_LITERALS = [
    "a",
    "foo.bar",
    "foo.bar.baz",
    "_INBOX.abc123",
    "$SYS.REQ.SERVER.PING",
    "x" * MAX_SUBJECT_BYTES,
    "é" * (MAX_SUBJECT_BYTES // 2),
    "caf\u00e9.\u2603.\U0001f600",
    "zero\u200bwidth",  # format characters are not whitespace: allowed, as in NATS
    "a-b_c:d/e=f",
]

VALID_PATTERNS_ONLY = ["*", ">", "a.*", "a.>", "*.*.>", "a.*.c", "*.b", "foo.*.>"]

# (string, reason for both literal and pattern, token, index)
INVALID_ANYWAY = [
    ("", "empty-subject", None, None),
    (".", "empty-token", "", 0),
    ("a.", "empty-token", "", 1),
    (".a", "empty-token", "", 0),
    ("a..b", "empty-token", "", 1),
    ("a.b..", "empty-token", "", 2),
    ("a b", "whitespace", "a b", 0),
    ("a.b c", "whitespace", "b c", 1),
    ("a.\tb", "whitespace", "\tb", 1),
    ("a.b\r", "whitespace", "b\r", 1),
    ("a\n.b", "whitespace", "a\n", 0),
    ("a\f", "whitespace", "a\f", 0),
    ("a.\u00a0", "whitespace", "\u00a0", 1),
    ("a.\u2028.b", "whitespace", "\u2028", 1),
    ("\u3000", "whitespace", "\u3000", 0),
    ("a.\x00", "control-character", "\x00", 1),
    ("a\x7f", "control-character", "a\x7f", 0),
    ("a.b.\x85", "whitespace", "\x85", 2),  # NEL: str.isspace() says whitespace
    ("a.\x9f", "control-character", "\x9f", 1),
    ("a.\ud800", "bad-unicode", "\ud800", 1),
    ("a..b c", "whitespace", "b c", 2),  # characters are checked before structure
    # wildcard characters only as whole tokens (nats-py cannot subscribe to "a*" or ">b")
    ("a*", "wildcard-in-token", "a*", 0),
    ("x.*a", "wildcard-in-token", "*a", 1),
    ("x.a>", "wildcard-in-token", "a>", 1),
    (">a", "wildcard-in-token", ">a", 0),
    ("foo.b*r.c", "wildcard-in-token", "b*r", 1),
    ("**", "wildcard-in-token", "**", 0),
    (">>", "wildcard-in-token", ">>", 0),
    ("a.b.x*.>", "wildcard-in-token", "x*", 2),
    ("x" * (MAX_SUBJECT_BYTES + 1), "too-long", None, None),
    ("é" * (MAX_SUBJECT_BYTES // 2 + 1), "too-long", None, None),
]

# Valid patterns that are not literal subjects: (pattern, token, index)
WILDCARD_IN_LITERAL = [
    ("*", "*", 0),
    (">", ">", 0),
    ("a.*", "*", 1),
    ("a.>", ">", 1),
    ("a.*.>", "*", 1),
    ("*.b", "*", 0),
    ("a.*.b*", "*", 1),  # the leftmost wildcard problem is reported
]

INVALID_PATTERN_ONLY = [
    ("a.>.b", ">", 1),
    ("a.>.>", ">", 1),
    (">.>", ">", 0),
    ("*.>.*", ">", 1),
    (">.a", ">", 0),
    ("a.>.b*", ">", 1),
]


@pytest.mark.parametrize("subject", VALID_LITERALS)
def test_valid_literals_are_valid_subjects_and_patterns(subject: str) -> None:
    assert validate_subject(subject) is subject
    assert validate_pattern(subject) is subject
    assert is_valid_subject(subject) and is_valid_pattern(subject)
    assert is_literal(subject)
    assert split_tokens(subject) == tuple(subject.split("."))


@pytest.mark.parametrize("pattern", VALID_PATTERNS_ONLY)
def test_valid_patterns(pattern: str) -> None:
    assert validate_pattern(pattern) is pattern
    assert is_valid_pattern(pattern)
    assert not is_valid_subject(pattern)
    assert not is_literal(pattern)


@pytest.mark.parametrize(("subject", "reason", "token", "index"), INVALID_ANYWAY)
def test_invalid_everywhere(subject: str, reason: str, token: str | None, index: int | None) -> None:
    for validate, is_valid in ((validate_subject, is_valid_subject), (validate_pattern, is_valid_pattern)):
        with pytest.raises(InvalidSubject) as info:
            validate(subject)
        error = info.value
        assert (error.subject, error.reason, error.token, error.index) == (subject, reason, token, index)
        assert not is_valid(subject)


@pytest.mark.parametrize(("pattern", "token", "index"), WILDCARD_IN_LITERAL)
def test_wildcards_are_not_literal(pattern: str, token: str, index: int) -> None:
    with pytest.raises(InvalidSubject) as info:
        validate_subject(pattern)
    assert (info.value.reason, info.value.token, info.value.index) == ("wildcard-in-literal", token, index)


@pytest.mark.parametrize(("pattern", "token", "index"), INVALID_PATTERN_ONLY)
def test_full_wildcard_must_be_last(pattern: str, token: str, index: int) -> None:
    with pytest.raises(InvalidSubject) as info:
        validate_pattern(pattern)
    assert (info.value.reason, info.value.token, info.value.index) == ("full-wildcard-not-last", token, index)


@pytest.mark.parametrize("value", [None, 1, b"a.b", ["a"], object()])
def test_non_strings_are_rejected(value: object) -> None:
    with pytest.raises(InvalidSubject) as info:
        validate_subject(value)  # type: ignore[arg-type]
    assert info.value.reason == "not-a-string"
    assert info.value.subject == repr(value)
    assert not is_valid_subject(value)
    assert not is_valid_pattern(value)


def test_error_is_a_value_error_with_code_fields_and_message() -> None:
    with pytest.raises(ValueError, match=r"invalid subject 'foo\.\.bar': token 1 '' is empty") as info:
        validate_subject("foo..bar")
    error = info.value
    assert isinstance(error, InvalidSubject)
    assert error.code == 400 and InvalidSubject.code == 400
    assert error.field == "subject"
    with pytest.raises(InvalidSubject, match=r"invalid pattern 'a\.>\.b': token 1 '>' is '>'"):
        validate_pattern("a.>.b")
    with pytest.raises(InvalidSubject, match="token 2 'c d' contains whitespace"):
        validate_subject("a.b.c d")


def test_error_message_is_bounded_for_huge_subjects() -> None:
    with pytest.raises(InvalidSubject) as info:
        validate_subject("y" * 100_000)
    assert len(str(info.value)) < 200
    assert info.value.subject == "y" * 100_000  # the field keeps the whole value


def test_error_survives_pickling() -> None:
    with pytest.raises(InvalidSubject) as info:
        validate_pattern("a.>.b")
    copy = pickle.loads(pickle.dumps(info.value))
    assert type(copy) is InvalidSubject
    fields = (copy.subject, copy.reason, copy.token, copy.index, copy.field)
    assert fields == ("a.>.b", "full-wildcard-not-last", ">", 1, "pattern")
    assert str(copy) == str(info.value)


def test_every_unicode_whitespace_is_rejected() -> None:
    spaces = [chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace()]
    assert len(spaces) > 20
    for space in spaces:
        assert not is_valid_pattern(f"a.b{space}c"), repr(space)


def test_length_cap_counts_utf8_bytes() -> None:
    assert is_valid_subject("a" * MAX_SUBJECT_BYTES)
    assert not is_valid_subject("a" * (MAX_SUBJECT_BYTES + 1))
    four_bytes = "\U0001f600"
    assert is_valid_subject(four_bytes * (MAX_SUBJECT_BYTES // 4))
    assert not is_valid_subject(four_bytes * (MAX_SUBJECT_BYTES // 4) + "a")


def test_validate_token() -> None:
    assert validate_token("abc") == "abc"
    for token, reason in [
        ("a.b", "dot-in-token"),
        (".", "dot-in-token"),
        ("", "empty-subject"),
        ("*", "wildcard-in-literal"),
        (">", "wildcard-in-literal"),
        ("a b", "whitespace"),
        ("a*", "wildcard-in-token"),
    ]:
        with pytest.raises(InvalidSubject) as info:
            validate_token(token)
        assert info.value.reason == reason
        assert info.value.field == "token"


def test_split_tokens_validates() -> None:
    assert split_tokens("a.*.>") == ("a", "*", ">")
    with pytest.raises(InvalidSubject):
        split_tokens("a..b")


# --- reference model -----------------------------------------------------------------------------


def reference_problem(s: str, literal: bool) -> str | None:
    """A token-by-token restatement of the documented rules and their priority."""
    if not s:
        return "empty-subject"
    if len(s.encode("utf-8", "surrogatepass")) > MAX_SUBJECT_BYTES:
        return "too-long"
    for ch in s:
        if ch.isspace():
            return "whitespace"
        if ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F:
            return "control-character"
        if 0xD800 <= ord(ch) <= 0xDFFF:
            return "bad-unicode"
    tokens = s.split(".")
    if any(t == "" for t in tokens):
        return "empty-token"
    for i, t in enumerate(tokens):
        if literal and t in ("*", ">"):
            return "wildcard-in-literal"
        if not literal and t == ">" and i != len(tokens) - 1:
            return "full-wildcard-not-last"
        if t not in ("*", ">") and ("*" in t or ">" in t):
            return "wildcard-in-token"
    return None


ALPHABET = ["a", "b", ".", "*", ">", " ", "\t", "\x00", "\u00a0", "é", "\ud800", "\u200b", "-"]
strings = st.lists(st.sampled_from(ALPHABET), max_size=12).map("".join)


@settings(max_examples=500, deadline=None)
@given(strings)
def test_matches_reference_checker(s: str) -> None:
    for literal, validate in ((True, validate_subject), (False, validate_pattern)):
        expected = reference_problem(s, literal)
        try:
            validate(s)
        except InvalidSubject as error:
            assert error.reason == expected
            if error.token is not None:
                assert error.index is not None
                assert s.split(".")[error.index] == error.token
        else:
            assert expected is None
    assert is_valid_subject(s) == (reference_problem(s, True) is None)
    assert is_valid_pattern(s) == (reference_problem(s, False) is None)
    if is_valid_pattern(s):
        assert is_literal(s) == is_valid_subject(s)
