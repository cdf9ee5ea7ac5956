"""Bearer tokens, verified with PyJWT: the demo login's own HS256 tokens (accepted only while
`demo_login` is on), or a deployment's identity provider's tokens, checked against the keys
its JWKS URL publishes.

Each verifier takes an allow-list of algorithms, so `alg: none` and algorithm confusion (an
HS256 token whose HMAC key is the provider's public key) are refused before a key is used.
Time is passed in: PyJWT's own clock checks are off, and `exp` and `nbf` are compared here
with `now_s`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

import jwt

from gateways.http.config import HttpConfig, IdentityProviderConfig
from gateways.http.problems import Problem

log = logging.getLogger(__name__)
DEMO_ALGORITHM = "HS256"
USER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@\-]{0,63}$"
_USER_ID_RE = re.compile(USER_ID_PATTERN)
# Providers' subjects are wider than demo user ids ("auth0|5f7c...", "google-oauth2|1234").
_SUBJECT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@|:\-]{0,127}$")
# A provider's token carries more claims than ours; this still keeps a forged blob cheap.
_TOKEN_BYTES_MAX = 8192
# A provider's clock may run a little ahead of ours: a token is not refused as not yet valid
# for that.
_CLOCK_SKEW_S = 30
# The JWKS is fetched on the request path (in a thread) when its cache is empty or stale: a
# provider that does not answer costs a request this long, then 503.
JWKS_TIMEOUT_S = 3.0
JWKS_CACHE_S = 300.0
_JWKS_RETRY_AFTER_S = 5


class Verified(NamedTuple):
    user_id: str
    exp: int  # Unix seconds


def issue_token(secret: str, user_id: str, now_s: int, ttl_s: int) -> str:
    """The demo login's token for `user_id`."""
    assert _USER_ID_RE.match(user_id), f"invalid user id {user_id!r}"
    return jwt.encode({"sub": user_id, "iat": now_s, "exp": now_s + ttl_s}, secret,
                      algorithm=DEMO_ALGORITHM)


def _invalid(detail: str) -> Problem:
    return Problem(401, "invalid_token", detail, headers={"WWW-Authenticate": "Bearer"})


def _expired() -> Problem:
    return Problem(401, "token_expired", "token expired",
                   headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})


def _decode(token: str, key: Any, algorithms: Sequence[str], now_s: int, *,
            subject: re.Pattern[str], issuer: str | None = None,
            audience: str | None = None) -> Verified:
    required = ["exp", "sub"] + (["iss", "aud"] if issuer is not None else [])
    try:
        claims = jwt.decode(token, key, algorithms=list(algorithms), issuer=issuer,
                            audience=audience,
                            options={"require": required, "verify_exp": False,
                                     "verify_nbf": False, "verify_iat": False})
    except jwt.PyJWTError as error:
        raise _invalid(f"invalid token: {error}") from error
    exp, nbf, sub = claims["exp"], claims.get("nbf", 0), claims["sub"]
    if not _is_time(exp) or not _is_time(nbf):
        raise _invalid("malformed token times: exp and nbf must be Unix times (numbers of "
                       "seconds up to year 9999)")
    if exp <= now_s:
        raise _expired()
    if nbf > now_s + _CLOCK_SKEW_S:
        raise _invalid("token not valid yet (nbf)")
    if not isinstance(sub, str) or not subject.match(sub):
        raise _invalid("malformed token subject")
    return Verified(sub, int(exp))


# The latest time a token may name (9999-12-31T23:59:59Z): past it a time is not one a clock
# reaches, and NaN or Infinity (JSON parsers take them) slipped through every comparison.
_TIME_MAX_S = 253402300799


def _is_time(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value) and 0 <= value <= _TIME_MAX_S)


def verify_demo_token(secret: str, token: str, now_s: int) -> Verified:
    """A demo login token's user id and expiry; else Problem 401."""
    return _decode(token, secret, (DEMO_ALGORITHM,), now_s, subject=_USER_ID_RE)


class _Checker(Protocol):
    async def check(self, token: str, now_s: int) -> Verified: ...


