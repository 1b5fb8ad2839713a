"""conat tokens: short-lived, Ed25519-signed claims that a bus checks at connect time.

Token format (version 1)
------------------------

A token is one ASCII line, safe as a NATS CONNECT ``auth_token``, in a cookie and in a URL::

    conat1.<b64url(claims)>.<b64url(signature)>

- ``conat1`` names the format. A future format gets another prefix; a verifier refuses prefixes it
  does not know (``"malformed"``), so two formats can live side by side during a migration.
- ``<claims>`` are :class:`TokenClaims` encoded with msgspec's MessagePack. Their ``kid`` (1 to 64
  characters of ``[A-Za-z0-9_-]``) names the signing key: the verifier reads that one field before
  the signature is checked, to pick the public key, and trusts nothing else until it is.
- ``<signature>`` is the 64-byte Ed25519 signature (PyNaCl) of the ASCII bytes
  ``conat1.<b64url(claims)>``: the prefix is signed too.
- ``b64url`` is unpadded base64url (RFC 4648 §5). Only the canonical spelling is accepted (no padding,
  no stray bits in the last character), so every token has exactly one spelling and any change to
  any byte of it is refused.

Verification (:meth:`TokenVerifier.verify`) checks, in this order, and refuses with
:class:`TokenError` whose ``code`` is:

======================  ===============================================================
``"too-large"``         the token is longer than ``max_size`` (checked before parsing)
``"malformed"``         not ASCII, wrong shape, unknown prefix, non-canonical base64
``"unknown-kid"``       no public key for the kid (never issued, or retired)
``"bad-signature"``     the signature does not verify (tampered, or signed by another key); also
                        when no kid can be read from the claims and no current key verifies them
``"bad-claims"``        the signed claims do not decode, or are inconsistent
``"wrong-audience"``    the token is for another bus
``"expired"``           ``now >= exp + leeway``
``"not-yet-valid"``     ``now + leeway < nbf`` (or ``iat`` when there is no ``nbf``)
``"replayed"``          a one-time token that was already used
``"no-replay-guard"``   a one-time token, and this verifier has no :class:`ReplayGuard`
======================  ===============================================================

Replay is checked last, so a token refused for any other reason does not use up its one time. (A
bus's callout checks revocation after these and replay after that, against its own durable store:
``verify(check_replay=False)``.)

Revision (``rev``)
------------------

Revocation never compares the issuer's clock with the verifier's. Each principal has a *revision*
that only its issuer (master) decides: every token carries the principal's revision at issue time,
and a bus refuses a principal's tokens whose ``rev`` is below the *floor* it was told (master bumps
the revision when it revokes, then tells every bus the new floor). A token minted a moment before the
revoke by a master whose clock runs ahead carries the old revision and is refused all the same.
Tokens without ``rev`` carry revision 0.
Error messages name the refusal and never contain the token (it is a bearer credential), nor any part
of it before the signature is verified.

Errors
------

They join the auth package's family (:class:`~conat.auth.CredentialError`, see
:mod:`conat.auth._nkeys`)::

    ConatError
    └── CredentialError              "credential"
        ├── TokenError               <TokenErrorCode>     a conat token was refused (codes above)
        ├── KeyringError             <KeyringErrorCode>   a key file, key directory or key export
        │                                                 is unusable (conat.auth._keyring)
        └── ApiKeyError              <ApiKeyErrorCode>    an API key or its stored record is
                                                          unusable (conat.auth._apikeys)
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Final, Literal, Protocol, final, runtime_checkable

import msgspec
from nacl.exceptions import CryptoError
from nacl.signing import VerifyKey

from subjects import InvalidSubject, Scope, parse_scope

from ._nkeys import CredentialError
from ._replay import ReplayGuard

__all__ = [
    "MASTER_AUDIENCE",
    "MAX_REVISION",
    "MAX_TOKEN_SIZE",
    "MAX_TOKEN_TTL",
    "MIN_TOKEN_TTL",
    "TOKEN_LEEWAY",
    "TOKEN_PREFIX",
    "ApiKeyError",
    "ApiKeyErrorCode",
    "KeyringError",
    "KeyringErrorCode",
    "PublicKeySource",
    "SigningKeys",
    "TokenClaims",
    "TokenError",
    "TokenErrorCode",
    "TokenIssuer",
    "TokenVerifier",
    "peek_claims",
]

TOKEN_PREFIX: Final = "conat1"
"""The version prefix of the token format documented above."""

MAX_TOKEN_TTL: Final = 24 * 3600.0
"""The longest lifetime a token may have, in seconds. Tokens live minutes; a day is the hard cap."""

MIN_TOKEN_TTL: Final = 1.0
"""The shortest lifetime a token may have, in seconds."""

MASTER_AUDIENCE: Final = "master"
"""The audience of tokens for the master bus. A host bus's audience is ``host-<uuid>``."""

