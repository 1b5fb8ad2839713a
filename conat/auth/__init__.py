"""conat.auth: the bus's security, in one home: keys, tokens, the auth callout, the audit log, and
starting a bus that only authorized clients can use. We decide here; nats-server enforces.

Credentials (what clients and issuers use; no bus needed):

* nkeys (:class:`KeyPair`, :func:`decode_public_key`...): Ed25519 keys as checksummed base32.
* xkeys (:class:`CurveKeyPair`): X25519 keys and the ``xkv1`` box that hides callout requests.
* JWTs (:func:`encode_jwt`, :func:`verify_jwt`): claims signed by an nkey.
* callout claims (:func:`parse_authorization_request`, :func:`user_jwt`,
  :func:`authorization_response`): what nats-server asks and what a responder answers.
* conat tokens (:class:`TokenIssuer`, :class:`TokenVerifier`): our own short-lived Ed25519-signed
  claims; :class:`Keyring` holds and rotates their signing keys, :class:`PublicKeys` pins them.
* API keys (:func:`new_api_key`, :func:`verify_api_key`): secrets shown once, stored scrypt-hashed.
* private files (:func:`read_private_file`, :func:`write_private_file`): seeds, passwords, tokens,
  pinned keys and every other 0600 file, written atomically and private from the first byte, read
  without following symlinks and checked (owner, mode, size) on the descriptor that reads them.

The bus side (a bus with the auth callout; the model is in ``docs/auth.md``):

* :class:`AuthBus`: nats-server with the auth callout configured, plus one responder; on a cluster,
  :meth:`AuthBus.join` gives a :class:`BusJoin` and :class:`AuthNode` starts another node of the bus
  with it (no seed: the bus directory stays the bus's one authority).
* :class:`AuthResponder`: one callout responder (several share a bus), revocation and kicks.
* :class:`AuthCallout`: the callout itself, a plain conat service (shown in ``$SRV``) that asks a
  :class:`Decider`; :class:`AuthStore` (revocation floors, used one-time tokens) and
  :class:`AuditLog` (every decision) are the bus's durable state.

The bus side uses the conat client, which itself reads tokens with the credentials above; so its
names are loaded on first use (``from conat.auth import AuthBus`` works as usual), and importing
``conat`` never needs the client half-built.

Every failure on untrusted input is a :class:`CredentialError` (a :class:`conat.ConatError`) with
a stable ``code``; :mod:`conat.auth._errors` draws the tree and lists every code.
"""

# Re-exports, one block per module: add a new module's names as a new block, and keep __all__ sorted
# (tests/test_exported_members.py checks it). The bus side is in _BUS_SIDE (loaded on first use).

import importlib as _importlib
import typing as _typing

from ._apikeys import API_KEY_PREFIX as API_KEY_PREFIX
from ._apikeys import ApiKeyRecord as ApiKeyRecord
from ._apikeys import api_key_id as api_key_id
from ._apikeys import new_api_key as new_api_key
from ._apikeys import verify_api_key as verify_api_key
from ._errors import ApiKeyError as ApiKeyError
from ._errors import ApiKeyErrorCode as ApiKeyErrorCode
from ._errors import AuthStoreError as AuthStoreError
from ._errors import CredentialError as CredentialError
from ._errors import JwtError as JwtError
from ._errors import JwtErrorCode as JwtErrorCode
from ._errors import KeyringError as KeyringError
from ._errors import KeyringErrorCode as KeyringErrorCode
from ._errors import NkeyError as NkeyError
from ._errors import NkeyErrorCode as NkeyErrorCode
from ._errors import SecretFileError as SecretFileError
from ._errors import SecretFileErrorCode as SecretFileErrorCode
from ._errors import TokenError as TokenError
from ._errors import TokenErrorCode as TokenErrorCode
from ._errors import XkeyError as XkeyError
from ._errors import XkeyErrorCode as XkeyErrorCode
from ._files import read_private_file as read_private_file
from ._files import write_private_file as write_private_file
from ._issuer import SigningKeys as SigningKeys
from ._issuer import TokenIssuer as TokenIssuer
from ._jwt import DEFAULT_LEEWAY as DEFAULT_LEEWAY
from ._jwt import JWT_HEADER as JWT_HEADER
from ._jwt import decode_jwt as decode_jwt
from ._jwt import encode_jwt as encode_jwt
from ._jwt import verify_jwt as verify_jwt
from ._keyring import Keyring as Keyring
from ._keyring import PublicKeys as PublicKeys
from ._nats_claims import AUTH_CALLOUT_SUBJECT as AUTH_CALLOUT_SUBJECT
from ._nats_claims import AUTHORIZATION_REQUEST_AUDIENCE as AUTHORIZATION_REQUEST_AUDIENCE
from ._nats_claims import XKEY_HEADER as XKEY_HEADER
from ._nats_claims import AuthorizationRequest as AuthorizationRequest
from ._nats_claims import ClientInfo as ClientInfo
from ._nats_claims import ConnectOpts as ConnectOpts
from ._nats_claims import ServerId as ServerId
from ._nats_claims import authorization_response as authorization_response
from ._nats_claims import parse_authorization_request as parse_authorization_request
from ._nats_claims import user_jwt as user_jwt
from ._nkeys import KeyKind as KeyKind
from ._nkeys import KeyPair as KeyPair
from ._nkeys import check_public_key as check_public_key
from ._nkeys import crc16 as crc16
from ._nkeys import decode_public_key as decode_public_key
from ._nkeys import decode_seed as decode_seed
from ._nkeys import encode_public_key as encode_public_key
from ._nkeys import encode_seed as encode_seed
from ._nkeys import public_key_kind as public_key_kind
from ._nkeys import verify_signature as verify_signature
from ._replay import MemoryReplayGuard as MemoryReplayGuard
from ._replay import ReplayGuard as ReplayGuard
from ._tokens import MASTER_AUDIENCE as MASTER_AUDIENCE
from ._tokens import MAX_REVISION as MAX_REVISION
from ._tokens import MAX_TOKEN_SIZE as MAX_TOKEN_SIZE
from ._tokens import MAX_TOKEN_TTL as MAX_TOKEN_TTL
from ._tokens import MIN_TOKEN_TTL as MIN_TOKEN_TTL
from ._tokens import TOKEN_LEEWAY as TOKEN_LEEWAY
from ._tokens import TOKEN_PREFIX as TOKEN_PREFIX
from ._tokens import TokenClaims as TokenClaims
from ._tokens import peek_claims as peek_claims
from ._verifier import PublicKeySource as PublicKeySource
from ._verifier import TokenVerifier as TokenVerifier
from ._xkey import XKEY_VERSION as XKEY_VERSION
from ._xkey import CurveKeyPair as CurveKeyPair

