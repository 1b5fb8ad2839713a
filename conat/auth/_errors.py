"""Every error of ``conat.auth``, and every code they carry: one tree, one table.

The tree::

    ConatError
    ├── CredentialError          "credential"    a key, box, token, key file or secret file is
    │   │                                        refused: refuse that input, do not retry
    │   ├── NkeyError            <NkeyErrorCode>       an nkey string or an Ed25519 signature
    │   ├── XkeyError            <XkeyErrorCode>       a sealed box (the callout's xkey)
    │   ├── JwtError             <JwtErrorCode>        a NATS JWT
    │   ├── TokenError           <TokenErrorCode>      a conat token
    │   ├── KeyringError         <KeyringErrorCode>    a signing key file, the key directory, an
    │   │                                              export of public keys
    │   ├── ApiKeyError          <ApiKeyErrorCode>     an API key
    │   └── SecretFileError      <SecretFileErrorCode> a secret file (unsafe or unreadable)
    └── AuthStoreError           "auth-store"    a bus's auth store cannot be read or written
                                                 (the callout refuses: fail closed)

The codes. A code means one thing wherever it appears: ``bad-signature`` is the same failure
whether an nkey signature, a JWT or a conat token carries it, so a caller may branch on the code
alone or on the class and the code.

=====================  =================================================  ===========================
code                   meaning                                            raised as
=====================  =================================================  ===========================
``bad-nkey``           not base32, wrong length, not the canonical        NkeyError
                       spelling of its bytes
``bad-checksum``       the nkey's CRC-16 does not match (a typo)          NkeyError
``bad-prefix``         an unknown key kind, or not the kind expected      NkeyError
                       (a seed given as a public key...)
``bad-signature``      a signature does not verify (tampered, or signed   NkeyError, JwtError,
                       by another key)                                    TokenError
``bad-version``        a sealed box without the ``xkv1`` tag              XkeyError
``bad-length``         a sealed box too short for a nonce and a MAC       XkeyError
``bad-mac``            a sealed box altered, or not sealed for us by      XkeyError
                       that sender
``bad-jwt``            a JWT is malformed (segments, header, claims not   JwtError
                       an object, ``iss`` not a signing nkey)
``wrong-issuer``       a JWT signed by another key than required          JwtError
``wrong-audience``     for another audience (a token: another bus)        JwtError, TokenError
``expired``            past its expiry plus the leeway                    JwtError, TokenError
``not-yet-valid``      before its start minus the leeway                  JwtError, TokenError
``too-large``          larger than the limit (checked before reading or   TokenError, SecretFileError
                       parsing)
``malformed``          not of the expected shape (a token: prefix,        TokenError, ApiKeyError
                       base64url, ASCII; an API key: ``ck_<id>_<secret>``)
``unknown-kid``        no key with that kid (never issued, or retired)    TokenError, KeyringError
``bad-claims``         a token's signed claims do not decode or are       TokenError
                       inconsistent
``replayed``           a one-time token already used                      TokenError
``no-replay-guard``    a one-time token, and the verifier cannot          TokenError
                       remember uses
``insecure-key-file``  a key file group/world accessible, or another      KeyringError
                       user's
``insecure-key-dir``   the key directory is writable by group or others   KeyringError
``bad-key-file``       a key file unreadable or corrupt                   KeyringError
``no-keys``            an empty key directory, and creating is not        KeyringError
                       allowed
``retire-current``     retiring the signing key (rotate first)            KeyringError
``bad-public-keys``    an export of public keys that does not parse       KeyringError
``io``                 a key file or directory cannot be written          KeyringError
``missing``            no such file                                       SecretFileError
``not-a-file``         a symlink, directory, FIFO, device or socket       SecretFileError
``insecure``           group or others have more access than allowed      SecretFileError
``foreign-owner``      owned by another user (not this one, not root)     SecretFileError
``unreadable``         any other I/O error (its ``strerror`` is in the    SecretFileError
                       message)
``auth-store``         the bus's auth store failed (disk, permissions,    AuthStoreError
                       corruption)
=====================  =================================================  ===========================

No message contains a secret: not a seed (not even a corrupted one), not a token, not a file's
content. Messages name the part that is wrong and, for files, the path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, final

from .._errors import ConatError, ErrorCode

__all__ = [
    "ApiKeyError",
    "ApiKeyErrorCode",
    "AuthStoreError",
    "CredentialError",
    "JwtError",
    "JwtErrorCode",
    "KeyringError",
    "KeyringErrorCode",
    "NkeyError",
    "NkeyErrorCode",
    "SecretFileError",
    "SecretFileErrorCode",
    "TokenError",
    "TokenErrorCode",
    "XkeyError",
    "XkeyErrorCode",
]

NkeyErrorCode = Literal["bad-nkey", "bad-checksum", "bad-prefix", "bad-signature"]
XkeyErrorCode = Literal["bad-version", "bad-length", "bad-mac"]
JwtErrorCode = Literal["bad-jwt", "bad-signature", "wrong-issuer", "wrong-audience", "expired", "not-yet-valid"]
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
"""Why a token was refused (:class:`~conat.auth.TokenVerifier` checks in this order)."""
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
SecretFileErrorCode = Literal["missing", "not-a-file", "insecure", "foreign-owner", "too-large", "unreadable"]
"""Why a secret file was refused."""


class CredentialError(ConatError):
    """A key, sealed box, token or secret file is malformed or fails a check. Branch on ``code``.

    Raised for untrusted input (a token from the network, a key from a config file): the caller's
    answer is to refuse that input, not to retry.

    Attributes:
        what: the role of what was refused (``"issuer"``, ``"conat token"``, ``"token file"``).
        detail: what is wrong with it (never the secret).
    """

    code: ErrorCode = "credential"

    def __init__(self, code: str, what: str, detail: str) -> None:
        self.code = code
        self.what = what
        self.detail = detail
        super().__init__(f"{what}: {detail}")


class NkeyError(CredentialError):
    """An nkey string or an Ed25519 signature is wrong. ``what`` names the key's role."""

    code: NkeyErrorCode

    def __init__(self, code: NkeyErrorCode, what: str, detail: str) -> None:
        super().__init__(code, what, detail)


