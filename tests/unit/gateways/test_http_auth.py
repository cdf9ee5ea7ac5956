"""Bearer tokens: the demo login's HS256 tokens, and an identity provider's RS256/ES256 tokens
verified against a JWKS served over real HTTP on 127.0.0.1 (keys generated here)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

import jwt
import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateways.http.app import create_app
from gateways.http.auth import TokenVerifier, Verified, issue_token, verify_demo_token
from gateways.http.config import HttpConfig, IdentityProviderConfig
from gateways.http.problems import Problem
from tests.unit.gateways.test_http_fakes import NOW, SECRET, Fakes, config

ISSUER = "https://login.example.test/"
AUDIENCE = "brokerage-api"
NOW_S = int(NOW.timestamp())
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
RSA_PUBLIC_PEM = RSA_KEY.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _jwk(algorithm: type[Any], private_key: Any, kid: str, alg: str) -> dict[str, Any]:
    return {**algorithm.to_jwk(private_key.public_key(), as_dict=True), "kid": kid, "alg": alg,
            "use": "sig"}


JWKS = {"keys": [_jwk(jwt.algorithms.RSAAlgorithm, RSA_KEY, "rsa-1", "RS256"),
                 _jwk(jwt.algorithms.ECAlgorithm, EC_KEY, "ec-1", "ES256")]}


def provider_token(key: Any = RSA_KEY, alg: str = "RS256", kid: str = "rsa-1",
                   **claims: Any) -> str:
    payload = {"sub": "auth0|user-7", "iss": ISSUER, "aud": AUDIENCE, "iat": NOW_S,
               "exp": NOW_S + 300, **claims}
    payload = {name: value for name, value in payload.items() if value is not None}
    return jwt.encode(payload, key, algorithm=alg, headers={"kid": kid})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_signed(header: dict[str, Any], claims: dict[str, Any], hmac_key: bytes | None) -> str:
    """A token PyJWT would refuse to make: unsigned, or HMAC-signed with a public key."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = b"" if hmac_key is None else hmac.new(hmac_key, signing_input.encode(),
                                                      hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


PROVIDER_CLAIMS = {"sub": "mallory", "iss": ISSUER, "aud": AUDIENCE, "exp": NOW_S + 300}


