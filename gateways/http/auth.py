"""Short-lived signed tokens: a compact JWS with the algorithm pinned to HS256.

The header is compared byte-for-byte with the one we issue, so `alg: none`, RS256/HS256
confusion or any other header is refused before the signature is even looked at. Time is
passed in; nothing here reads the clock.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

import msgspec

from gateways.http.problems import Problem

_HEADER = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=").decode()
USER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@\-]{0,63}$"
_USER_ID_RE = re.compile(USER_ID_PATTERN)
_TOKEN_BYTES_MAX = 2048


class Claims(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    sub: str
    iat: int
    exp: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(secret: str, signing_input: str) -> str:
    return _b64(hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest())


def issue_token(secret: str, user_id: str, now_s: int, ttl_s: int) -> str:
    assert _USER_ID_RE.match(user_id), f"invalid user id {user_id!r}"
    claims = _b64(msgspec.json.encode(Claims(sub=user_id, iat=now_s, exp=now_s + ttl_s)))
    signing_input = f"{_HEADER}.{claims}"
    return f"{signing_input}.{_sign(secret, signing_input)}"


def _invalid(detail: str) -> Problem:
    return Problem(401, "invalid_token", detail, headers={"WWW-Authenticate": "Bearer"})


def verify_token(secret: str, token: str, now_s: int) -> str:
    """The user id a valid, unexpired token names; else Problem 401."""
    if len(token) > _TOKEN_BYTES_MAX or token.count(".") != 2:
        raise _invalid("malformed token")
    header, claims_b64, signature = token.split(".")
    if header != _HEADER:
        raise _invalid("unsupported token header: only HS256 is accepted")
    if not hmac.compare_digest(_sign(secret, f"{header}.{claims_b64}"), signature):
        raise _invalid("bad token signature")
    try:
        claims = msgspec.json.decode(_unb64(claims_b64), type=Claims)
    except (ValueError, msgspec.DecodeError, msgspec.ValidationError) as error:
        raise _invalid("malformed token claims") from error
    if claims.exp <= now_s:
        raise Problem(401, "token_expired", "token expired",
                      headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
    if not _USER_ID_RE.match(claims.sub):
        raise _invalid("malformed token subject")
    return claims.sub


def bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise Problem(401, "missing_token", "Authorization: Bearer <token> required",
                      headers={"WWW-Authenticate": "Bearer"})
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _invalid("Authorization must be 'Bearer <token>'")
    return token.strip()


class TokenVerifier:
    """`verify_token` with the tokens already verified remembered: a token is signed once and
    sent with every request, so its signature and claims are checked once, and its expiry on
    every use. At most `tokens_max` are kept (all are forgotten when full: each costs only one
    more full check)."""

    def __init__(self, secret: str, tokens_max: int = 100_000) -> None:
        self._secret = secret
        self._tokens_max = tokens_max
        self._verified: dict[str, tuple[str, int]] = {}

    def verify(self, token: str, now_s: int) -> str:
        known = self._verified.get(token)
        if known is None:
            user_id = verify_token(self._secret, token, now_s)
            if len(self._verified) >= self._tokens_max:
                self._verified.clear()
            known = (user_id, token_expiry(token))
            self._verified[token] = known
        user_id, exp = known
        if exp <= now_s:
            raise Problem(401, "token_expired", "token expired",
                          headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        return user_id


def token_expiry(token: str) -> int:
    """The expiry (Unix seconds) of a token `verify_token` accepted."""
    return msgspec.json.decode(_unb64(token.split(".")[1]), type=Claims).exp
