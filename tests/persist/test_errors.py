"""Every persist error: its stable code, its structured fields, and a message built from them."""

import pytest

import persist
from conat import ConatError


@pytest.mark.parametrize(
    ("error", "code", "fields", "text"),
    [
        (
            persist.Rejected("max_msgs", 10, "the stream is full"),
            "reject",
            {"limit": "max_msgs", "value": 10},
            "max_msgs=10",
        ),
        (
            persist.WrongLastSequence(3, 5, "k"),
            "wrong-last-sequence",
            {"expected": 3, "actual": 5, "key": "k"},
            "expected 3, actual 5",
        ),
        (persist.BadPath("x", "nope"), "bad-path", {"path": "x", "reason": "nope"}, "'x'"),
        (
            persist.OutsideScope("hub/../x", "hub"),
            "outside-scope",
            {"path": "hub/../x", "scope": "hub"},
            "hub",
        ),
        (
            persist.TooLarge("key", 5000, 4096),
            "too-large",
            {"what": "key", "size": 5000, "limit": 4096},
            "5000",
        ),
        (persist.BadConfig("max_msgs", "bad"), "bad-config", {"field": "max_msgs"}, "max_msgs"),
        (persist.BadRequest("set", "bad"), "bad-request", {"op": "set"}, "set"),
        (persist.NotFound("stream hub/x"), "not-found", {"what": "stream hub/x"}, "hub/x"),
        (
            persist.Corrupt("/a.db", "bad page"),
            "corrupt",
            {"what": "/a.db", "detail": "bad page"},
            "bad page",
        ),
        (
            persist.StorageError("write", "/a.db", "SQLITE_FULL: database or disk is full"),
            "storage",
            {"operation": "write", "path": "/a.db"},
            "SQLITE_FULL",
        ),
        (
            persist.RootInUse("/srv/sync", "pid 42 on a since t"),
            "root-in-use",
            {"root": "/srv/sync", "holder": "pid 42 on a since t"},
            "pid 42",
        ),
    ],
)
def test_codes_fields_and_messages(
    error: persist.PersistError, code: str, fields: dict[str, object], text: str
) -> None:
    assert isinstance(error, persist.PersistError)
    assert isinstance(error, ConatError)
    assert error.code == code
    for name, value in fields.items():
        assert getattr(error, name) == value
    assert text in str(error)
    assert error.message == str(error)


def test_value_errors() -> None:
    for cls in (persist.BadConfig, persist.BadRequest, persist.BadPath, persist.TooLarge):
        assert issubclass(cls, ValueError)
    assert issubclass(persist.OutsideScope, persist.BadPath)


def test_codes_are_distinct() -> None:
    classes: list[type[persist.PersistError]] = [
        persist.Rejected,
        persist.WrongLastSequence,
        persist.BadPath,
        persist.OutsideScope,
        persist.TooLarge,
        persist.BadConfig,
        persist.BadRequest,
        persist.NotFound,
        persist.Corrupt,
        persist.StorageError,
        persist.RootInUse,
        persist.TooSlow,
    ]
    codes = [cls.code for cls in classes]
    assert len(set(codes)) == len(codes)