TOKEN_LEEWAY: Final = 30.0
"""The clock skew (seconds) between issuer and verifier that a verifier allows by default, on
``exp`` and ``nbf``. Clients use the same allowance to refuse their own token before sending it."""

MAX_TOKEN_SIZE: Final = 16 * 1024
"""The longest token (characters) a bus accepts; clients refuse to send longer ones. It must stay
below the bus's ``max_control_line`` so that the callout, not the protocol parser, judges it."""

MAX_REVISION: Final = 2**53
"""Revisions are integers from 0 up to this (exact in every JSON and MessagePack reader)."""

_KID_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
_TOKEN_RE: Final = re.compile(re.escape(TOKEN_PREFIX) + r"\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]{86})")
_PEEK_MAX_SIZE: Final = 64 * 1024
_SIGNATURE_SIZE: Final = 64
_PUBLIC_KEY_SIZE: Final = 32


# -- errors ---------------------------------------------------------------------------------------


TokenErrorCode = Literal[
    "too-large",
    "malformed",
    "unknown-kid",
    "bad-signature",
    "bad-claims",
    "wrong-audience",
    "expired",
    "not-yet-valid",
    "replayed",
    "no-replay-guard",
]
"""Why a token was refused (see the module docstring for the order of the checks)."""


@final
class TokenError(CredentialError):
    """A token was refused. ``code`` is the reason; the message never contains the token.

    Attributes:
        code: one of :data:`TokenErrorCode`.
        detail: ``refused (<code>): <why>``, built from verified data or sizes, never token bytes.
    """

    code: TokenErrorCode

    def __init__(self, code: TokenErrorCode, detail: str = "") -> None:
        extra = f": {detail}" if detail else ""
        super().__init__(code, "conat token", f"refused ({code}){extra}")


KeyringErrorCode = Literal[
    "insecure-key-file",
    "insecure-key-dir",
    "bad-key-file",
    "no-keys",
    "unknown-kid",
    "retire-current",
    "bad-public-keys",
    "io",
]
"""Why a key file, the key directory or a public-key export cannot be used."""

ApiKeyErrorCode = Literal["malformed"]
"""Why an API key cannot be used."""


@final
class KeyringError(CredentialError):
    """A key file or the key directory cannot be used.

    Codes: ``"insecure-key-file"`` (group/world accessible, or owned by another user),
    ``"insecure-key-dir"`` (group/world writable), ``"bad-key-file"`` (unreadable or corrupt),
    ``"no-keys"`` (an empty key directory that may not be created in), ``"unknown-kid"`` (no such
    key), ``"retire-current"`` (the signing key cannot be retired), ``"bad-public-keys"`` (an export
    of public keys that does not parse), ``"io"`` (a key file or directory cannot be written).

    Attributes:
        path: the file or directory concerned, if any (never its content).
    """

    code: KeyringErrorCode

    def __init__(self, code: KeyringErrorCode, detail: str, path: str | None = None) -> None:
        self.path = path
        where = f" ({path})" if path else ""
        super().__init__(code, "keyring", f"{detail}{where}")


@final
class ApiKeyError(CredentialError):
    """An API key is unusable. Code: ``"malformed"`` (a stored record is checked on decode instead).

    The message never contains the secret.
    """

    code: ApiKeyErrorCode

    def __init__(self, code: ApiKeyErrorCode, detail: str) -> None:
        super().__init__(code, "api key", detail)


