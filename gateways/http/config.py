"""Configuration of the HTTP gateway: frozen, unknown fields rejected."""

from __future__ import annotations

from typing import Annotated

import msgspec

from state.domain.risk import QUOTE_AGE_MS_MAX

# Signature algorithms an identity provider's tokens may use: public-key ones only, so a key
# published in a JWKS can never be taken for an HMAC secret (algorithm confusion).
ASYMMETRIC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384",
                         "ES512", "EdDSA")


class IdentityProviderConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True,
                             kw_only=True):
    """A deployment's own sign-in: bearer tokens its identity provider signed, checked for
    signature (keys from `jwks_url`), `exp`, `iss` and `aud`; the user id is `sub`."""

    issuer: Annotated[str, msgspec.Meta(min_length=1)]
    audience: Annotated[str, msgspec.Meta(min_length=1)]
    jwks_url: Annotated[str, msgspec.Meta(pattern=r"^https?://")]
    algorithms: tuple[str, ...] = ("RS256", "ES256")

    def __post_init__(self) -> None:
        refused = [a for a in self.algorithms if a not in ASYMMETRIC_ALGORITHMS]
        if refused or not self.algorithms:
            raise ValueError(f"identity algorithms {refused or '[]'} refused: choose among "
                             f"{list(ASYMMETRIC_ALGORITHMS)}")


class HttpConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    host: str = "127.0.0.1"
    port: int
    # Listen with SO_REUSEPORT: several gateway processes share the port, the kernel spreads
    # new connections over those alive (a dead one's are refused or reset, and retried land
    # on another). Every process reads the same topics and shards: nothing is kept per process
    # that another would need (the intake journal is in the shards, each process tails all
    # of orders.events and replays every shard's journal).
    reuse_port: bool = False
    bootstrap_servers: str
    topic_prefix: str = ""
    shard_dsns: tuple[str, ...]
    partitions_per_shard: int
    redis_url: str
    redis_key_prefix: str = ""
    # POST /v1/auth/token signs a token for any user id without a credential: for the
    # embedded default and its web page only. HS256 tokens are accepted only while it is on.
    demo_login: bool = False
    token_secret: str = ""  # the demo login's HS256 key
    token_ttl_s: int = 900
    identity: IdentityProviderConfig | None = None
    reply_wait_ms: int = 2000
    session_timeout_ms: int = 3000
    body_bytes_max: int = 16384
    # Per-user request budgets, counted in Redis per one-second window (in this process while
    # Redis cannot count).
    orders_per_s_max: int = 10
    reads_per_s_max: int = 100
    # Every Redis call on the request path is bounded by this socket timeout (a frozen Redis
    # holds a request about this long, once); after a failure Redis is skipped for
    # redis_retry_after_ms and the gateway degrades (local budgets, topology idempotency,
    # orders without reference prices) until a probe succeeds.
    redis_timeout_ms: int = 500
    redis_retry_after_ms: int = 1000
    # How long the record of an idempotency key -> request body hash lives.
    idempotency_ttl_s: int = 24 * 3600
    delivery_timeout_ms: int = 5000
    # How long the command producer lets records gather into one produce request: each
    # request costs the broker CPU whatever it carries; this much is added to an order's wait.
    produce_linger_ms: int = 1
    ws_heartbeat_s: float = 15.0
    # Durable intake (gateways.http.journal): an undecided journal entry is re-published when
    # the broker's epoch changed, else once it is this old and not re-published within
    # journal_replay_after_s * 2**n (n: its publications so far, at most 5).
    journal_replay_after_s: float = 5.0
    # How often the replayer looks, and at most how many entries per shard per pass.
    journal_replay_interval_s: float = 1.0
    journal_replay_batch_max: int = 500
    # Entries whose outcome the shard shows are deleted this long after it was seen.
    journal_retention_s: float = 3600.0
    # The account topology's quote age limit (a market or stop order priced at an older quote
    # is refused, stale_reference_price): GET /v1/quotes publishes it as `quote_age_ms_max`
    # for clients to mark stale quotes. `brokerage up` passes both the same `[accounts]` value.
    quote_age_ms_max: Annotated[int, msgspec.Meta(gt=0)] = QUOTE_AGE_MS_MAX
    # The FIX gateway's store: /metrics adds its best-execution figures when set.
    fix_store_dir: str | None = None

    def __post_init__(self) -> None:
        if self.demo_login and not self.token_secret:
            raise ValueError("demo_login needs a token_secret")
        if self.demo_login and self.identity is not None:
            # Either would sign in as any `sub`: the demo login as anyone at all.
            raise ValueError("demo_login lets anyone sign in as any user id, the identity "
                             "provider's users included: turn demo_login off to use identity")
