"""Each service of the stack: how its config is built from the stack, and how it runs.

The supervisor starts every service as `python -m compose.child NAME CONFIG_JSON_PATH`; the
child decodes the config into the service's own frozen config type and calls its `run`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from compose.stack import StackConfig


@dataclass(frozen=True)
class Endpoints:
    """Where the running servers are (embedded or external)."""

    bootstrap_servers: str
    shard_dsns: tuple[str, ...]
    redis_url: str
    token_secret: str


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    config_type: str  # "module:Class"
    runner: str  # "module:function"
    config: Any

    def run(self) -> None:
        """Build the service's own config type from the plain config and run it (blocks)."""
        config = msgspec.convert(self.config, _resolve(self.config_type), strict=False)
        _resolve(self.runner)(config)


def _resolve(ref: str) -> Any:
    module, attribute = ref.split(":")
    return getattr(importlib.import_module(module), attribute)


def _kafka(stack: StackConfig, endpoints: Endpoints) -> dict[str, Any]:
    return {"bootstrap_servers": endpoints.bootstrap_servers,
            "topic_prefix": stack.stack.topic_prefix,
            "session_timeout_ms": stack.kafka.session_timeout_ms}


def _accounts(stack: StackConfig, endpoints: Endpoints, data_dir: Path) -> ServiceSpec:
    kafka = {**_kafka(stack, endpoints), "extra": stack.kafka.extra}
    config = {"kafka": kafka, "state_dir": str(data_dir / "state" / "accounts"),
              "account_partitions": stack.account_partitions,
              "shard_dsns": list(endpoints.shard_dsns),
              "partitions_per_shard": stack.stack.partitions_per_shard,
              "processing_guarantee": stack.accounts.processing_guarantee,
              "commit_interval_s": stack.accounts.commit_interval_s}
    return ServiceSpec("accounts", "topologies.config:AccountTopologyConfig",
                       "topologies.accounts:run", config)


def _market_data(stack: StackConfig, endpoints: Endpoints, data_dir: Path) -> ServiceSpec:
    kafka = {**_kafka(stack, endpoints), "extra": stack.kafka.extra}
    config = {"kafka": kafka, "redis_url": endpoints.redis_url,
              "processes": stack.market_data.processes,
              "state_dir": str(data_dir / "state" / "market-data")}
    return ServiceSpec("market-data", "topologies.config:MarketDataConfig",
                       "topologies.market_data:run", config)


def _sinks(stack: StackConfig, endpoints: Endpoints, data_dir: Path) -> ServiceSpec:
    config = {**_kafka(stack, endpoints), "shard_dsns": list(endpoints.shard_dsns),
              "partitions_per_shard": stack.stack.partitions_per_shard,
              "member_dir": str(data_dir / "state" / "sinks")}
    return ServiceSpec("sinks", "sinks.config:SinkConfig", "sinks.service:run", config)


def _fix_gateway(stack: StackConfig, endpoints: Endpoints, data_dir: Path) -> ServiceSpec:
    makers = [{"name": mm.name, "host": mm.host, "port": mm.port,
               "sender_comp_id": mm.sender_comp_id, "target_comp_id": mm.target_comp_id,
               "fix_version": mm.fix_version, "sessions": mm.sessions}
              for mm in stack.market_makers]
    config = {"bootstrap_servers": endpoints.bootstrap_servers,
              "topic_prefix": stack.stack.topic_prefix, "market_makers": makers,
              "store_dir": str(data_dir / "fix" / "gateway"),
              "session_timeout_ms": stack.kafka.session_timeout_ms,
              "shard_dsns": list(endpoints.shard_dsns),
              "partitions_per_shard": stack.stack.partitions_per_shard}
    return ServiceSpec("fix-gateway", "gateways.fix.config:FixGatewayConfig",
                       "gateways.fix.service:run", config)


