"""Secret files are checked on the descriptor that reads them: no symlink followed, regular files
of this user only, no access for others (public keys: readable, never writable), bounded size.
And every reader of secrets uses that check: token files, pinned keys, key files. Private files are
written by one writer: atomic, 0600 from the first byte, never through a symlink or a file that
was already there."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from conat._credentials import TokenFile
from conat.auth import (
    Keyring,
    KeyringError,
    PublicKeys,
    SecretFileError,
    read_private_file,
    write_private_file,
)

pytestmark = pytest.mark.anyio


def secret(tmp_path: Path, name: str = "secret", data: bytes = b"s3cr3t\n", mode: int = 0o600) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    path.chmod(mode)
    return path


def refusal(path: Path, **options: object) -> str:
    with pytest.raises(SecretFileError) as e:
        read_private_file(path, **options)  # type: ignore[arg-type]
    assert str(path) in str(e.value)
    return str(e.value.code)


def test_a_private_regular_file_is_read(tmp_path: Path) -> None:
    assert read_private_file(secret(tmp_path)) == b"s3cr3t\n"
    write_private_file(tmp_path / "written", b"abc")
    assert (tmp_path / "written").stat().st_mode & 0o777 == 0o600
    assert read_private_file(tmp_path / "written") == b"abc"


def test_a_symlink_is_refused_even_to_a_private_file(tmp_path: Path) -> None:
    target = secret(tmp_path, "target")
    (tmp_path / "link").symlink_to(target)
    assert refusal(tmp_path / "link") == "not-a-file"
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    assert refusal(tmp_path / "dangling") == "not-a-file"


def test_what_is_not_a_regular_file_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo", 0o600)  # opening a FIFO for reading would wait for a writer
    done = threading.Event()

    def read() -> None:
        assert refusal(tmp_path / "fifo") == "not-a-file"
        done.set()

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    assert done.wait(10), "reading a FIFO blocked"
    (tmp_path / "dir").mkdir(mode=0o700)
    assert refusal(tmp_path / "dir") == "not-a-file"
    assert refusal(tmp_path / "missing") == "missing"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o666, 0o700 | 0o004])
def test_a_secret_others_may_access_is_refused(tmp_path: Path, mode: int) -> None:
    assert refusal(secret(tmp_path, mode=mode)) == "insecure"


def test_public_data_may_be_read_by_others_but_never_written(tmp_path: Path) -> None:
    assert read_private_file(secret(tmp_path, mode=0o644), allowed_mode=0o644) == b"s3cr3t\n"
    assert read_private_file(secret(tmp_path, mode=0o744), allowed_mode=0o644)  # owner bits never matter
    assert refusal(secret(tmp_path, mode=0o664), allowed_mode=0o644) == "insecure"
    assert refusal(secret(tmp_path, mode=0o646), allowed_mode=0o644) == "insecure"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to give a file away")
def test_a_file_of_another_user_is_refused(tmp_path: Path) -> None:
    path = secret(tmp_path)
    os.chown(path, 65534, 65534)
    assert refusal(path) == "foreign-owner"


def test_size_is_bounded_before_reading(tmp_path: Path) -> None:
    assert refusal(secret(tmp_path, data=b"x" * 101), max_size=100) == "too-large"
    assert read_private_file(secret(tmp_path, data=b"x" * 100), max_size=100) == b"x" * 100


def test_the_content_is_never_in_the_message(tmp_path: Path) -> None:
    path = secret(tmp_path, data=b"TOPSECRET", mode=0o644)
    with pytest.raises(SecretFileError) as e:
        read_private_file(path)
    assert "TOPSECRET" not in str(e.value)


async def test_a_token_file_is_checked_on_what_is_opened(tmp_path: Path) -> None:
    """It used to be stat-then-read by path: a symlink to a 0600 file was followed."""
    target = secret(tmp_path, "token", b"conat1.token\n")
    assert await TokenFile(target).fetch() == "conat1.token"
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(SecretFileError) as e:
        await TokenFile(tmp_path / "link").fetch()
    assert e.value.code == "not-a-file"
    target.chmod(0o640)
    with pytest.raises(SecretFileError) as e:
        await TokenFile(target).fetch()
    assert e.value.code == "insecure"


def test_pinned_keys_are_checked_on_what_is_opened(tmp_path: Path) -> None:
    keyring = Keyring.open(tmp_path / "keys")
    keyring.public().save(tmp_path / "pinned.json")
    (tmp_path / "link.json").symlink_to(tmp_path / "pinned.json")
    with pytest.raises(KeyringError) as e:
        PublicKeys.load(tmp_path / "link.json")
    assert e.value.code == "bad-key-file" and "symlink" in str(e.value)


# -- writing -------------------------------------------------------------------------------------


def test_write_private_file_is_0600_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "secret"
    target.write_text("old")
    os.chmod(target, 0o644)
    write_private_file(target, b"new")
    assert target.read_bytes() == b"new"
    assert target.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret"]


def test_a_symlink_at_the_target_is_replaced_never_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    victim.chmod(0o644)
    (tmp_path / "state.json").symlink_to(victim)
    write_private_file(tmp_path / "state.json", b"{}")
    assert victim.read_bytes() == b"keep me" and victim.stat().st_mode & 0o777 == 0o644
    assert not (tmp_path / "state.json").is_symlink()
    assert read_private_file(tmp_path / "state.json") == b"{}"


def test_nothing_already_beside_the_target_is_written_through(tmp_path: Path) -> None:
    """A file or symlink left where a writer would put its temporary file (a crashed writer of the
    same pid, or someone else's) is never opened: the new file is created, 0600, or nothing is."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    stale = tmp_path / f".host.json.{os.getpid()}"
    stale.write_bytes(b"stale")
    stale.chmod(0o666)
    (tmp_path / f".admin.token.{os.getpid()}").symlink_to(victim)
    write_private_file(tmp_path / "host.json", b'{"pid": 1}')
    write_private_file(tmp_path / "admin.token", b"token")
    assert (tmp_path / "host.json").stat().st_mode & 0o777 == 0o600
    assert read_private_file(tmp_path / "admin.token") == b"token"
    assert victim.read_bytes() == b"keep me"


def test_concurrent_writers_of_one_path_each_write_a_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "state"
    contents = [bytes([65 + i]) * 200_000 for i in range(8)]
    errors: list[BaseException] = []

    def write(data: bytes) -> None:
        try:
            for _ in range(5):
                write_private_file(target, data)
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=write, args=(data,)) for data in contents]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert target.read_bytes() in contents
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state"]


def test_a_failed_write_leaves_the_target_and_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "state"
    write_private_file(target, b"v1")
    with pytest.raises(TypeError):
        write_private_file(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state"]