class _DemoTokens:
    def __init__(self, secret: str) -> None:
        self._secret = secret

    async def check(self, token: str, now_s: int) -> Verified:
        return verify_demo_token(self._secret, token, now_s)


class _NoSignIn:
    async def check(self, token: str, now_s: int) -> Verified:
        raise _invalid("no sign-in is configured: the demo login is off and no identity "
                       "provider is set")


def _provider_unavailable(error: Exception) -> Problem:
    return Problem(503, "identity_provider_unavailable",
                   f"the identity provider's signing keys cannot be had: {error}",
                   headers={"Retry-After": str(_JWKS_RETRY_AFTER_S)})


class IdentityProviderTokens:
    """Tokens of a deployment's identity provider. PyJWKClient keeps the key set for
    JWKS_CACHE_S, and fetches it again sooner only for a key id it does not know (a rotated
    key), at most once per cooldown however many unknown key ids arrive."""

    def __init__(self, provider: IdentityProviderConfig) -> None:
        self._provider = provider
        self._keys = jwt.PyJWKClient(provider.jwks_url, lifespan=JWKS_CACHE_S,
                                     timeout=JWKS_TIMEOUT_S)

    async def check(self, token: str, now_s: int) -> Verified:
        try:
            alg = jwt.get_unverified_header(token).get("alg")
        except jwt.InvalidTokenError as error:
            raise _invalid(f"malformed token: {error}") from error
        if alg not in self._provider.algorithms:
            # Before any key is fetched: an unsigned or HMAC token never costs a JWKS fetch.
            raise _invalid(f"token algorithm {alg!r} is not accepted; accepted: "
                           f"{list(self._provider.algorithms)}")
        key = await asyncio.to_thread(self._signing_key, token)
        return _decode(token, key, self._provider.algorithms, now_s, subject=_SUBJECT_RE,
                       issuer=self._provider.issuer, audience=self._provider.audience)

    def _signing_key(self, token: str) -> jwt.PyJWK:
        """Blocking (urllib): run in a thread, so the event loop goes on meanwhile."""
        try:
            self._keys.get_signing_keys()  # what fails here is the provider's fault
        except (jwt.PyJWKClientError, jwt.PyJWKSetError) as error:
            raise _provider_unavailable(error) from error
        try:
            return self._keys.get_signing_key_from_jwt(token)
        except jwt.PyJWKClientConnectionError as error:  # refreshing for an unknown key id
            raise _provider_unavailable(error) from error
        except (jwt.PyJWKClientError, jwt.PyJWKSetError, jwt.InvalidTokenError) as error:
            raise _invalid(f"no signing key for this token: {error}") from error


def bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise Problem(401, "missing_token", "Authorization: Bearer <token> required",
                      headers={"WWW-Authenticate": "Bearer"})
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _invalid("Authorization must be 'Bearer <token>'")
    return token.strip()


class TokenVerifier:
    """The one check of every bearer token (HTTP and WebSocket), by the sign-in the config
    names, with the tokens already verified remembered: a token is sent with every request,
    so its signature and claims are checked once, and its expiry on every use. At most
    `tokens_max` are kept (all are forgotten when full: each costs only one more full
    check)."""

    def __init__(self, config: HttpConfig, tokens_max: int = 100_000) -> None:
        self._checker: _Checker
        if config.identity is not None:
            self._checker = IdentityProviderTokens(config.identity)
        elif config.demo_login:
            self._checker = _DemoTokens(config.token_secret)
        else:
            log.warning("no sign-in configured (demo_login off, no identity provider): every "
                        "bearer token is refused")
            self._checker = _NoSignIn()
        self._tokens_max = tokens_max
        self._verified: dict[str, Verified] = {}

    async def verify(self, token: str, now_s: int) -> Verified:
        known = self._verified.get(token)
        if known is None:
            if len(token) > _TOKEN_BYTES_MAX:
                raise _invalid("malformed token: too long")
            known = await self._checker.check(token, now_s)
            if len(self._verified) >= self._tokens_max:
                self._verified.clear()
            self._verified[token] = known
        if known.exp <= now_s:
            raise _expired()
        return known