def _simulators(stack: StackConfig, endpoints: Endpoints, data_dir: Path) -> list[ServiceSpec]:
    specs: list[ServiceSpec] = []
    for mm in stack.market_makers:
        if not mm.simulator:
            continue
        config = {"bootstrap_servers": endpoints.bootstrap_servers,
                  "topic_prefix": stack.stack.topic_prefix, "host": mm.host, "port": mm.port,
                  # the acceptor's view of the session is the initiator's, mirrored
                  "sender_comp_id": mm.target_comp_id, "target_comp_id": mm.sender_comp_id,
                  "store_dir": str(data_dir / "fix" / f"simulator-{mm.name}"),
                  # faults switched while it runs (`brokerage chaos` writes this file)
                  "faults_file": str(data_dir / "fix" / f"simulator-{mm.name}" / "faults.json")}
        name = "simulator" if len(specs) == 0 else f"simulator-{mm.name}"
        specs.append(ServiceSpec(name, "gateways.simulator.config:SimulatorConfig",
                                 "gateways.simulator.service:run", config))
    return specs


def _connectors_dir(stack: StackConfig) -> str:
    return stack.connectors.dir or str(Path(__file__).parent.parent / "connectors" / "examples")


def _connectors(stack: StackConfig, endpoints: Endpoints, data_dir: Path) -> ServiceSpec:
    from connectors.config import load_connector_dir

    configs = [msgspec.to_builtins(c) for c in load_connector_dir(_connectors_dir(stack))]
    config = {**_kafka(stack, endpoints), "connectors": configs,
              "hot_symbols": stack.market_data.hot_symbols,
              "state_dir": str(data_dir / "state" / "connectors")}
    return ServiceSpec("connectors", "connectors.config:ConnectorsConfig",
                       "connectors.service:run", config)


def _http(stack: StackConfig, endpoints: Endpoints, data_dir: Path) -> ServiceSpec:
    config = {**_kafka(stack, endpoints), "host": stack.http.host, "port": stack.http.port,
              "shard_dsns": list(endpoints.shard_dsns),
              "partitions_per_shard": stack.stack.partitions_per_shard,
              "redis_url": endpoints.redis_url,
              "redis_key_prefix": stack.stack.topic_prefix,
              "demo_login": stack.http.demo_login,
              "token_secret": endpoints.token_secret,
              "identity": msgspec.to_builtins(stack.http.identity),
              "token_ttl_s": stack.http.token_ttl_s, "reply_wait_ms": stack.http.reply_wait_ms,
              "journal_replay_after_s": stack.http.journal_replay_after_s,
              "fix_store_dir": str(data_dir / "fix" / "gateway")}
    return ServiceSpec("http", "gateways.http.config:HttpConfig", "gateways.http.service:run",
                       config)


def feed_symbols(stack: StackConfig) -> tuple[str, ...]:
    """Every symbol the stack's synthetic quote feeds publish on `quotes`, each once, in the
    order of their files; none when the stack runs no connectors. Only the synthetic feed
    names its symbols in its settings (a file replay's are in its data)."""
    if "connectors" not in stack.stack.services:
        return ()
    from connectors.config import load_connector_dir
    from connectors.registry import parse_settings
    from state.topics import Topic

    symbols: dict[str, None] = {}
    for config in load_connector_dir(_connectors_dir(stack)):
        if config.connector == "synthetic_quotes" and config.topic == Topic.QUOTES:
            symbols.update(dict.fromkeys(parse_settings(config).symbols))
    return tuple(symbols)


_BUILDERS: dict[str, Callable[[StackConfig, Endpoints, Path], ServiceSpec]] = {
    "accounts": _accounts,
    "sinks": _sinks,
    "fix-gateway": _fix_gateway,
    "market-data": _market_data,
    "connectors": _connectors,
    "http": _http,
}


def service_specs(stack: StackConfig, endpoints: Endpoints) -> list[ServiceSpec]:
    """The services to run, in start order (a downstream reader before its upstream writer)."""
    data_dir = stack.data_dir
    specs: list[ServiceSpec] = []
    for name in SERVICE_ORDER:
        if name not in stack.stack.services:
            continue
        if name == "simulator":
            specs.extend(_simulators(stack, endpoints, data_dir))
        else:
            specs.append(_BUILDERS[name](stack, endpoints, data_dir))
    return specs


SERVICE_ORDER = ("sinks", "accounts", "simulator", "fix-gateway", "market-data", "connectors",
                 "http")
