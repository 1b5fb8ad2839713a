"""Key files, their permissions, rotation and retirement, and pinned public keys."""

from __future__ import annotations

import base64
import os
import stat
import uuid
from pathlib import Path

import msgspec
import pytest

from conat.auth import (
    CredentialError,
    Keyring,
    KeyringError,
    PublicKeys,
    TokenError,
    TokenIssuer,
    TokenVerifier,
)
from subjects import Scope

T0 = 1_700_000_000.0
HOST = "host-" + str(uuid.UUID(int=0xA))
ACCOUNT = "account-" + str(uuid.UUID(int=1))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def key_file(keyring: Keyring, kid: str) -> Path:
    return keyring.path / f"{kid}.key"


def now() -> float:
    return T0


# -- files ----------------------------------------------------------------------------------------


def test_open_creates_a_private_directory_and_a_first_key(tmp_path: Path) -> None:
    keyring = Keyring.open(tmp_path / "a" / "keys")
    assert mode(tmp_path / "a") == 0o700
    assert mode(keyring.path) == 0o700
    assert keyring.kids == (keyring.current,)
    files = list(keyring.path.iterdir())
    assert [file.name for file in files] == [f"{keyring.current}.key"]
    assert mode(files[0]) == 0o600
    assert set(keyring.public_keys()) == {keyring.current}
    assert len(keyring.public_keys()[keyring.current]) == 32


def test_reopen_loads_the_same_keys(tmp_path: Path) -> None:
    first = Keyring.open(tmp_path)
    rotated = first.rotate()
    second = Keyring.open(tmp_path)
    assert second.current == rotated
    assert second.kids == first.kids
    assert second.public_keys() == first.public_keys()
    assert second.sign(rotated, b"x") == first.sign(rotated, b"x")  # Ed25519 is deterministic


def test_default_path_is_in_the_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONAT_DATA_DIR", str(tmp_path / "data"))
    keyring = Keyring.open()
    assert keyring.path == tmp_path / "data" / "keys"
    assert mode(keyring.path) == 0o700


def test_open_without_create(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir(mode=0o700)
    with pytest.raises(KeyringError) as info:
        Keyring.open(tmp_path / "keys", create=False)
    assert info.value.code == "no-keys"
    with pytest.raises(KeyringError):
        Keyring.open(tmp_path / "missing", create=False)
    Keyring.open(tmp_path / "keys")
    assert Keyring.open(tmp_path / "keys", create=False).kids


@pytest.mark.parametrize("bad_mode", [0o644, 0o640, 0o604, 0o660, 0o602])
def test_a_key_file_others_can_access_is_refused(tmp_path: Path, bad_mode: int) -> None:
    keyring = Keyring.open(tmp_path)
    path = key_file(keyring, keyring.current)
    os.chmod(path, bad_mode)
    with pytest.raises(KeyringError) as info:
        Keyring.open(tmp_path)
    assert info.value.code == "insecure-key-file"
    assert isinstance(info.value, CredentialError)
    assert str(path) in str(info.value)
    assert info.value.path == str(path)
    seed = msgspec.json.decode(path.read_bytes())["seed"]
    assert seed not in str(info.value)


def test_a_writable_key_directory_is_refused(tmp_path: Path) -> None:
    Keyring.open(tmp_path / "keys")
    os.chmod(tmp_path / "keys", 0o777)
    with pytest.raises(KeyringError) as info:
        Keyring.open(tmp_path / "keys")
    assert info.value.code == "insecure-key-dir"
    assert str(tmp_path / "keys") in str(info.value)


def test_a_symlinked_key_file_is_refused(tmp_path: Path) -> None:
    keyring = Keyring.open(tmp_path / "keys")
    path = key_file(keyring, keyring.current)
    target = tmp_path / "elsewhere"
    path.rename(target)
    path.symlink_to(target)
    with pytest.raises(KeyringError) as info:
        Keyring.open(tmp_path / "keys")
    assert info.value.code == "bad-key-file"


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not json",
        b'{"kid": "x"}',
        b'{"kid": "\xff\xfe"}',
        b'{"kid": "KID", "serial": 1, "created": 0, "seed": "AAAA"}',
        b'{"kid": "KID", "serial": 1, "created": 0, "seed": "%s", "alg": "rsa"}',
    ],
)
def test_a_corrupt_key_file_is_refused(tmp_path: Path, content: bytes) -> None:
    keyring = Keyring.open(tmp_path)
    path = key_file(keyring, keyring.current)
    path.write_bytes(content.replace(b"KID", keyring.current.encode()).replace(b"%s", b"A" * 43))
    with pytest.raises(KeyringError) as info:
        Keyring.open(tmp_path)
    assert info.value.code == "bad-key-file"
    assert str(path) in str(info.value)


def test_a_key_file_under_another_name_is_refused(tmp_path: Path) -> None:
    keyring = Keyring.open(tmp_path)
    key_file(keyring, keyring.current).rename(tmp_path / "renamed.key")
    with pytest.raises(KeyringError) as info:
        Keyring.open(tmp_path)
    assert info.value.code == "bad-key-file"


def test_other_files_are_ignored(tmp_path: Path) -> None:
    keyring = Keyring.open(tmp_path)
    (tmp_path / "README").write_text("hello")
    (tmp_path / ".tmp.key.123.tmp").write_text("partial")
    assert Keyring.open(tmp_path).kids == keyring.kids


