"""Wildcard matching: one pattern against one subject, many patterns at once, and pattern algebra.

Semantics are NATS's: ``*`` matches exactly one token, a final ``>`` matches one or more tokens,
every other token matches only itself. The alphabet of tokens is infinite, which the algebra below
relies on: a literal token never covers a ``*``.

Hot-path functions (:func:`matches`, :meth:`SubjectIndex.match`) do not validate their subject
argument: they are called for every routed message, whose subject the bus already accepted. On a
subject that is not valid they return a defined but meaningless answer. Wildcard tokens inside the
*subject* argument are compared as plain text.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from functools import lru_cache
from typing import Final, Generic, TypeVar, final

from ._grammar import split_tokens

__all__ = ["SubjectIndex", "matches", "pattern_is_subset", "subjects_collide"]

T = TypeVar("T")

_DEFAULT_CACHE_SIZE: Final = 1024


@lru_cache(maxsize=4096)
def _pattern_tokens(pattern: str) -> tuple[str, ...]:
    # Patterns repeat (a handful of subscriptions see every message): split each once.
    return tuple(pattern.split("."))


def matches(pattern: str, subject: str) -> bool:
    """Whether the literal ``subject`` is matched by ``pattern``.

    Neither argument is validated (see the module docstring); both are assumed valid.
    Cost: a string comparison for literal patterns, a prefix test for ``foo.>``-style patterns, one
    ``split`` otherwise. No regular expressions.
    """
    if pattern == subject:
        return True
    if "*" not in pattern:
        if pattern[-1:] != ">":
            return False  # a literal pattern
        if pattern == ">":
            return True
        # "a.b.>": a valid subject starting with "a.b." has at least one more (non-empty) token.
        return subject.startswith(pattern[:-1])
    p = _pattern_tokens(pattern)
    s = subject.split(".")
    n = len(p)
    if p[-1] == ">":
        n -= 1
        if len(s) <= n:
            return False
    elif len(s) != n:
        return False
    for i in range(n):
        token = p[i]
        if token != "*" and token != s[i]:
            return False
    return True


def _collide(a: Sequence[str], b: Sequence[str]) -> bool:
    """Whether some literal subject is matched by both token sequences (both valid patterns)."""
    for x, y in zip(a, b, strict=False):
        if x == ">" or y == ">":
            return True
        if x != y and x != "*" and y != "*":
            return False
    return len(a) == len(b)


def _covered(pattern: tuple[str, ...], candidates: list[tuple[str, ...]]) -> bool:
    """Whether every subject matched by ``pattern`` is matched by at least one of ``candidates``.

    Exact (not just "subset of one candidate"): ``a.>`` is covered by ``{a.*, a.*.>}`` together.
    Walks the tokens left to right, keeping only candidates still able to match:

    - a literal token keeps candidates with that literal or ``*`` there;
    - ``*`` keeps only ``*`` candidates: literals cover finitely many of infinitely many tokens;
    - ``>`` ("one or more tokens") is split into "exactly one" and "two or more" (``*.>``).

    A candidate reaching ``>`` while the pattern still has tokens covers everything left.
    Cost: O(len(pattern) * total candidate tokens); each ``>`` step shortens every candidate.
    """
    while pattern:
        if any(c and c[0] == ">" for c in candidates):
            return True
        head = pattern[0]
        if head == ">":
            stars = [c[1:] for c in candidates if c and c[0] == "*"]
            return bool(stars) and _covered((), stars) and _covered((">",), stars)
        if head == "*":
            candidates = [c[1:] for c in candidates if c and c[0] == "*"]
        else:
            candidates = [c[1:] for c in candidates if c and (c[0] == "*" or c[0] == head)]
        if not candidates:
            return False
        pattern = pattern[1:]
    return any(not c for c in candidates)


def pattern_is_subset(sub: str, sup: str) -> bool:
    """Whether every subject matched by pattern ``sub`` is also matched by pattern ``sup``.

    This is the question permission checks ask ("may a client holding ``sup`` subscribe to
    ``sub``?"). It is exact: e.g. ``a.*`` is a subset of ``a.>`` and of ``*.*``, never of ``a.b``.

    Raises:
        InvalidSubject: when either argument is not a valid pattern.
    """
    return _covered(split_tokens(sub), [split_tokens(sup)])


def subjects_collide(a: str, b: str) -> bool:
    """Whether at least one literal subject is matched by both patterns ``a`` and ``b``.

    Raises:
        InvalidSubject: when either argument is not a valid pattern.
    """
    return _collide(split_tokens(a), split_tokens(b))


@final
class _Node(Generic[T]):
    """One trie level. ``exact`` holds values of patterns ending here; ``full`` of ``<here>.>``."""

    __slots__ = ("exact", "full", "literals", "star")

    def __init__(self) -> None:
        self.literals: dict[str, _Node[T]] = {}
        self.star: _Node[T] | None = None
        self.exact: list[T] = []
        self.full: list[T] = []

    def is_empty(self) -> bool:
        return not (self.literals or self.star or self.exact or self.full)


@final
class SubjectIndex(Generic[T]):
    """Many patterns, each with values, matched against a subject at once: a trie keyed by token.

    Like nats-server's sublist: each level has a dict of literal children, one ``*`` child and a
    list of values registered with a final ``>``. Matching a subject of ``k`` tokens visits at most
    the trie nodes its tokens select, independently of how many patterns are stored.

    Registrations form a multiset: adding the same ``(pattern, value)`` twice stores it twice, and a
    value registered under two patterns that both match a subject is returned twice (NATS delivers
    once per subscription too).

    Results are kept in a bounded LRU cache keyed by subject (``cache_size`` entries, ``0``
    disables it); any :meth:`add` or :meth:`remove` clears it, so a result is never stale.

    Not thread-safe: use it from one thread (the event loop's).
    """

    __slots__ = ("_cache", "_cache_size", "_count", "_root")

    def __init__(self, cache_size: int = _DEFAULT_CACHE_SIZE) -> None:
        """Create an empty index.

        Raises:
            ValueError: when ``cache_size`` is negative.
        """
        if cache_size < 0:
            raise ValueError(f"cache_size must be >= 0, got {cache_size}")
        self._root: _Node[T] = _Node()
        self._count = 0
        self._cache_size = cache_size
        self._cache: OrderedDict[str, tuple[T, ...]] = OrderedDict()

    def __len__(self) -> int:
        """Number of registrations (``(pattern, value)`` pairs, counted with multiplicity)."""
        return self._count

    def add(self, pattern: str, value: T) -> None:
        """Register ``value`` under ``pattern``.

        Raises:
            InvalidSubject: when ``pattern`` is not a valid pattern (nothing is changed).
        """
        node = self._root
        for token in split_tokens(pattern):
            if token == ">":
                node.full.append(value)
                break
            if token == "*":
                if node.star is None:
                    node.star = _Node()
                node = node.star
            else:
                child = node.literals.get(token)
                if child is None:
                    child = node.literals[token] = _Node()
                node = child
        else:
            node.exact.append(value)
        self._count += 1
        self._cache.clear()

    def remove(self, pattern: str, value: T) -> None:
        """Remove one registration of ``value`` (compared with ``==``) under exactly ``pattern``.

        Trie levels left empty are pruned, so memory follows the live registrations.

        Raises:
            KeyError: when ``(pattern, value)`` is not registered (nothing is changed).
            InvalidSubject: when ``pattern`` is not a valid pattern.
        """
        path: list[tuple[_Node[T], str]] = []
        node = self._root
        values: list[T]
        for token in split_tokens(pattern):
            if token == ">":
                values = node.full
                break
            path.append((node, token))
            child = node.star if token == "*" else node.literals.get(token)
            if child is None:
                raise KeyError((pattern, value))
            node = child
        else:
            values = node.exact
        try:
            values.remove(value)
        except ValueError:
            raise KeyError((pattern, value)) from None
        self._count -= 1
        self._cache.clear()
        for parent, token in reversed(path):
            child = parent.star if token == "*" else parent.literals[token]
            if child is None or not child.is_empty():
                break
            if token == "*":
                parent.star = None
            else:
                del parent.literals[token]

    def match(self, subject: str) -> list[T]:
        """Every value whose pattern matches the literal ``subject`` (a new list; yours to modify).

        Values come grouped by trie level (``>`` registrations of shorter prefixes first), and in
        insertion order within one pattern. ``subject`` is not validated (see the module docstring).
        """
        cache = self._cache
        cached = cache.get(subject)
        if cached is not None:
            cache.move_to_end(subject)
            return list(cached)
        result = self._collect(subject)
        if self._cache_size:
            cache[subject] = tuple(result)
            if len(cache) > self._cache_size:
                cache.popitem(last=False)
        return result

    def has_match(self, subject: str) -> bool:
        """Whether any pattern matches ``subject``; stops at the first match (no list is built)."""
        cached = self._cache.get(subject)
        if cached is not None:
            return bool(cached)
        nodes = [self._root]
        for token in subject.split("."):
            following: list[_Node[T]] = []
            for node in nodes:
                if node.full:
                    return True
                child = node.literals.get(token)
                if child is not None:
                    following.append(child)
                if node.star is not None:
                    following.append(node.star)
            if not following:
                return False
            nodes = following
        return any(node.exact for node in nodes)

    def _collect(self, subject: str) -> list[T]:
        result: list[T] = []
        nodes = [self._root]
        for token in subject.split("."):
            following: list[_Node[T]] = []
            for node in nodes:
                if node.full:
                    result.extend(node.full)
                child = node.literals.get(token)
                if child is not None:
                    following.append(child)
                if node.star is not None:
                    following.append(node.star)
            if not following:
                return result
            nodes = following
        for node in nodes:
            result.extend(node.exact)
        return result
