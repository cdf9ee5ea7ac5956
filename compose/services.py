"""Each service of the stack: how its config is built from the stack, and how it runs.

The supervisor starts every service as `python -m compose.child NAME CONFIG_JSON_PATH`; the
child decodes the config into the service's own frozen config type and calls its `run`.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from compose.exceptions import ServiceStartError
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
    # The host the process's listeners bind to where its server cannot be told (the
    # simulator's QuickFIX acceptor binds every interface): the process starts with the
    # bind-host shim preloaded, which moves its any-address binds there.
    bind_host: str | None = None

    def run(self) -> None:
        """Build the service's own config type from the plain config and run it (blocks)."""
        config = msgspec.convert(self.config, _resolve(self.config_type), strict=False)
        _resolve(self.runner)(config)

    def environment(self) -> dict[str, str]:
        """What the service's process must find in its environment when it starts (LD_PRELOAD
        takes effect only then); the shim is built first when needed. Asked only for a
        service about to run: building it, or resolving a host name, is that service's
        business. A shim that cannot be built is a ServiceStartError, in one line, rather
        than a simulator listening everywhere."""
        if self.bind_host is None:
            return {}
        from gateways.exceptions import BindHostError
        from gateways.simulator import bind_host

        try:
            # a library the user preloads stays preloaded, after the shim
            return bind_host.environment(self.bind_host,
                                         preload=os.environ.get("LD_PRELOAD", ""))
        except BindHostError as error:
            raise ServiceStartError(f"{self.name}: cannot listen on {self.bind_host} only: "
                                    f"{error}") from None


def _resolve(ref: str) -> Any:
    module, attribute = ref.split(":")
    return getattr(importlib.import_module(module), attribute)


def _kafka(stack: StackConfig, endpoints: Endpoints) -> dict[str, Any]:
    return {"bootstrap_servers": endpoints.bootstrap_servers,
            "topic_prefix": stack.stack.topic_prefix,
            "session_timeout_ms": stack.kafka.session_timeout_ms}


def process_name(service: str, process: int) -> str:
    """The name of one process of a service: the first keeps the service's name (its logs,
    state dir and member id stay where a single process keeps them), the others get `-N`."""
    return service if process == 0 else f"{service}-{process}"


def _accounts(stack: StackConfig, endpoints: Endpoints, data_dir: Path) -> list[ServiceSpec]:
    kafka = {**_kafka(stack, endpoints), "extra": stack.kafka.extra}
    processes = stack.accounts.processes
    state_dirs = [str(data_dir / "state" / process_name("accounts", n))
                  for n in range(processes)]
    specs = []
    for n, state_dir in enumerate(state_dirs):
        config = {"kafka": kafka, "state_dir": state_dir,
                  "account_partitions": stack.account_partitions,
                  "shard_dsns": list(endpoints.shard_dsns),
                  "partitions_per_shard": stack.stack.partitions_per_shard,
                  "processing_guarantee": stack.accounts.processing_guarantee,
                  "commit_interval_s": stack.accounts.commit_interval_s,
                  "quote_age_ms_max": stack.accounts.quote_age_ms_max,
                  # Static membership only for a group of one (state.member_id says why).
                  "static_membership": processes == 1,
                  "peer_state_dirs": [d for d in state_dirs if d != state_dir]}
        specs.append(ServiceSpec(process_name("accounts", n),
                                 "topologies.config:AccountTopologyConfig",
                                 "topologies.accounts:run", config))
    return specs


def _market_data(stack: StackConfig, endpoints: Endpoints, data_dir: Path
                 ) -> list[ServiceSpec]:
    kafka = {**_kafka(stack, endpoints), "extra": stack.kafka.extra}
    config = {"kafka": kafka, "redis_url": endpoints.redis_url,
              "processes": stack.market_data.processes,
              "state_dir": str(data_dir / "state" / "market-data")}
    return [ServiceSpec("market-data", "topologies.config:MarketDataConfig",
                        "topologies.market_data:run", config)]


