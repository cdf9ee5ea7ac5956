"""The stack file (TOML) and the environment: the one place environment variables are read.

The embedded default needs no file: an empty `bootstrap_servers`, `shard_dsns` or `redis.url`
means "start the embedded server", and without a file the demo login (POST /v1/auth/token, a
token for any user id) is on, for the web page; a stack file leaves it off unless it says
`[http] demo_login = true`. Environment variables override the file:

| variable | overrides |
|---|---|
| BROKERAGE_STACK | path of the stack file |
| BROKERAGE_DATA_DIR | stack.data_dir |
| BROKERAGE_TOPIC_PREFIX | stack.topic_prefix |
| BROKERAGE_KAFKA_BOOTSTRAP | kafka.bootstrap_servers |
| BROKERAGE_SHARD_DSNS | postgres.shard_dsns (comma-separated) |
| BROKERAGE_REDIS_URL | redis.url |
| BROKERAGE_HTTP_PORT | http.port |
| BROKERAGE_TOKEN_SECRET | http.token_secret |
| BROKERAGE_DEMO_LOGIN | http.demo_login (true/false, 1/0) |
| BROKERAGE_CONNECTORS_DIR | connectors.dir |
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import msgspec

from compose.exceptions import ConfigError
from compose.renewal import time_of_day
from gateways.http.config import IdentityProviderConfig
from state.domain.risk import QUOTE_AGE_MS_MAX

SERVICE_NAMES = ("accounts", "sinks", "simulator", "fix-gateway", "market-data", "connectors",
                 "http")


PORT_MIN, PORT_MAX = 1, 65535
Port = Annotated[int, msgspec.Meta(ge=PORT_MIN, le=PORT_MAX)]
# Processes of one service (scale-out inside its consumer group): at least one.
Processes = Annotated[int, msgspec.Meta(ge=1, le=64)]


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class StackSection(_Section, frozen=True, kw_only=True):
    data_dir: str = ".data"
    topic_prefix: str = ""
    shards: int = 2
    partitions_per_shard: int = 2
    symbol_partitions: int = 4
    services: tuple[str, ...] = SERVICE_NAMES


class KafkaSection(_Section, frozen=True, kw_only=True):
    bootstrap_servers: str = ""
    session_timeout_ms: int = 3000
    extra: dict[str, str] = {}
    # The embedded broker is renewed daily at this hour, UTC (compose/renewal.py); "" = never.
    embedded_renew_at_utc: str = "22:00"


class PostgresSection(_Section, frozen=True, kw_only=True):
    shard_dsns: tuple[str, ...] = ()


class RedisSection(_Section, frozen=True, kw_only=True):
    url: str = ""


class HttpSection(_Section, frozen=True, kw_only=True):
    host: str = "127.0.0.1"
    port: Port = 8080
    # POST /v1/auth/token signs in as any user id, no credential asked: a demo's, never a
    # deployment's. On only where a stack file says so (and without a file: the embedded
    # default, for its web page).
    demo_login: bool = False
    token_secret: str = ""
    token_ttl_s: int = 900
    # A deployment's own sign-in ([http.identity]): its identity provider's tokens.
    identity: IdentityProviderConfig | None = None
    reply_wait_ms: int = 2000
    # Per-user request budgets per second (orders and other writes; reads).
    orders_per_s_max: int = 10
    reads_per_s_max: int = 100
    # Durable intake: an acknowledged command without an outcome in its shard is re-published
    # at once after a broker epoch change, else once it is this old (gateways.http.journal).
    journal_replay_after_s: float = 5.0
    # Gateway processes sharing `port` (SO_REUSEPORT: the kernel spreads connections over
    # those alive); each reads every topic and shard it needs, so any of them serves any user.
    processes: Processes = 1


class MarketMakerSection(_Section, frozen=True, kw_only=True):
    name: str
    host: str = "127.0.0.1"
    port: Port
    sender_comp_id: str = "BROKER"
    target_comp_id: str
    fix_version: str = "FIX.4.4"
    sessions: int = 1
    simulator: bool = False  # run the built-in simulator as this market maker's acceptor


class AccountsSection(_Section, frozen=True, kw_only=True):
    processing_guarantee: str = "exactly-once"
    commit_interval_s: float = 0.05
    # A market or stop order's reference quote older than this is refused
    # (stale_reference_price); the HTTP gateway gets the same value and publishes it.
    quote_age_ms_max: Annotated[int, msgspec.Meta(gt=0)] = QUOTE_AGE_MS_MAX
    # Account-topology processes sharing the partitions of its consumer group; when one dies
    # the others take its partitions over (state from the changelog, else from the shard).
    processes: Processes = 1


class SinksSection(_Section, frozen=True, kw_only=True):
    # Sink processes (each with a worker per shard) sharing each shard's consumer group.
    processes: Processes = 1


class ConnectorsSection(_Section, frozen=True, kw_only=True):
    dir: str = ""  # empty = the examples shipped with the package


class MarketDataSection(_Section, frozen=True, kw_only=True):
    # Hot symbols (the meme-stock case) get a partition of `quotes` to themselves.
    hot_symbols: dict[str, int] = {}
    processes: int = 1  # market-data workers in one consumer group


class StackConfig(_Section, frozen=True, kw_only=True):
    stack: StackSection = StackSection()
    kafka: KafkaSection = KafkaSection()
    postgres: PostgresSection = PostgresSection()
    redis: RedisSection = RedisSection()
    http: HttpSection = HttpSection()
    accounts: AccountsSection = AccountsSection()
    sinks: SinksSection = SinksSection()
    connectors: ConnectorsSection = ConnectorsSection()
    market_data: MarketDataSection = MarketDataSection()
    market_makers: tuple[MarketMakerSection, ...] = (
        MarketMakerSection(name="sim", port=9878, target_comp_id="MM1", simulator=True),
    )

    def __post_init__(self) -> None:
        unknown = set(self.stack.services) - set(SERVICE_NAMES)
        if unknown:
            raise ValueError(f"unknown services {sorted(unknown)}; known: {list(SERVICE_NAMES)}")
        if self.stack.shards < 1 or self.stack.partitions_per_shard < 1:
            raise ValueError("shards and partitions_per_shard must be at least 1")
        if self.http.demo_login and self.http.identity is not None:
            raise ValueError("http.demo_login lets anyone sign in as any user id, the identity "
                             "provider's users included: turn it off to use http.identity")
        try:
            time_of_day(self.kafka.embedded_renew_at_utc)
        except ValueError as error:
            raise ValueError(f"kafka.embedded_renew_at_utc: {error}") from None
        if self.postgres.shard_dsns and len(self.postgres.shard_dsns) != self.stack.shards:
            raise ValueError(f"postgres.shard_dsns names {len(self.postgres.shard_dsns)} "
                             f"servers for {self.stack.shards} shards")

    @property
    def data_dir(self) -> Path:
        return Path(self.stack.data_dir).resolve()

    @property
    def account_partitions(self) -> int:
        return self.stack.shards * self.stack.partitions_per_shard


_ENV_OVERRIDES: dict[str, tuple[str, str]] = {
    "BROKERAGE_DATA_DIR": ("stack", "data_dir"),
    "BROKERAGE_TOPIC_PREFIX": ("stack", "topic_prefix"),
    "BROKERAGE_KAFKA_BOOTSTRAP": ("kafka", "bootstrap_servers"),
    "BROKERAGE_SHARD_DSNS": ("postgres", "shard_dsns"),
    "BROKERAGE_REDIS_URL": ("redis", "url"),
    "BROKERAGE_HTTP_PORT": ("http", "port"),
    "BROKERAGE_TOKEN_SECRET": ("http", "token_secret"),
    "BROKERAGE_DEMO_LOGIN": ("http", "demo_login"),
    "BROKERAGE_CONNECTORS_DIR": ("connectors", "dir"),
}


def _port_from_environment(variable: str, value: str) -> int:
    """A port given by an environment variable, checked here so the error names the variable
    (the stack file is not to blame)."""
    port = int(value) if value.strip().isdigit() else None
    if port is None or not PORT_MIN <= port <= PORT_MAX:
        raise ConfigError(f"{variable}={value!r}: expected a port number from {PORT_MIN} to "
                          f"{PORT_MAX}")
    return port


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _flag_from_environment(variable: str, value: str) -> bool:
    if value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise ConfigError(f"{variable}={value!r}: expected one of {', '.join(_TRUE + _FALSE)}")


def load_stack(path: str | Path | None = None,
               environ: Mapping[str, str] | None = None) -> StackConfig:
    """The stack file (if any) with the environment's overrides applied."""
    environ = os.environ if environ is None else environ
    path = path or environ.get("BROKERAGE_STACK")
    # Without a stack file: the embedded default, whose web page signs in with the demo login.
    data: dict[str, Any] = {"http": {"demo_login": True}}
    if path:
        try:
            data = tomllib.loads(Path(path).read_text())
        except OSError as error:
            raise ConfigError(f"stack file {path}: {error.strerror}") from error
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"stack file {path}: {error}") from error
    for variable, (section, field) in _ENV_OVERRIDES.items():
        value = environ.get(variable)
        if value is None:
            continue
        parsed: Any = value
        if field == "shard_dsns":
            parsed = [dsn.strip() for dsn in value.split(",") if dsn.strip()]
        elif field == "port":
            parsed = _port_from_environment(variable, value)
        elif field == "demo_login":
            parsed = _flag_from_environment(variable, value)
        data.setdefault(section, {})[field] = parsed
    try:
        return msgspec.convert(data, StackConfig)
    except msgspec.ValidationError as error:
        raise ConfigError(f"stack file {path or '(defaults)'}: {error}") from error