def test_seeds_never_appear_in_reprs(tmp_path: Path) -> None:
    keyring = Keyring.open(tmp_path)
    keyring.rotate()
    seeds = [msgspec.json.decode(file.read_bytes())["seed"] for file in tmp_path.glob("*.key")]
    text = repr(keyring) + repr(keyring.public()) + repr(keyring._keys)
    assert keyring.current in repr(keyring)
    for seed in seeds:
        assert seed not in text
        raw = base64.urlsafe_b64decode(seed + "=")
        assert raw.hex() not in text


# -- rotation -------------------------------------------------------------------------------------


def test_rotation(tmp_path: Path) -> None:
    clock = now
    keyring = Keyring.open(tmp_path)
    issuer = TokenIssuer(keyring, clock=clock)
    verifier = TokenVerifier(keyring, audience=HOST, clock=clock)
    old = keyring.current
    old_token = issuer.issue(ACCOUNT, HOST, Scope(), 600)

    new = keyring.rotate()
    assert new != old and keyring.current == new
    assert keyring.kids == (old, new)
    assert mode(key_file(keyring, new)) == 0o600
    new_token = issuer.issue(ACCOUNT, HOST, Scope(), 600)
    assert verifier.verify(new_token).kid == new
    assert verifier.verify(old_token).kid == old  # still verifies until retired

    keyring.retire(old)
    assert not key_file(keyring, old).exists()
    assert keyring.kids == (new,)
    with pytest.raises(TokenError) as info:
        verifier.verify(old_token)
    assert info.value.code == "unknown-kid"
    assert verifier.verify(new_token).kid == new
    assert Keyring.open(tmp_path).kids == (new,)  # retirement is on disk


def test_many_rotations_keep_order(tmp_path: Path) -> None:
    keyring = Keyring.open(tmp_path)
    kids = [keyring.current] + [keyring.rotate() for _ in range(5)]
    assert keyring.kids == tuple(kids)
    assert Keyring.open(tmp_path).kids == tuple(kids)
    assert Keyring.open(tmp_path).current == kids[-1]


def test_retire_refusals(tmp_path: Path) -> None:
    keyring = Keyring.open(tmp_path)
    with pytest.raises(KeyringError) as info:
        keyring.retire(keyring.current)
    assert info.value.code == "retire-current"
    with pytest.raises(KeyringError) as info:
        keyring.retire("nope")
    assert info.value.code == "unknown-kid"
    with pytest.raises(KeyringError) as info:
        keyring.sign("nope", b"x")
    assert info.value.code == "unknown-kid"


def test_reload_sees_another_process(tmp_path: Path) -> None:
    mine = Keyring.open(tmp_path)
    theirs = Keyring.open(tmp_path)
    new = theirs.rotate()
    assert mine.current != new
    mine.reload()
    assert mine.current == new


# -- pinned public keys ---------------------------------------------------------------------------


def test_export_and_import(tmp_path: Path) -> None:
    keyring = Keyring.open(tmp_path / "keys")
    keyring.rotate()
    exported = keyring.export_public()
    assert msgspec.json.decode(exported).keys() == set(keyring.kids)
    pinned = PublicKeys.from_export(exported)
    assert dict(pinned) == keyring.public_keys()
    assert pinned.public_keys() == keyring.public_keys()
    assert len(pinned) == 2 and keyring.current in pinned
    assert PublicKeys.from_export(exported.encode()) == pinned
    assert pinned.export() == exported
    assert "PublicKeys" in repr(pinned)

    issuer = TokenIssuer(keyring, clock=now)
    verifier = TokenVerifier(pinned, audience=HOST, clock=now)
    assert verifier.verify(issuer.issue(ACCOUNT, HOST, Scope(), 60)).sub == ACCOUNT
    # Plain JSON strings work as well as bytes.
    as_strings = msgspec.json.decode(exported)
    assert TokenVerifier(as_strings, audience=HOST, clock=now).verify(
        issuer.issue(ACCOUNT, HOST, Scope(), 60)
    )


def test_save_and_load(tmp_path: Path) -> None:
    keyring = Keyring.open(tmp_path / "keys")
    path = tmp_path / "pinned.json"
    keyring.public().save(path)
    assert mode(path) == 0o600
    assert PublicKeys.load(path) == keyring.public()
    os.chmod(path, 0o644)  # public keys may be world-readable...
    assert PublicKeys.load(path) == keyring.public()
    os.chmod(path, 0o666)  # ...but not writable by others
    with pytest.raises(KeyringError) as info:
        PublicKeys.load(path)
    assert info.value.code == "insecure-key-file"
    with pytest.raises(KeyringError) as info:
        PublicKeys.load(tmp_path / "missing.json")
    assert info.value.code == "bad-key-file"
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(KeyringError) as info:
        PublicKeys.load(tmp_path / "bad.json")
    assert info.value.code == "bad-public-keys"
    assert str(tmp_path / "bad.json") in str(info.value)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "nope",
        "[]",
        b'{"k": "\xff"}',
        '{"k": 1}',
        '{"k": "AAAA"}',
        '{"bad kid": "' + "A" * 43 + '"}',
        '{"k": "' + "A" * 42 + '"}',
    ],
)
def test_bad_exports(text: str | bytes) -> None:
    with pytest.raises(KeyringError) as info:
        PublicKeys.from_export(text)
    assert info.value.code == "bad-public-keys"


def test_public_keys_validate(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="32-byte"):
        PublicKeys({"k": b"short"})
    assert PublicKeys({}) == {}
