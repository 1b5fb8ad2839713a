"""Storage paths and placement: parsing, normalization, scopes, overrides, and no escape from a root."""

import posixpath
import uuid
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from persist import (
    ENV_VARS,
    MAX_NAME_BYTES,
    MAX_PART_BYTES,
    BadConfig,
    BadPath,
    OutsideScope,
    Placement,
    PlacementConfig,
    StoragePath,
)

P = "12345678-1234-1234-1234-123456789abc"
A = "aaaaaaaa-1234-1234-1234-123456789abc"
H = "bbbbbbbb-1234-1234-1234-123456789abc"


@pytest.mark.parametrize(
    ("text", "kind", "ident", "name"),
    [
        (f"projects/{P}/x", "project", P, "x"),
        (f"accounts/{A}/a/b/c", "account", A, "a/b/c"),
        (f"hosts/{H}/bootlog", "host", H, "bootlog"),
        ("hub/x", "hub", None, "x"),
        ("hub/./a/../b", "hub", None, "b"),
        ("hub/ünïcode name", "hub", None, "ünïcode name"),
        ("hub/x.db-wal", "hub", None, "x.db-wal"),
    ],
)
def test_parse(text: str, kind: str, ident: str | None, name: str) -> None:
    sp = StoragePath.parse(text)
    assert (sp.kind, sp.id, sp.name) == (kind, ident, name)
    assert StoragePath.parse(str(sp)) == sp


def test_scope_and_of() -> None:
    sp = StoragePath.of("project", uuid.UUID(P), "a/./b")
    assert str(sp) == f"projects/{P}/a/b"
    assert sp.scope_path == f"projects/{P}"
    assert sp.scope == f"project-{P}"
    assert StoragePath.of("hub", None, "x").scope == "hub"
    with pytest.raises(BadPath):
        StoragePath.of("hub", P, "x")
    with pytest.raises(BadPath):
        StoragePath(kind="hub", id=None, name="a/../b")  # direct construction needs a normal name
    with pytest.raises(BadPath):
        StoragePath(kind="planet", id=None, name="x")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "/hub/x",
        "hub",
        "hub/",
        "hub/a//b",
        "hub/a/",
        "hub/.",
        "hub/a\0b",
        "hub/a\nb",
        "hub/x.db/y",
        "hub/X.DB",
        "hub/" + "x" * (MAX_PART_BYTES + 1),
        "hub/" + "/".join(["x" * 100] * (MAX_NAME_BYTES // 100 + 1)),
        "hub/\ud800",
        "planets/x",
        f"projects/{P}",
        f"projects/{P}/",
        f"projects/{P.upper()}/x",
        "projects/not-a-uuid/x",
        "projects//x",
        f"projects/{{{P}}}/x",
        "./hub/x",
    ],
)
def test_bad_paths(text: str) -> None:
    with pytest.raises(BadPath) as info:
        StoragePath.parse(text)
    assert info.value.code == "bad-path"
    assert not isinstance(info.value, OutsideScope)


@pytest.mark.parametrize(
    "text",
    [
        "../x",
        "hub/..",
        "hub/../x",
        "hub/a/../../x",
        f"projects/{P}/../x",
        f"projects/{P}/../../hub/x",
        "projects/../x",
    ],
)
def test_outside_scope(text: str) -> None:
    with pytest.raises(OutsideScope) as info:
        StoragePath.parse(text)
    assert info.value.code == "outside-scope"


@pytest.mark.parametrize("value", [None, 3, b"hub/x", ["hub", "x"]])
def test_wrong_types(value: object) -> None:
    with pytest.raises(BadPath):
        StoragePath.parse(value)  # type: ignore[arg-type]


def test_default_layout() -> None:
    placement = Placement(default_root="/var/sync")
    assert placement.path(f"projects/{P}/a/b") == Path(f"/var/sync/projects/{P}/a/b.db")
    assert placement.path("hub/x") == Path("/var/sync/hub/x.db")
    assert placement.archive_path("hub/x") is None
    assert placement.backup_path("hub/x") is None


def test_default_root_is_under_the_data_dir(conat_data_dir: Path) -> None:
    assert Placement().path("hub/x") == conat_data_dir / "sync" / "hub" / "x.db"


