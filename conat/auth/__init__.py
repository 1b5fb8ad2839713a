"""conat.auth: credentials for the NATS auth callout, on PyNaCl.

* nkeys (:class:`KeyPair`, :func:`decode_public_key`...): Ed25519 keys as checksummed base32.
* xkeys (:class:`CurveKeyPair`): X25519 keys and the ``xkv1`` box that hides callout requests.
* JWTs (:func:`encode_jwt`, :func:`verify_jwt`): claims signed by an nkey.
* callout claims (:func:`parse_authorization_request`, :func:`user_jwt`,
  :func:`authorization_response`): what nats-server asks and what a responder answers.
* conat tokens (:class:`TokenIssuer`, :class:`TokenVerifier`): our own short-lived Ed25519-signed
  claims; :class:`Keyring` holds and rotates their signing keys, :class:`PublicKeys` pins them.
* API keys (:func:`new_api_key`, :func:`verify_api_key`): secrets shown once, stored scrypt-hashed.
* secret files (:func:`read_private_file`): seeds, passwords, tokens and pinned keys are read
  without following symlinks and checked (owner, mode, size) on the descriptor that reads them.

Every failure on untrusted input is a :class:`CredentialError` (a :class:`conat.ConatError`) with
a stable ``code``; see :mod:`conat.auth._nkeys` for the tree.
"""

# Re-exports, one block per module: add a new module's names as a new block, and keep __all__ sorted
# (tests/test_exported_members.py checks it).

from ._apikeys import API_KEY_PREFIX as API_KEY_PREFIX
from ._apikeys import ApiKeyRecord as ApiKeyRecord
from ._apikeys import api_key_id as api_key_id
from ._apikeys import new_api_key as new_api_key
from ._apikeys import verify_api_key as verify_api_key
from ._files import SecretFileError as SecretFileError
from ._files import SecretFileErrorCode as SecretFileErrorCode
from ._files import read_private_file as read_private_file
from ._files import write_private_file as write_private_file
from ._jwt import DEFAULT_LEEWAY as DEFAULT_LEEWAY
from ._jwt import JWT_HEADER as JWT_HEADER
from ._jwt import JwtError as JwtError
from ._jwt import JwtErrorCode as JwtErrorCode
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
from ._nkeys import CredentialError as CredentialError
from ._nkeys import KeyKind as KeyKind
from ._nkeys import KeyPair as KeyPair
from ._nkeys import NkeyError as NkeyError
from ._nkeys import NkeyErrorCode as NkeyErrorCode
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
from ._tokens import ApiKeyError as ApiKeyError
from ._tokens import ApiKeyErrorCode as ApiKeyErrorCode
from ._tokens import KeyringError as KeyringError
from ._tokens import KeyringErrorCode as KeyringErrorCode
from ._tokens import PublicKeySource as PublicKeySource
from ._tokens import SigningKeys as SigningKeys
from ._tokens import TokenClaims as TokenClaims
from ._tokens import TokenError as TokenError
from ._tokens import TokenErrorCode as TokenErrorCode
from ._tokens import TokenIssuer as TokenIssuer
from ._tokens import TokenVerifier as TokenVerifier
from ._tokens import peek_claims as peek_claims
from ._xkey import XKEY_VERSION as XKEY_VERSION
from ._xkey import CurveKeyPair as CurveKeyPair
from ._xkey import XkeyError as XkeyError
from ._xkey import XkeyErrorCode as XkeyErrorCode

__all__ = [
    "API_KEY_PREFIX",
    "AUTHORIZATION_REQUEST_AUDIENCE",
    "AUTH_CALLOUT_SUBJECT",
    "ApiKeyError",
    "ApiKeyErrorCode",
    "ApiKeyRecord",
    "AuthorizationRequest",
    "ClientInfo",
    "ConnectOpts",
    "CredentialError",
    "CurveKeyPair",
    "DEFAULT_LEEWAY",
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
    "MIN_TOKEN_TTL",
    "MemoryReplayGuard",
    "NkeyError",
    "NkeyErrorCode",
    "PublicKeySource",
    "PublicKeys",
    "ReplayGuard",
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
