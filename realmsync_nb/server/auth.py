"""Passwords and tokens: salted scrypt hashes and HMAC-signed, expiring tokens.

A token is ``base64url(payload).base64url(hmac_sha256(key, payload))`` where the
payload is JSON ``{"sub": user id, "typ": "access"|"refresh", "exp": unix time}``.
The key is random per server data directory and persisted, so tokens survive a
server restart and a token from another server is rejected.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

from ..errors import AuthError
from ..protocol.messages import ErrorCode

__all__ = ["TokenClaims", "hash_password", "issue_token", "verify_password", "verify_token"]

# scrypt cost: about 50 ms per hash on a laptop core; OWASP's minimum is N=2**17 with r=8
# for interactive logins. We keep 2**14 so test suites that register users stay fast;
# the server constructor can raise it.
SCRYPT_N = 2**14


def hash_password(password: str, salt: bytes, n: int = SCRYPT_N) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=8, p=1, dklen=32)


def verify_password(password: str, salt: bytes, expected: bytes, n: int = SCRYPT_N) -> bool:
    return hmac.compare_digest(hash_password(password, salt, n), expected)


def new_salt() -> bytes:
    return secrets.token_bytes(16)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class TokenClaims:
    user_id: str
    kind: str
    expires: float


def issue_token(key: bytes, user_id: str, kind: str, ttl: float) -> str:
    payload = json.dumps(
        {"sub": user_id, "typ": kind, "exp": time.time() + ttl}, separators=(",", ":")
    ).encode()
    sig = hmac.new(key, payload, hashlib.sha256).digest()
    return f"{_b64(payload)}.{_b64(sig)}"


def verify_token(key: bytes, token: str, kind: str, now: float | None = None) -> TokenClaims:
    """Check signature, kind and expiry.

    Raises:
        AuthError: code TOKEN_INVALID (missing, malformed, forged, wrong kind) or
            TOKEN_EXPIRED.
    """
    if not token:
        raise AuthError("no access token was sent; log in first", code=ErrorCode.TOKEN_INVALID)
    try:
        p64, s64 = token.split(".")
        payload, sig = _unb64(p64), _unb64(s64)
        claims = json.loads(payload)
        user_id, typ, exp = str(claims["sub"]), str(claims["typ"]), float(claims["exp"])
    except (ValueError, KeyError, TypeError):
        raise AuthError("the token is malformed", code=ErrorCode.TOKEN_INVALID) from None
    expected = hmac.new(key, payload, hashlib.sha256).digest()
    if not hmac.compare_digest(sig, expected):
        raise AuthError(
            "the token's signature is not valid for this server (forged, or issued by "
            "another server); log in again",
            code=ErrorCode.TOKEN_INVALID,
        )
    if typ != kind:
        raise AuthError(
            f"a {typ} token was sent where a {kind} token is needed", code=ErrorCode.TOKEN_INVALID
        )
    if (now if now is not None else time.time()) >= exp:
        raise AuthError(f"the {kind} token has expired", code=ErrorCode.TOKEN_EXPIRED)
    return TokenClaims(user_id, typ, exp)