def _sinks(stack: StackConfig, endpoints: Endpoints, data_dir: Path) -> list[ServiceSpec]:
    processes = stack.sinks.processes
    specs = []
    for n in range(processes):
        name = process_name("sinks", n)
        config = {**_kafka(stack, endpoints), "shard_dsns": list(endpoints.shard_dsns),
                  "partitions_per_shard": stack.stack.partitions_per_shard,
                  "member_dir": str(data_dir / "state" / name),
                  "static_membership": processes == 1}
        specs.append(ServiceSpec(name, "sinks.config:SinkConfig", "sinks.service:run", config))
    return specs


def _fix_gateway(stack: StackConfig, endpoints: Endpoints, data_dir: Path
                 ) -> list[ServiceSpec]:
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
    return [ServiceSpec("fix-gateway", "gateways.fix.config:FixGatewayConfig",
                        "gateways.fix.service:run", config)]


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
                                 "gateways.simulator.service:run", config, bind_host=mm.host))
    return specs


def _connectors_dir(stack: StackConfig) -> str:
    return stack.connectors.dir or str(Path(__file__).parent.parent / "connectors" / "examples")


def check_connector_files(stack: StackConfig) -> None:
    """Every connector file of the stack read and checked (ConnectorConfigError naming the
    file and field), before any server starts: a bad file used to be found only once the
    embedded servers were up, and ended `up` with a traceback."""
    if "connectors" in stack.stack.services:
        from connectors.config import load_connector_dir

        load_connector_dir(_connectors_dir(stack))


def _connectors(stack: StackConfig, endpoints: Endpoints, data_dir: Path
                ) -> list[ServiceSpec]:
    from connectors.config import load_connector_dir

    configs = [msgspec.to_builtins(c) for c in load_connector_dir(_connectors_dir(stack))]
    config = {**_kafka(stack, endpoints), "connectors": configs,
              "hot_symbols": stack.market_data.hot_symbols,
              "state_dir": str(data_dir / "state" / "connectors")}
    return [ServiceSpec("connectors", "connectors.config:ConnectorsConfig",
                        "connectors.service:run", config)]


def _http(stack: StackConfig, endpoints: Endpoints, data_dir: Path) -> list[ServiceSpec]:
    processes = stack.http.processes
    config = {**_kafka(stack, endpoints), "host": stack.http.host, "port": stack.http.port,
              # Several processes share the port; the kernel spreads connections over them.
              "reuse_port": processes > 1,
              "shard_dsns": list(endpoints.shard_dsns),
              "partitions_per_shard": stack.stack.partitions_per_shard,
              "redis_url": endpoints.redis_url,
              "redis_key_prefix": stack.stack.topic_prefix,
              "demo_login": stack.http.demo_login,
              "token_secret": endpoints.token_secret,
              "identity": msgspec.to_builtins(stack.http.identity),
              "token_ttl_s": stack.http.token_ttl_s, "reply_wait_ms": stack.http.reply_wait_ms,
              "orders_per_s_max": stack.http.orders_per_s_max,
              "reads_per_s_max": stack.http.reads_per_s_max,
              "journal_replay_after_s": stack.http.journal_replay_after_s,
              "quote_age_ms_max": stack.accounts.quote_age_ms_max,
              "fix_store_dir": str(data_dir / "fix" / "gateway")}
    return [ServiceSpec(process_name("http", n), "gateways.http.config:HttpConfig",
                        "gateways.http.service:run", config) for n in range(processes)]


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


_BUILDERS: dict[str, Callable[[StackConfig, Endpoints, Path], list[ServiceSpec]]] = {
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
            specs.extend(_BUILDERS[name](stack, endpoints, data_dir))
    return specs


SERVICE_ORDER = ("sinks", "accounts", "simulator", "fix-gateway", "market-data", "connectors",
                 "http")