def test_overrides_from_env() -> None:
    env = {
        "CONAT_SYNC": "/srv/sync/",
        "CONAT_SYNC_PROJECTS": "/data/projects/[project_id]/.local/share/conat/persist",
        "CONAT_SYNC_ACCOUNTS": "/data/accounts",
        "CONAT_SYNC_HOSTS": "/h/[host_id]/p",
        "CONAT_SYNC_HUB": "/hubdata",
        "CONAT_SYNC_ARCHIVE": "/archive",
        "CONAT_SYNC_BACKUP": "/backup",
    }
    placement = Placement(PlacementConfig.from_env(env))
    assert placement.path(f"projects/{P}/x") == Path(f"/data/projects/{P}/.local/share/conat/persist/x.db")
    assert (
        placement.root_of(StoragePath.parse(f"projects/{P}/x"))
        == f"/data/projects/{P}/.local/share/conat/persist"
    )
    assert placement.path(f"accounts/{A}/x") == Path(f"/data/accounts/{A}/x.db")  # no placeholder: id added
    assert placement.path(f"hosts/{H}/y/z") == Path(f"/h/{H}/p/y/z.db")
    assert placement.path("hub/x") == Path("/hubdata/x.db")
    assert placement.archive_path(f"projects/{P}/x") == Path(f"/archive/projects/{P}/x.db")
    assert placement.backup_path("hub/x") == Path("/backup/hub/x.db")
    assert placement.root == "/srv/sync"


def test_lock_roots_cover_every_directory_a_file_is_reached_from() -> None:
    env = {
        "CONAT_SYNC": "/srv/sync/",
        "CONAT_SYNC_PROJECTS": "/data/projects/[project_id]/.local/share/conat/persist",
        "CONAT_SYNC_ACCOUNTS": "/data/accounts",
        "CONAT_SYNC_HUB": "/srv/sync",
        "CONAT_SYNC_ARCHIVE": "/archive",
        "CONAT_SYNC_BACKUP": "/backup",
    }
    placement = Placement(PlacementConfig.from_env(env))
    roots = [Path(p) for p in ("/archive", "/data/accounts", "/data/projects", "/srv/sync")]
    assert placement.lock_roots() == roots
    for path in (f"projects/{P}/x", f"accounts/{A}/x", f"hosts/{H}/x", "hub/x"):
        root, _ = placement.locate(path)
        assert root in roots
    assert Placement(default_root="/d").lock_roots() == [Path("/d")]


def test_empty_env_is_unset() -> None:
    assert PlacementConfig.from_env({"CONAT_SYNC_HUB": ""}) == PlacementConfig()


def test_env_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONAT_SYNC_HUB", "/from/environ")
    assert PlacementConfig.from_env().hub == "/from/environ"


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"CONAT_SYNC": "relative/root"}, "CONAT_SYNC"),
        ({"CONAT_SYNC_HUB": "~/x"}, "CONAT_SYNC_HUB"),
        ({"CONAT_SYNC_PROJECTS": "/x/[account_id]"}, "CONAT_SYNC_PROJECTS"),
        ({"CONAT_SYNC_HUB": "/x/[project_id]"}, "CONAT_SYNC_HUB"),
        ({"CONAT_SYNC_ARCHIVE": "/x/[host_id]"}, "CONAT_SYNC_ARCHIVE"),
        ({"CONAT_SYNC_BACKUP": "/x\0y"}, "CONAT_SYNC_BACKUP"),
    ],
)
def test_bad_env(env: dict[str, str], field: str) -> None:
    with pytest.raises(BadConfig) as info:
        PlacementConfig.from_env(env)
    assert info.value.field == field


