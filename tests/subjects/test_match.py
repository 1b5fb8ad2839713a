"""Matching, SubjectIndex and pattern algebra, checked against a recursive reference matcher.

Patterns are drawn over the literal tokens {a, b, c}; subjects are enumerated over {a, b, c, z}
where ``z`` stands for "any other token". Up to one token longer than the longest pattern, that
enumeration sees every case the algebra can distinguish, so subset/collision checks against it are
exact in both directions, not just spot checks.
"""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

from subjects import InvalidSubject, SubjectIndex, matches, pattern_is_subset, subjects_collide


def reference_matches(pattern: str, subject: str) -> bool:
    def walk(p: list[str], s: list[str]) -> bool:
        if not p:
            return not s
        if p[0] == ">":
            return len(s) >= 1
        if not s:
            return False
        return (p[0] == "*" or p[0] == s[0]) and walk(p[1:], s[1:])

    return walk(pattern.split("."), subject.split("."))


LITERALS = ["a", "b", "c"]
SUBJECT_ALPHABET = [*LITERALS, "z"]
MAX_PATTERN_TOKENS = 4


def enumerate_subjects(max_tokens: int) -> list[str]:
    return [
        ".".join(tokens)
        for n in range(1, max_tokens + 1)
        for tokens in itertools.product(SUBJECT_ALPHABET, repeat=n)
    ]


ALL_SUBJECTS = enumerate_subjects(MAX_PATTERN_TOKENS + 1)

patterns = st.builds(
    lambda body, full: ".".join(body + ([">"] if full else [])),
    st.lists(st.sampled_from([*LITERALS, "*"]), min_size=0, max_size=MAX_PATTERN_TOKENS - 1),
    st.booleans(),
).filter(bool)
subjects = st.lists(st.sampled_from(SUBJECT_ALPHABET), min_size=1, max_size=6).map(".".join)


EXAMPLES = [
    ("a", "a", True),
    ("a", "b", False),
    ("a.b", "a", False),
    ("a", "a.b", False),
    ("*", "a", True),
    ("*", "a.b", False),
    (">", "a", True),
    (">", "a.b.c", True),
    ("a.>", "a", False),
    ("a.>", "a.b", True),
    ("a.>", "a.b.c", True),
    ("a.>", "ab.c", False),
    ("a.>", "b.a.c", False),
    ("a.*", "a.b", True),
    ("a.*", "a.b.c", False),
    ("a.*.c", "a.b.c", True),
    ("a.*.c", "a.b.d", False),
    ("*.*.>", "a.b", False),
    ("*.*.>", "a.b.c", True),
    ("*.>", "a", False),
    ("*.>", "a.b", True),
    ("*.b.>", "a.b", False),
    ("*.b.>", "a.b.c.d", True),
]


@pytest.mark.parametrize(("pattern", "subject", "expected"), EXAMPLES)
def test_matches_examples(pattern: str, subject: str, expected: bool) -> None:
    assert matches(pattern, subject) is expected
    assert reference_matches(pattern, subject) is expected


@settings(max_examples=1000, deadline=None)
@given(patterns, subjects)
def test_matches_agrees_with_reference(pattern: str, subject: str) -> None:
    assert matches(pattern, subject) == reference_matches(pattern, subject)


# --- pattern algebra -----------------------------------------------------------------------------


SUBSET_EXAMPLES = [
    ("a", "a", True),
    ("a", "*", True),
    ("a", ">", True),
    ("*", "a", False),
    ("a.*", "a.>", True),
    ("a.>", "a.*", False),
    ("a.>", "a.>", True),
    ("a.>", ">", True),
    ("a.b.>", "a.*.>", True),
    ("a.*.>", "a.b.>", False),
    ("a.*", "*.*", True),
    ("a.*", "*.b", False),
    ("a", "a.>", False),
    ("a.>", "a", False),
    (">", "*.>", False),
    ("*.>", ">", True),
]


@pytest.mark.parametrize(("sub", "sup", "expected"), SUBSET_EXAMPLES)
def test_pattern_is_subset_examples(sub: str, sup: str, expected: bool) -> None:
    assert pattern_is_subset(sub, sup) is expected


def test_algebra_validates_its_arguments() -> None:
    for call in (pattern_is_subset, subjects_collide):
        with pytest.raises(InvalidSubject):
            call("a..b", "a")
        with pytest.raises(InvalidSubject):
            call("a", "a.>.b")