# -- claims ---------------------------------------------------------------------------------------


class TokenClaims(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What a token asserts. Times are seconds since the Unix epoch.

    Attributes:
        kid: the id of the key that signed the token.
        iss: who issued it (``hub`` for master).
        sub: the principal: ``account-<uuid>``, ``host-<uuid>``, ``project-<uuid>`` or ``hub``.
        aud: the bus the token is for: ``master`` or ``host-<uuid>``.
        iat: when it was issued.
        exp: when it stops being valid (exclusive, before leeway).
        jti: a random unique id (the key of replay protection).
        scope: what it grants on that bus.
        nbf: when it starts being valid, if later than ``iat``.
        once: a one-time token (e.g. a host join token): a verifier accepts it once.
        rev: the principal's revision when the token was issued (see "Revision" above): a bus
            refuses it once told that the principal's tokens below a higher revision are revoked.
    """

    kid: str
    iss: str
    sub: str
    aud: str
    iat: float
    exp: float
    jti: str
    scope: Scope = Scope()
    nbf: float | None = None
    once: bool = False
    rev: int = 0

    @property
    def start(self) -> float:
        """When the token starts being valid: ``nbf`` if set, else ``iat``."""
        return self.iat if self.nbf is None else self.nbf


_encoder: Final = msgspec.msgpack.Encoder()
_decoder: Final = msgspec.msgpack.Decoder(TokenClaims)


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes | None:
    """Decode canonical unpadded base64url, or return ``None`` (any other spelling is refused)."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    return raw if _b64encode(raw) == text else None


def _is_principal(value: str) -> bool:
    try:
        parse_scope(value)
    except InvalidSubject:
        return False
    return True


def _is_audience(value: str) -> bool:
    if value == MASTER_AUDIENCE:
        return True
    try:
        kind, _ = parse_scope(value)
    except InvalidSubject:
        return False
    return kind == "host"


def _claims_problem(claims: TokenClaims, kid: str | None) -> str | None:
    """What is inconsistent in (signature-verified) claims, or ``None``."""
    if kid is not None and claims.kid != kid:
        return "the claims name another kid than the key that signed them"
    if not _KID_RE.fullmatch(claims.kid):
        return "kid is not a key id"
    if not claims.iss or not claims.jti:
        return "empty iss or jti"
    if not _is_principal(claims.sub):
        return "sub is not a principal"
    if not _is_audience(claims.aud):
        return "aud is not a bus"
    times = (claims.iat, claims.exp) if claims.nbf is None else (claims.iat, claims.exp, claims.nbf)
    if not all(math.isfinite(t) for t in times):
        return "a time is not finite"
    if claims.nbf is not None and claims.nbf < claims.iat:
        return "nbf is before iat"
    if not 0 < claims.exp - claims.start <= MAX_TOKEN_TTL + 1:  # + 1: float rounding of start + ttl
        return "the lifetime is empty or longer than the maximum"
    if isinstance(claims.rev, bool) or not 0 <= claims.rev <= MAX_REVISION:
        return "rev is not a revision"
    return None


# -- keys -----------------------------------------------------------------------------------------


class SigningKeys(Protocol):
    """What :class:`TokenIssuer` needs from a keyring: the current kid, and signing with a kid.

    The seeds stay inside the keyring (:class:`conat.auth.Keyring` implements this).
    """

    @property
    def current(self) -> str:
        """The kid that signs new tokens."""
        ...

    def sign(self, kid: str, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``message`` by key ``kid``."""
        ...


@runtime_checkable
class PublicKeySource(Protocol):
    """Something that knows the current public keys (a keyring). Asked at every verification."""

    def public_keys(self) -> Mapping[str, bytes]:
        """``{kid: 32-byte Ed25519 public key}``."""
        ...


def _public_key_bytes(kid: str, value: bytes | str) -> bytes:
    """A public key given as raw bytes or as unpadded base64url, checked. Raises ValueError."""
    if not isinstance(kid, str) or not _KID_RE.fullmatch(kid):
        raise ValueError(f"public_keys: bad kid {kid!r}")
    raw = _b64decode(value) if isinstance(value, str) else bytes(value)
    if raw is None or len(raw) != _PUBLIC_KEY_SIZE:
        raise ValueError(f"public_keys: key {kid!r} is not a 32-byte Ed25519 public key")
    return raw


# -- issuing --------------------------------------------------------------------------------------


@final
class TokenIssuer:
    """Mints tokens signed with a keyring's current key.

    Args:
        keyring: the signing keys (:class:`conat.auth.Keyring`). Rotation takes effect at the next
            :meth:`issue`.
        issuer: the ``iss`` claim.
        clock: wall-clock seconds since the epoch (injectable for tests).
    """

    def __init__(
        self, keyring: SigningKeys, *, issuer: str = "hub", clock: Callable[[], float] = time.time
    ) -> None:
        if not issuer:
            raise ValueError("issuer: must not be empty")
        self._keyring = keyring
        self._issuer = issuer
        self._clock = clock

    def issue(
        self,
        sub: str,
        aud: str,
        scope: Scope,
        ttl: float,
        *,
        nbf: float | None = None,
        once: bool = False,
        revision: int = 0,
        now: float | None = None,
    ) -> str:
        """Mint a token.

        Args:
            sub: the principal (``account-<uuid>``, ``host-<uuid>``, ``project-<uuid>``, ``hub``).
            aud: the bus: ``master`` or ``host-<uuid>``.
            scope: what the token grants on that bus.
            ttl: lifetime in seconds, counted from ``nbf`` (or from now), from
                :data:`MIN_TOKEN_TTL` to :data:`MAX_TOKEN_TTL`.
            nbf: if given, the token is valid only from then on (not before now).
            once: a one-time token: verifiers with a replay guard accept it once.
            revision: the principal's current revision (the ``rev`` claim, see the module
                docstring): a bus that was told to refuse revisions below a floor refuses the
                token unless ``revision`` is at least that floor.
            now: the issue time (defaults to the issuer's clock).

        Returns:
            The token (see the module docstring for the format).

        Raises:
            ValueError: naming the argument, for a bad principal, audience, ttl, nbf or revision.
            TypeError: ``scope`` is not a :class:`subjects.Scope`.
        """
        if not _is_principal(sub):
            raise ValueError(f"sub: {sub!r} is not a principal (account-/host-/project-<uuid> or hub)")
        if not _is_audience(aud):
            raise ValueError(f"aud: {aud!r} is not a bus (master or host-<uuid>)")
        if not isinstance(scope, Scope):
            raise TypeError("scope: must be a subjects.Scope")
        if not (isinstance(ttl, int | float) and MIN_TOKEN_TTL <= ttl <= MAX_TOKEN_TTL):
            raise ValueError(f"ttl: must be {MIN_TOKEN_TTL:g} to {MAX_TOKEN_TTL:g} seconds, got {ttl!r}")
        iat = self._clock() if now is None else now
        if not math.isfinite(iat):
            raise ValueError("now: must be finite")
        if nbf is not None and not (math.isfinite(nbf) and nbf >= iat):
            raise ValueError("nbf: must be finite and not before the issue time")
        if not isinstance(revision, int) or isinstance(revision, bool) or not 0 <= revision <= MAX_REVISION:
            raise ValueError(f"revision: must be an int from 0 to 2**53, got {revision!r}")
        kid = self._keyring.current
        if not _KID_RE.fullmatch(kid):
            raise ValueError(f"keyring: its current kid {kid!r} is not 1 to 64 of [A-Za-z0-9_-]")
        claims = TokenClaims(
            kid=kid,
            iss=self._issuer,
            sub=sub,
            aud=aud,
            iat=iat,
            exp=(iat if nbf is None else nbf) + ttl,
            jti=secrets.token_urlsafe(16),
            scope=scope,
            nbf=nbf,
            once=once,
            rev=revision,
        )
        signed = f"{TOKEN_PREFIX}.{_b64encode(_encoder.encode(claims))}"
        signature = self._keyring.sign(kid, signed.encode("ascii"))
        return f"{signed}.{_b64encode(signature)}"

    def __repr__(self) -> str:
        return f"TokenIssuer(issuer={self._issuer!r})"


# -- verifying ------------------------------------------------------------------------------------


@final
class TokenVerifier:
    """Checks tokens for one bus (see the module docstring for the checks and their order).

    Args:
        public_keys: ``{kid: public key}`` (32 raw bytes, or unpadded base64url as exported by
            :meth:`conat.auth.Keyring.export_public`), copied now; or a :class:`PublicKeySource`
            (a keyring), asked at every verification so that rotation and retirement apply at once.
        audience: this bus: ``master`` or ``host-<uuid>``. Tokens for any other bus are refused.
        leeway: allowed clock skew between issuer and verifier, in seconds, on ``exp`` and ``nbf``.
        max_size: the longest token accepted, in characters (checked before anything is parsed).
        clock: wall-clock seconds since the epoch (injectable for tests).
        replay: where one-time tokens are remembered. Without one, one-time tokens are refused.

    Raises:
        ValueError: naming the argument, for a bad key, audience, leeway or max_size.
        TypeError: ``public_keys`` is neither a mapping nor a key source.
    """

    def __init__(
        self,
        public_keys: Mapping[str, bytes | str] | PublicKeySource,
        *,
        audience: str,
        leeway: float = TOKEN_LEEWAY,
        max_size: int = 4096,
        clock: Callable[[], float] = time.time,
        replay: ReplayGuard | None = None,
    ) -> None:
        if not _is_audience(audience):
            raise ValueError(f"audience: {audience!r} is not a bus (master or host-<uuid>)")
        if not (math.isfinite(leeway) and 0 <= leeway <= 300):
            raise ValueError(f"leeway: must be between 0 and 300 seconds, got {leeway!r}")
        if max_size < 1:
            raise ValueError(f"max_size: must be positive, got {max_size!r}")
        self._source: PublicKeySource | None = None
        self._keys: dict[str, VerifyKey] = {}
        if isinstance(public_keys, Mapping):
            self._keys = {kid: VerifyKey(_public_key_bytes(kid, value)) for kid, value in public_keys.items()}
        elif isinstance(public_keys, PublicKeySource):
            self._source = public_keys
        else:
            raise TypeError("public_keys: must be a mapping of kid to key, or a keyring")
        self._cache: dict[tuple[str, bytes], VerifyKey] = {}
        self.audience: Final = audience
        self.leeway: Final = float(leeway)
        self.max_size: Final = max_size
        self._clock = clock
        self._replay = replay

    def verify(self, token: str | bytes, *, check_replay: bool = True) -> TokenClaims:
        """Return the claims of a valid token, or raise.

        Args:
            token: the token, untrusted.
            check_replay: ``False`` leaves the one-time check to the caller, who must then refuse a
                ``once`` token already used (a bus does it against its durable store, after its
                revocation check, so that a refused token never uses up its one time).

        Raises:
            TokenError: the token is refused; ``code`` says why. The message never contains it.
        """
        if not isinstance(token, str | bytes | bytearray):
            raise TokenError("malformed", "not a string")
        if len(token) > self.max_size:
            raise TokenError("too-large", f"{len(token)} characters, the limit is {self.max_size}")
        payload, signed, signature = _parse(token)
        keys = self._current_keys()
        kid = _peek_kid(payload)
        if kid is None:
            # No kid can be read: a tampered or foreign payload. Only a key that verifies it
            # (there are a few at most) can make it more than a bad signature.
            candidates = list(keys.items())
        elif kid in keys:
            candidates = [(kid, keys[kid])]
        else:
            raise TokenError("unknown-kid", "no public key for its kid")
        signer = next((name for name, key in candidates if _verifies(key, signed, signature)), None)
        if signer is None:
            raise TokenError("bad-signature", "the signature does not verify")
        claims = _decode_claims(payload, signer)
        if claims.aud != self.audience:
            raise TokenError("wrong-audience", f"for {claims.aud!r}, this bus is {self.audience!r}")
        now = self._clock()
        if now >= claims.exp + self.leeway:
            raise TokenError("expired", f"expired {now - claims.exp:.0f}s ago (leeway {self.leeway:g}s)")
        if now + self.leeway < claims.start:
            raise TokenError("not-yet-valid", f"valid in {claims.start - now:.0f}s (leeway {self.leeway:g}s)")
        if claims.once and check_replay:
            if self._replay is None:
                raise TokenError("no-replay-guard", "a one-time token needs a verifier with a replay guard")
            if not self._replay.first_use(claims.jti, claims.exp + self.leeway, now):
                raise TokenError("replayed", "this one-time token was already used")
        return claims

    def _current_keys(self) -> Mapping[str, VerifyKey]:
        if self._source is None:
            return self._keys
        keys: dict[str, VerifyKey] = {}
        for kid, raw in self._source.public_keys().items():
            cached = self._cache.get((kid, raw))
            if cached is None:
                if len(self._cache) > 64:
                    self._cache.clear()
                cached = self._cache[(kid, raw)] = VerifyKey(_public_key_bytes(kid, raw))
            keys[kid] = cached
        return keys

    def __repr__(self) -> str:
        return f"TokenVerifier(audience={self.audience!r}, leeway={self.leeway:g})"


def peek_claims(token: str | bytes) -> TokenClaims:
    """Read a token's claims WITHOUT verifying it: no signature, audience, time or replay check.

    For a client reading a token it holds (to learn when it expires and what it grants). Never use
    it to decide whether to trust a token: that is :meth:`TokenVerifier.verify`.

    Raises:
        TokenError: ``"too-large"`` (over 64 KiB), ``"malformed"`` or ``"bad-claims"`` (including
            claims that are inconsistent).
    """
    if not isinstance(token, str | bytes | bytearray):
        raise TokenError("malformed", "not a string")
    if len(token) > _PEEK_MAX_SIZE:
        raise TokenError("too-large", f"{len(token)} characters, the limit is {_PEEK_MAX_SIZE}")
    payload, _, _ = _parse(token)
    return _decode_claims(payload, _peek_kid(payload))


class _KidOnly(msgspec.Struct):
    kid: str


_kid_decoder: Final = msgspec.msgpack.Decoder(_KidOnly)


def _peek_kid(payload: bytes) -> str | None:
    """The kid in (not yet verified) claims, or ``None`` if it cannot be read or is not a kid."""
    try:
        kid = _kid_decoder.decode(payload).kid
    except ValueError:  # msgspec.DecodeError, or UnicodeDecodeError for a bad UTF-8 string
        return None
    return kid if _KID_RE.fullmatch(kid) else None


def _verifies(key: VerifyKey, signed: bytes, signature: bytes) -> bool:
    try:
        key.verify(signed, signature)
    except (CryptoError, ValueError, TypeError):
        return False
    return True


def _decode_claims(payload: bytes, kid: str | None) -> TokenClaims:
    try:
        claims = _decoder.decode(payload)
    except ValueError:  # msgspec.DecodeError, or UnicodeDecodeError for a bad UTF-8 string
        raise TokenError("bad-claims", "the claims do not decode") from None
    problem = _claims_problem(claims, kid)
    if problem is not None:
        raise TokenError("bad-claims", problem)
    return claims


def _parse(token: str | bytes) -> tuple[bytes, bytes, bytes]:
    """Split a token into ``(claims bytes, signed bytes, signature)``, or refuse it as malformed."""
    if isinstance(token, bytes | bytearray):
        if not token.isascii():
            raise TokenError("malformed", "not ASCII")
        text = bytes(token).decode("ascii")
    elif isinstance(token, str):
        if not token.isascii():
            raise TokenError("malformed", "not ASCII")
        text = token
    else:  # pragma: no cover - verify() checked the type
        raise TokenError("malformed", "not a string")
    match = _TOKEN_RE.fullmatch(text)
    if match is None:
        raise TokenError("malformed", f"not a {TOKEN_PREFIX} token")
    payload_b64, signature_b64 = match.groups()
    payload = _b64decode(payload_b64)
    signature = _b64decode(signature_b64)
    if payload is None or signature is None or len(signature) != _SIGNATURE_SIZE:
        raise TokenError("malformed", "bad base64url")
    signed = text[: match.start(2) - 1].encode("ascii")
    return payload, signed, signature