def test_toml() -> None:
    text = """
    [server]
    port = 4222

    [sync]
    root = "/toml/root"
    projects = "/toml/projects/[project_id]"
    backup = "/toml/backup"
    """
    config = PlacementConfig.from_toml(text)
    assert config == PlacementConfig(
        root="/toml/root", projects="/toml/projects/[project_id]", backup="/toml/backup"
    )
    assert PlacementConfig.from_toml(text.encode()) == config
    assert PlacementConfig.from_toml("") == PlacementConfig()
    placement = Placement.from_sources(toml=text, env={"CONAT_SYNC": "/env/root"})
    assert placement.root == "/env/root"  # the environment wins, key by key
    assert placement.path(f"projects/{P}/x") == Path(f"/toml/projects/{P}/x.db")
    assert placement.path("hub/x") == Path("/env/root/hub/x.db")


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("[sync]\nprojcts = '/x'\n", "sync.projcts"),
        ("[sync]\nprojects = 3\n", "sync.projects"),
        ("[sync]\nroot = 'rel'\n", "sync.root"),
        ("sync = 3\n", "sync"),
        ("[sync\n", "toml"),
        (b"\xff", "toml"),
    ],
)
def test_bad_toml(text: str | bytes, field: str) -> None:
    with pytest.raises(BadConfig) as info:
        PlacementConfig.from_toml(text)
    assert info.value.field == field


def test_overlay() -> None:
    base = PlacementConfig(root="/a", hub="/h")
    assert base.overlay(PlacementConfig(root="/b")) == PlacementConfig(root="/b", hub="/h")
    assert set(ENV_VARS) == set(PlacementConfig.__struct_fields__)


def test_placement_rejects_relative_default_root() -> None:
    with pytest.raises(BadConfig):
        Placement(default_root="relative")


# ---- properties ---------------------------------------------------------------------------------

name_parts = st.one_of(
    st.sampled_from([".", "..", "", "a", "b.db", "x.db-wal", "~", "-", " "]),
    st.text(min_size=0, max_size=12),
)
names = st.lists(name_parts, min_size=0, max_size=8).map("/".join)
prefixes = st.sampled_from(
    [f"projects/{P}/", f"accounts/{A}/", f"hosts/{H}/", "hub/", "", "/", "../", "projects/"]
)
placements = st.sampled_from(
    [
        Placement(default_root="/r"),
        Placement(default_root="/"),
        Placement(
            PlacementConfig(
                projects="/d/[project_id]/p",
                accounts="/acc",
                hosts="/h/[host_id]",
                hub="/hub/../hubroot",
                archive="/arch",
                backup="/",
            ),
            default_root="/r",
        ),
    ]
)


def _strictly_inside(path: Path, root: str) -> bool:
    text = str(path)
    base = posixpath.normpath(root)
    return text != base and text.startswith(base.rstrip("/") + "/") and posixpath.normpath(text) == text


@given(prefixes, names, placements)
def test_no_path_escapes_its_root(prefix: str, name: str, placement: Placement) -> None:
    """Any text either fails with bad-path/outside-scope or resolves strictly inside its root(s)."""
    text = prefix + name
    try:
        sp = StoragePath.parse(text)
    except BadPath:
        return
    assert StoragePath.parse(str(sp)) == sp  # the canonical text round-trips
    assert ".." not in sp.name.split("/") and "." not in sp.name.split("/")
    file = placement.path(sp)
    assert file.name.endswith(".db")
    assert _strictly_inside(file, placement.root_of(sp))
    for mirror, root in ((placement.archive_path(sp), placement.config.archive),):
        if mirror is not None and root is not None:
            assert _strictly_inside(mirror, root)
            assert str(mirror).endswith("/" + str(sp) + ".db")
    # Each scope's files stay under that scope's directory: no two scopes can share a file.
    if sp.id is not None:
        assert sp.id in str(file)


@given(st.sampled_from(["project", "account", "host", "hub"]), st.uuids(), names)
def test_of_round_trip(kind: str, ident: uuid.UUID, name: str) -> None:
    try:
        sp = StoragePath.of(kind, None if kind == "hub" else ident, name)  # type: ignore[arg-type]
    except BadPath:
        return
    assert StoragePath.parse(str(sp)) == sp
    assert StoragePath.of(sp.kind, sp.id, sp.name) == sp


@given(st.lists(st.text(alphabet="ab./", max_size=6), min_size=1, max_size=4).map("/".join))
def test_distinct_names_distinct_files(name: str) -> None:
    """Two canonical names never map to the same file, nor a file to another's directory."""
    placement = Placement(default_root="/r")
    try:
        sp = StoragePath.parse("hub/" + name)
    except BadPath:
        return
    other = StoragePath.parse("hub/" + sp.name + "/child")
    assert not str(placement.path(other)).startswith(str(placement.path(sp)) + "/")
    assert placement.path(other) != placement.path(sp)