if _typing.TYPE_CHECKING:
    from ._audit import AuditEntry as AuditEntry
    from ._audit import AuditLog as AuditLog
    from ._bus import AuthBus as AuthBus
    from ._bus import callout_blocks as callout_blocks
    from ._callout import MIN_CONNECTION_LIFETIME as MIN_CONNECTION_LIFETIME
    from ._callout import Connections as Connections
    from ._callout import CredentialExchange as CredentialExchange
    from ._callout import Decider as Decider
    from ._callout import Decision as Decision
    from ._callout_service import CALLOUT_SERVICE as CALLOUT_SERVICE
    from ._callout_service import AuthCallout as AuthCallout
    from ._callout_service import CalloutStatistics as CalloutStatistics
    from ._cluster import AuthNode as AuthNode
    from ._cluster import BusJoin as BusJoin
    from ._cluster import callout_config as callout_config
    from ._responder import REVOCATION_SUBJECT as REVOCATION_SUBJECT
    from ._responder import AuthResponder as AuthResponder
    from ._responder import Revocation as Revocation
    from ._responder import RevocationNotice as RevocationNotice
    from ._secrets import BusSecrets as BusSecrets
    from ._store import AuthStore as AuthStore

_BUS_SIDE: _typing.Final = {
    "AuditEntry": "._audit",
    "AuditLog": "._audit",
    "AuthBus": "._bus",
    "callout_blocks": "._bus",
    "CALLOUT_SERVICE": "._callout_service",
    "MIN_CONNECTION_LIFETIME": "._callout",
    "AuthCallout": "._callout_service",
    "CalloutStatistics": "._callout_service",
    "AuthNode": "._cluster",
    "BusJoin": "._cluster",
    "callout_config": "._cluster",
    "Connections": "._callout",
    "CredentialExchange": "._callout",
    "Decider": "._callout",
    "Decision": "._callout",
    "REVOCATION_SUBJECT": "._responder",
    "AuthResponder": "._responder",
    "Revocation": "._responder",
    "RevocationNotice": "._responder",
    "BusSecrets": "._secrets",
    "AuthStore": "._store",
}
"""The bus side's names and their modules, imported on first use (see the module docstring)."""


def __getattr__(name: str) -> object:
    module = _BUS_SIDE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "API_KEY_PREFIX",
    "AUTHORIZATION_REQUEST_AUDIENCE",
    "AUTH_CALLOUT_SUBJECT",
    "ApiKeyError",
    "ApiKeyErrorCode",
    "ApiKeyRecord",
    "AuditEntry",
    "AuditLog",
    "AuthBus",
    "AuthCallout",
    "AuthNode",
    "AuthResponder",
    "AuthStore",
    "AuthStoreError",
    "AuthorizationRequest",
    "BusJoin",
    "BusSecrets",
    "CALLOUT_SERVICE",
    "CalloutStatistics",
    "ClientInfo",
    "ConnectOpts",
    "Connections",
    "CredentialError",
    "CredentialExchange",
    "CurveKeyPair",
    "DEFAULT_LEEWAY",
    "Decider",
    "Decision",
    "JWT_HEADER",
    "JwtError",
    "JwtErrorCode",
    "KeyKind",
    "KeyPair",
    "Keyring",
    "KeyringError",
    "KeyringErrorCode",
    "MASTER_AUDIENCE",
    "MAX_REVISION",
    "MAX_TOKEN_SIZE",
    "MAX_TOKEN_TTL",
    "MIN_CONNECTION_LIFETIME",
    "MIN_TOKEN_TTL",
    "MemoryReplayGuard",
    "NkeyError",
    "NkeyErrorCode",
    "PublicKeySource",
    "PublicKeys",
    "REVOCATION_SUBJECT",
    "ReplayGuard",
    "Revocation",
    "RevocationNotice",
    "SecretFileError",
    "SecretFileErrorCode",
    "ServerId",
    "SigningKeys",
    "TOKEN_LEEWAY",
    "TOKEN_PREFIX",
    "TokenClaims",
    "TokenError",
    "TokenErrorCode",
    "TokenIssuer",
    "TokenVerifier",
    "XKEY_HEADER",
    "XKEY_VERSION",
    "XkeyError",
    "XkeyErrorCode",
    "api_key_id",
    "authorization_response",
    "callout_blocks",
    "callout_config",
    "check_public_key",
    "crc16",
    "decode_jwt",
    "decode_public_key",
    "decode_seed",
    "encode_jwt",
    "encode_public_key",
    "encode_seed",
    "new_api_key",
    "parse_authorization_request",
    "peek_claims",
    "public_key_kind",
    "read_private_file",
    "user_jwt",
    "verify_api_key",
    "verify_jwt",
    "verify_signature",
    "write_private_file",
]
