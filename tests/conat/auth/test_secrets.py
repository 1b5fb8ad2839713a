"""The bus's own secrets are read like every secret: no symlink followed, nothing others may
access; and the bus names its server after itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from conat import ConatError, ServerConfig
from conat.auth import AuthBus, BusSecrets, Keyring, SecretFileError

from .conftest import BUS

pytestmark = pytest.mark.anyio


def test_secrets_are_created_private_and_read_back(tmp_path: Path) -> None:
    created = BusSecrets.load_or_create(tmp_path / "secrets")
    assert (tmp_path / "secrets").stat().st_mode & 0o777 == 0o700
    assert all(f.stat().st_mode & 0o777 == 0o600 for f in (tmp_path / "secrets").iterdir())
    assert BusSecrets.load(tmp_path / "secrets") == created
    assert created.auth_password not in repr(created)


def test_a_symlinked_secret_is_refused(tmp_path: Path) -> None:
    """It used to be stat-then-read by path: a symlink to a 0600 file was followed."""
    BusSecrets.load_or_create(tmp_path / "secrets")
    seed = tmp_path / "secrets" / "issuer.seed"
    seed.rename(tmp_path / "elsewhere.seed")
    seed.symlink_to(tmp_path / "elsewhere.seed")
    with pytest.raises(SecretFileError) as e:
        BusSecrets.load_or_create(tmp_path / "secrets")
    assert e.value.code == "not-a-file" and str(seed) in str(e.value)


def test_a_secret_others_may_read_is_refused(tmp_path: Path) -> None:
    BusSecrets.load_or_create(tmp_path / "secrets")
    (tmp_path / "secrets" / "sys.password").chmod(0o640)
    with pytest.raises(SecretFileError) as e:
        BusSecrets.load(tmp_path / "secrets")
    assert e.value.code == "insecure"


def test_the_secrets_directory_must_be_a_private_directory(tmp_path: Path) -> None:
    BusSecrets.load_or_create(tmp_path / "real")
    (tmp_path / "secrets").symlink_to(tmp_path / "real")
    with pytest.raises(ConatError, match="symlink"):
        BusSecrets.load_or_create(tmp_path / "secrets")
    (tmp_path / "real").chmod(0o777)
    with pytest.raises(ConatError, match="writable by group or others"):
        BusSecrets.load(tmp_path / "real")


def test_a_second_responder_never_creates_secrets(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir(mode=0o700)
    with pytest.raises(SecretFileError) as e:
        BusSecrets.load(tmp_path / "secrets")
    assert e.value.code == "missing"
    assert list((tmp_path / "secrets").iterdir()) == []


async def test_a_bus_names_its_server_after_itself(tmp_path: Path) -> None:
    keys = Keyring.open(tmp_path / "keys").public_keys()
    async with await AuthBus.start(
        bus=BUS, public_keys=keys, directory=tmp_path / "a", config=ServerConfig(server_name="n1")
    ) as bus:
        assert bus.server.config.server_name == f"conat-{BUS}.n1"
    with pytest.raises(ValueError, match="names bus 'master'"):
        await AuthBus.start(
            bus=BUS,
            public_keys=keys,
            directory=tmp_path / "b",
            config=ServerConfig(server_name="conat-master"),
        )