class XkeyError(CredentialError):
    """A sealed box cannot be opened."""

    code: XkeyErrorCode

    def __init__(self, code: XkeyErrorCode, detail: str) -> None:
        super().__init__(code, "sealed box", detail)


class JwtError(CredentialError):
    """A JWT is malformed or fails verification. ``code`` says which check failed; only
    ``"expired"`` and ``"not-yet-valid"`` can change with time."""

    code: JwtErrorCode

    def __init__(self, code: JwtErrorCode, detail: str) -> None:
        super().__init__(code, "jwt", detail)


@final
class TokenError(CredentialError):
    """A conat token was refused. ``code`` is the reason; the message never contains the token.

    Attributes:
        detail: ``refused (<code>): <why>``, built from verified data or sizes, never token bytes.
    """

    code: TokenErrorCode

    def __init__(self, code: TokenErrorCode, detail: str = "") -> None:
        extra = f": {detail}" if detail else ""
        super().__init__(code, "conat token", f"refused ({code}){extra}")


@final
class KeyringError(CredentialError):
    """A key file or the key directory cannot be used.

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
    """An API key is unusable (a stored record is checked on decode instead). The message never
    contains the secret."""

    code: ApiKeyErrorCode

    def __init__(self, code: ApiKeyErrorCode, detail: str) -> None:
        super().__init__(code, "api key", detail)


@final
class SecretFileError(CredentialError):
    """A secret file cannot be trusted or read. ``path`` names it; the content is never shown."""

    code: SecretFileErrorCode

    def __init__(self, code: SecretFileErrorCode, what: str, path: str, detail: str) -> None:
        self.path = path
        super().__init__(code, what, f"{path}: {detail}")


@final
class AuthStoreError(ConatError):
    """The bus's auth store cannot be read or written (disk, permissions, corruption)."""

    code = "auth-store"

    def __init__(self, path: Path, operation: str, detail: str) -> None:
        self.path = path
        self.operation = operation
        self.detail = detail
        super().__init__(f"auth store {path}: cannot {operation}: {detail}")