class JwksServer:
    """The identity provider's JWKS endpoint, counting its fetches."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.fetches = 0
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _serve(self, request: web.Request) -> web.Response:
        self.fetches += 1
        if self.status != 200:
            return web.Response(status=self.status, text="down for maintenance")
        return web.json_response(JWKS)

    async def __aenter__(self) -> JwksServer:
        app = web.Application()
        app.router.add_get("/.well-known/jwks.json", self._serve)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}/.well-known/jwks.json"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def identity(url: str, **changes: Any) -> IdentityProviderConfig:
    return IdentityProviderConfig(**{"issuer": ISSUER, "audience": AUDIENCE, "jwks_url": url,
                                     **changes})


def provider_verifier(url: str, **changes: Any) -> TokenVerifier:
    return TokenVerifier(config(demo_login=False, identity=identity(url, **changes)))


async def refusal(verifier: TokenVerifier, token: str, now_s: int = NOW_S) -> tuple[int, str]:
    with pytest.raises(Problem) as caught:
        await verifier.verify(token, now_s)
    return caught.value.status, caught.value.code


def with_jwks(scenario: Callable[[JwksServer], Awaitable[None]], status: int = 200) -> None:
    async def main() -> None:
        async with JwksServer(status) as server:
            await scenario(server)

    asyncio.run(main())


# ---- the demo login's tokens ---------------------------------------------------------------


def _demo_code(token: str, now_s: int = 1001, secret: str = SECRET) -> str:
    with pytest.raises(Problem) as caught:
        verify_demo_token(secret, token, now_s)
    assert caught.value.status == 401
    return caught.value.code


def test_demo_token_round_trip_and_expiry() -> None:
    token = issue_token(SECRET, "alice", 1000, 60)
    assert verify_demo_token(SECRET, token, 1059) == Verified("alice", 1060)
    assert _demo_code(token, 1060) == "token_expired"
    assert _demo_code(token, secret="another-secret-at-least-32-bytes") == "invalid_token"


def test_demo_token_algorithm_is_pinned() -> None:
    _header, claims, signature = issue_token(SECRET, "alice", 1000, 60).split(".")
    for header in ({"alg": "none", "typ": "JWT"}, {"alg": "HS512", "typ": "JWT"},
                   {"alg": "RS256", "typ": "JWT"}):
        forged = _b64(json.dumps(header).encode())
        assert _demo_code(f"{forged}.{claims}.{signature}") == "invalid_token"
        assert _demo_code(f"{forged}.{claims}.") == "invalid_token"


def test_demo_token_claims_cannot_be_swapped() -> None:
    alice = issue_token(SECRET, "alice", 1000, 60).split(".")
    bob = issue_token(SECRET, "bob", 1000, 60).split(".")
    assert _demo_code(f"{alice[0]}.{bob[1]}.{alice[2]}") == "invalid_token"


def test_demo_tokens_are_refused_while_the_demo_login_is_off() -> None:
    token = issue_token(SECRET, "alice", NOW_S, 60)

    async def main() -> None:
        on = TokenVerifier(config(demo_login=True))
        assert (await on.verify(token, NOW_S)).user_id == "alice"
        off = TokenVerifier(config(demo_login=False))
        assert await refusal(off, token) == (401, "invalid_token")

    asyncio.run(main())


# ---- an identity provider's tokens ---------------------------------------------------------


def test_provider_tokens_name_their_subject_and_the_key_set_is_fetched_once() -> None:
    async def scenario(server: JwksServer) -> None:
        verifier = provider_verifier(server.url)
        assert await verifier.verify(provider_token(), NOW_S) == \
            Verified("auth0|user-7", NOW_S + 300)
        es256 = provider_token(EC_KEY, "ES256", "ec-1", sub="user-8")
        assert (await verifier.verify(es256, NOW_S)).user_id == "user-8"
        assert server.fetches == 1
        # Remembered, but its expiry still counts.
        assert await refusal(verifier, es256, NOW_S + 300) == (401, "token_expired")

    with_jwks(scenario)


@pytest.mark.parametrize("token, code, because", [
    (provider_token(iss="https://evil.example.test/"), "invalid_token", "Invalid issuer"),
    (provider_token(aud="another-api"), "invalid_token", "Audience doesn't match"),
    (provider_token(aud=None), "invalid_token", '"aud" claim'),
    (provider_token(iss=None), "invalid_token", '"iss" claim'),
    (provider_token(sub=None), "invalid_token", '"sub" claim'),
    (provider_token(sub="has space"), "invalid_token", "subject"),
    (provider_token(exp=None), "invalid_token", '"exp" claim'),
    (provider_token(exp=NOW_S - 1), "token_expired", "expired"),
    (provider_token(nbf=NOW_S + 3600), "invalid_token", "nbf"),
    # an RSA-signed token naming the EC key, and one signed by a key the provider never had
    (provider_token(kid="ec-1"), "invalid_token", "does not match the key's algorithm"),
    (provider_token(rsa.generate_private_key(public_exponent=65537, key_size=2048)),
     "invalid_token", "Signature verification failed"),
    (provider_token(kid="rotated-away"), "invalid_token", "no signing key"),
    (hand_signed({"alg": "none", "typ": "JWT", "kid": "rsa-1"}, PROVIDER_CLAIMS, None),
     "invalid_token", "'none' is not accepted"),
    # algorithm confusion: HMAC keyed with the provider's public key (PEM and JWK text)
    (hand_signed({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}, PROVIDER_CLAIMS,
                 RSA_PUBLIC_PEM), "invalid_token", "'HS256' is not accepted"),
    (hand_signed({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}, PROVIDER_CLAIMS,
                 json.dumps(JWKS["keys"][0]).encode()), "invalid_token",
     "'HS256' is not accepted"),
    (issue_token(SECRET, "alice", NOW_S, 60), "invalid_token", "'HS256' is not accepted"),
    ("not.a.token", "invalid_token", "malformed token"),
])
def test_provider_token_refusals_are_401(token: str, code: str, because: str) -> None:
    async def scenario(server: JwksServer) -> None:
        with pytest.raises(Problem) as caught:
            await provider_verifier(server.url).verify(token, NOW_S)
        assert (caught.value.status, caught.value.code) == (401, code)
        assert because in caught.value.detail

    with_jwks(scenario)


def test_an_algorithm_the_deployment_did_not_list_is_refused() -> None:
    async def scenario(server: JwksServer) -> None:
        verifier = provider_verifier(server.url, algorithms=("RS256",))
        es256 = provider_token(EC_KEY, "ES256", "ec-1")
        assert await refusal(verifier, es256) == (401, "invalid_token")
        assert server.fetches == 0  # refused before any key is looked for

    with_jwks(scenario)


def test_an_unreachable_key_set_is_503_then_recovers() -> None:
    async def scenario(server: JwksServer) -> None:
        verifier = provider_verifier(server.url)
        assert await refusal(verifier, provider_token()) == \
            (503, "identity_provider_unavailable")
        server.status = 200
        assert (await verifier.verify(provider_token(), NOW_S)).user_id == "auth0|user-7"

    with_jwks(scenario, status=500)


def test_a_provider_nobody_answers_for_is_503() -> None:
    async def scenario(server: JwksServer) -> None:
        await server.stop()
        with pytest.raises(Problem) as caught:
            await provider_verifier(server.url).verify(provider_token(), NOW_S)
        assert (caught.value.status, caught.value.code) == (503, "identity_provider_unavailable")
        assert caught.value.headers["Retry-After"]

    with_jwks(scenario)


@pytest.mark.parametrize("changes, named", [
    ({"algorithms": ("RS256", "HS256")}, "HS256"),
    ({"algorithms": ("none",)}, "none"),
    ({"algorithms": ()}, "refused"),
    ({"jwks_url": "file:///etc/passwd"}, "jwks_url"),
    ({"audience": ""}, "audience"),
])
def test_identity_config_refuses_what_would_weaken_it(changes: dict[str, Any],
                                                      named: str) -> None:
    fields = {"issuer": ISSUER, "audience": AUDIENCE, "jwks_url": "https://x/jwks", **changes}
    with pytest.raises(msgspec.ValidationError, match=named):
        msgspec.convert(fields, IdentityProviderConfig)


def test_demo_login_and_an_identity_provider_do_not_mix() -> None:
    with pytest.raises(ValueError, match="demo_login"):
        config(demo_login=True, identity=identity("https://x/jwks"))
    with pytest.raises(ValueError, match="token_secret"):
        config(demo_login=True, token_secret="")


# ---- through the HTTP API and the WebSocket ------------------------------------------------


def serve(http_config: HttpConfig,
          scenario: Callable[[TestClient, JwksServer], Awaitable[None]],
          jwks_status: int = 200) -> None:
    async def main() -> None:
        async with JwksServer(jwks_status) as server:
            app = create_app(http_config if http_config.identity is None else
                             config(demo_login=False, identity=identity(server.url)),
                             backends=Fakes().backends)
            async with TestClient(TestServer(app)) as client:
                await scenario(client, server)

    asyncio.run(main())


PROVIDER = config(demo_login=False, identity=identity("http://127.0.0.1:1/unused"))


def test_the_demo_login_is_404_while_off() -> None:
    async def scenario(client: TestClient, server: JwksServer) -> None:
        response = await client.post("/v1/auth/token", json={"user_id": "alice"})
        assert response.status == 404
        assert response.content_type == "application/problem+json"
        assert (await response.json())["code"] == "demo_login_disabled"
        demo = {"Authorization": "Bearer " + issue_token(SECRET, "alice", NOW_S, 60)}
        refused = await client.get("/v1/accounts", headers=demo)
        assert refused.status == 401 and (await refused.json())["code"] == "invalid_token"

    serve(config(demo_login=False), scenario)
    serve(PROVIDER, scenario)


def test_provider_tokens_sign_in_to_the_api_and_the_stream() -> None:
    async def scenario(client: TestClient, server: JwksServer) -> None:
        token = provider_token(sub="user-9")
        created = await client.post("/v1/accounts", json={},
                                    headers={"Authorization": f"Bearer {token}"})
        assert created.status == 201 and (await created.json())["user_id"] == "user-9"
        async with client.ws_connect("/v1/stream") as ws:
            forged = hand_signed({"alg": "HS256", "typ": "JWT"}, PROVIDER_CLAIMS,
                                 RSA_PUBLIC_PEM)
            await ws.send_json({"op": "auth", "token": forged})
            error = await ws.receive_json(timeout=5)
            assert (error["type"], error["code"]) == ("error", "invalid_token")
            await ws.send_json({"op": "auth", "token": token})
            authenticated = await ws.receive_json(timeout=5)
            assert authenticated["type"] == "authenticated"
            assert authenticated["user_id"] == "user-9"
            assert len(authenticated["accounts"]) == 1

    serve(PROVIDER, scenario)


def test_an_unreachable_provider_is_503_problem_on_the_api_and_an_error_frame() -> None:
    async def scenario(client: TestClient, server: JwksServer) -> None:
        token = provider_token()
        response = await client.get("/v1/accounts", headers={"Authorization": f"Bearer {token}"})
        assert response.status == 503
        assert response.content_type == "application/problem+json"
        assert (await response.json())["code"] == "identity_provider_unavailable"
        assert response.headers["Retry-After"]
        async with client.ws_connect("/v1/stream") as ws:
            await ws.send_json({"op": "auth", "token": token})
            error = await ws.receive_json(timeout=10)
            assert (error["type"], error["code"]) == ("error", "identity_provider_unavailable")

    serve(PROVIDER, scenario, jwks_status=503)