@settings(max_examples=300, deadline=None)
@given(patterns, patterns)
def test_pattern_algebra_is_exact(sub: str, sup: str) -> None:
    matched_by_sub = [s for s in ALL_SUBJECTS if reference_matches(sub, s)]
    matched_by_sup = {s for s in ALL_SUBJECTS if reference_matches(sup, s)}
    assert pattern_is_subset(sub, sup) == all(s in matched_by_sup for s in matched_by_sub)
    assert subjects_collide(sub, sup) == any(s in matched_by_sup for s in matched_by_sub)
    assert subjects_collide(sub, sup) == subjects_collide(sup, sub)
    assert pattern_is_subset(sub, sub)


# --- SubjectIndex --------------------------------------------------------------------------------


def test_index_basics() -> None:
    index: SubjectIndex[str] = SubjectIndex()
    assert len(index) == 0 and index.match("a") == [] and not index.has_match("a")
    index.add("a.>", "full")
    index.add("a.*", "star")
    index.add("a.b", "exact")
    index.add("a.b", "exact")  # a multiset: registered twice, returned twice
    index.add(">", "all")
    assert len(index) == 5
    assert Counter(index.match("a.b")) == Counter({"full": 1, "star": 1, "exact": 2, "all": 1})
    assert Counter(index.match("a.b.c")) == Counter({"full": 1, "all": 1})
    assert index.match("a") == ["all"]
    index.remove("a.b", "exact")
    assert Counter(index.match("a.b")) == Counter({"full": 1, "star": 1, "exact": 1, "all": 1})
    with pytest.raises(KeyError):
        index.remove("a.c", "exact")
    with pytest.raises(KeyError):
        index.remove("a.*", "nope")
    with pytest.raises(InvalidSubject):
        index.add("a..b", "bad")
    assert len(index) == 4


def test_index_results_are_fresh_lists() -> None:
    index: SubjectIndex[int] = SubjectIndex()
    index.add("a.*", 1)
    first = index.match("a.b")
    first.append(99)
    assert index.match("a.b") == [1]  # served from the cache, unaffected by the caller's change


def test_index_prunes_empty_levels() -> None:
    index: SubjectIndex[int] = SubjectIndex()
    index.add("a.b.c.d", 1)
    index.add("a.*.>", 2)
    index.remove("a.b.c.d", 1)
    index.remove("a.*.>", 2)
    assert len(index) == 0
    assert index._root.is_empty()


def test_index_cache_is_bounded_and_invalidated() -> None:
    index: SubjectIndex[int] = SubjectIndex(cache_size=4)
    index.add("a.*", 1)
    for i in range(20):
        assert index.match(f"a.{i}") == [1]
    assert len(index._cache) == 4
    index.add("a.>", 2)
    assert sorted(index.match("a.19")) == [1, 2]
    with pytest.raises(ValueError, match="cache_size"):
        SubjectIndex(cache_size=-1)
    uncached: SubjectIndex[int] = SubjectIndex(cache_size=0)
    uncached.add("a", 1)
    assert uncached.match("a") == [1] and not uncached._cache


class IndexMachine(RuleBasedStateMachine):
    """Random adds and removes; every match is compared with brute force over ``matches``."""

    registrations = Bundle("registrations")

    def __init__(self) -> None:
        super().__init__()
        self.index: SubjectIndex[int] = SubjectIndex(cache_size=3)  # small: evictions happen
        self.model: list[tuple[str, int]] = []

    @rule(target=registrations, pattern=patterns, value=st.integers(0, 3))
    def add(self, pattern: str, value: int) -> tuple[str, int]:
        self.index.add(pattern, value)
        self.model.append((pattern, value))
        return pattern, value

    @rule(registration=consumes(registrations))
    def remove(self, registration: tuple[str, int]) -> None:
        self.index.remove(*registration)
        self.model.remove(registration)

    @rule(pattern=patterns, value=st.integers(0, 3))
    def remove_missing(self, pattern: str, value: int) -> None:
        if (pattern, value) not in self.model:
            with pytest.raises(KeyError):
                self.index.remove(pattern, value)

    @rule(subject=st.sampled_from(ALL_SUBJECTS))
    def match(self, subject: str) -> None:
        expected = Counter(v for p, v in self.model if reference_matches(p, subject))
        assert Counter(self.index.match(subject)) == expected
        assert self.index.has_match(subject) == bool(expected)

    @invariant()
    def length(self) -> None:
        assert len(self.index) == len(self.model)


IndexMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
test_index_state_machine = IndexMachine.TestCase
