"""Capacity past one machine: the cores, partitions and processes per service the seed's peak
needs, from the CPU each service was measured to spend per unit of work.

The inputs are a JSON file of figures (default `benchmarks/capacity_inputs.json`), each one
`measured` (with the command that printed it and the date), `assumed` (with the reason for its
value) or `given` (the seed's peak or the compose file's layout). `--set NAME=VALUE` overrides
one figure for this run (the output lists it as assumed, "overridden on the command line");
an unknown name is refused, as is an unknown or missing figure in the file.

The model, in one paragraph. The peak is 750,000 requests/s, 100,000 quotes/s and 25 million
WebSocket connections, with a meme spike on top: one symbol's orders and quotes times 7. Each
service's busy cores are the sum over its units of work of rate x measured CPU per unit. A
Python process uses at most one core (the GIL), and is given `target_utilisation` of it (the
headroom), so its processes are busy cores / (target_utilisation - what every process must do
whatever its share, e.g. a gateway reading every quote). Kafka brokers are sized by CPU (each
follower replica charged `broker_replica_cost_share` of the leader's measured work, and every
gateway process's read of every quote), by partition replicas per broker, and at least the
compose file's 3. Account-keyed topics share one
partition count, shards x partitions per shard, at least the largest consumer group that reads
them and their records/s over `partition_records_per_s`. The shard count follows the ledger
write rate: each shard lands what its sink workers can at the target utilisation. The hot
symbol's quotes keep their key, so they all land on one partition: it gets a partition and a
market-data process of its own, and the plan says whether one partition and one process can
take the spike at all. Where the code as built cannot scale out (every HTTP gateway process
reads every `orders.events` partition; one FIX gateway process owns all of `orders.route`),
the plan names the rate at which it stops and sizes the service as if it could, marked.

Usage:
    python benchmarks/capacity.py [--inputs FILE] [--set NAME=VALUE ...] [--format both|json|table]
    python benchmarks/capacity.py --measure-order   # records, bytes, ledger entries per order
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import msgspec

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # --measure-order reads this checkout's state/, run from anywhere
    sys.path.insert(0, str(ROOT))
DEFAULT_INPUTS = Path(__file__).resolve().with_name("capacity_inputs.json")
PROCESS_CORES = 1.0  # a Python process: one core at most (the GIL)
MS, US = 1e-3, 1e-6


class CapacityInputError(ValueError):
    """An inputs file or override that cannot be used: names the figure and why."""


# ---- inputs ------------------------------------------------------------------------------


WHOLE_FIGURES = ("replication_factor", "brokers_min", "sink_workers_per_shard")


class Inputs(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Every figure the model uses. Units are in the names (per_s, ms_per_order, ...)."""

    # the seed's peak and the compose file's layout (given)
    peak_requests_per_s: float
    peak_quotes_per_s: float
    websocket_connections: float
    spike_factor: float
    replication_factor: float  # whole numbers (checked)
    brokers_min: float
    sink_workers_per_shard: float
    # the shape of the load (assumed)
    order_share_of_requests: float
    hot_symbol_order_share: float
    hot_symbol_quote_share: float
    ws_symbols_per_connection: float
    ws_updates_per_symbol_per_s: float
    # what one order writes (counted by --measure-order)
    command_records_per_order: float
    route_records_per_order: float
    execution_records_per_order: float
    event_records_per_order: float
    posting_records_per_order: float
    ledger_entries_per_order: float
    # CPU per unit of work, per service
    http_ms_per_order: float
    accounts_ms_per_order: float
    fix_gateway_ms_per_order: float
    simulator_ms_per_order: float
    sinks_ms_per_order: float
    postgres_ms_per_order: float
    broker_ms_per_order: float
    redis_us_per_order: float
    ws_us_per_update: float
    http_us_per_quote_read: float
    http_us_per_event_read: float
    sink_worker_us_per_entry: float
    postgres_us_per_entry: float
    connector_us_per_quote: float
    market_data_us_per_quote: float
    broker_us_per_quote: float
    broker_us_per_record_read: float
    redis_us_per_quote: float
    # memory
    ws_kb_per_connection: float
    gateway_memory_mb_per_process: float
    # headroom and the platform's limits
    target_utilisation: float
    partition_records_per_s: float
    partition_replicas_per_broker_max: float
    broker_cores: float
    broker_replica_cost_share: float

    def __post_init__(self) -> None:
        for name in self.__struct_fields__:
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise CapacityInputError(f"{name}: {value!r} is not a finite number >= 0")
        if not 0 < self.target_utilisation <= 1:
            raise CapacityInputError(
                f"target_utilisation: {self.target_utilisation} is not in (0, 1]")
        for name in ("order_share_of_requests", "hot_symbol_order_share",
                     "hot_symbol_quote_share", "broker_replica_cost_share"):
            if getattr(self, name) > 1:
                raise CapacityInputError(f"{name}: {getattr(self, name)} is above 1")
        for name in WHOLE_FIGURES:
            if not float(getattr(self, name)).is_integer():
                raise CapacityInputError(f"{name}: {getattr(self, name)} is not a whole number")
        for name in ("spike_factor", "replication_factor", "brokers_min",
                     "sink_workers_per_shard", "partition_records_per_s", "broker_cores",
                     "partition_replicas_per_broker_max", "ws_kb_per_connection",
                     "gateway_memory_mb_per_process"):
            if getattr(self, name) <= 0:
                raise CapacityInputError(f"{name}: must be above 0")


FIGURE_NAMES = frozenset(Inputs.__struct_fields__)


class Figure(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One input figure and where it comes from."""

    value: float
    status: Literal["measured", "assumed", "given"]
    source: str = ""  # measured: the command that printed it (and the run's conditions)
    date: str = ""  # measured: when
    reason: str = ""  # assumed or given: why this value

    def __post_init__(self) -> None:
        if self.status == "measured" and not (self.source and self.date):
            raise CapacityInputError("a measured figure needs its source command and date")
        if self.status != "measured" and not self.reason:
            raise CapacityInputError(f"an {self.status} figure needs its reason")


class InputsFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    about: str = ""
    figures: dict[str, Figure]


def inputs_from_values(values: Mapping[str, float]) -> Inputs:
    """The Inputs of `values` (name -> number); unknown or missing names are refused, named."""
    unknown = sorted(set(values) - FIGURE_NAMES)
    if unknown:
        raise CapacityInputError(f"unknown figure(s) {', '.join(unknown)}; known: "
                                 f"{', '.join(sorted(FIGURE_NAMES))}")
    missing = sorted(FIGURE_NAMES - set(values))
    if missing:
        raise CapacityInputError(f"missing figure(s) {', '.join(missing)}")
    try:
        return msgspec.convert(dict(values), Inputs)
    except msgspec.ValidationError as error:
        raise CapacityInputError(f"capacity inputs: {error}") from None


def parse_override(text: str) -> tuple[str, float]:
    """`NAME=VALUE` from the command line."""
    name, sep, raw = text.partition("=")
    name = name.strip()
    if not sep or not name:
        raise CapacityInputError(f"--set {text!r}: expected NAME=VALUE")
    if name not in FIGURE_NAMES:
        raise CapacityInputError(f"--set {name}: unknown figure; known: "
                                 f"{', '.join(sorted(FIGURE_NAMES))}")
    try:
        value = float(raw)
    except ValueError:
        raise CapacityInputError(f"--set {name}={raw!r}: not a number") from None
    return name, value


def load_inputs(path: Path, overrides: Mapping[str, float] | None = None
                ) -> tuple[Inputs, dict[str, Figure]]:
    """The inputs of the file at `path` with `overrides` applied, and each figure's record."""
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise CapacityInputError(f"{path}: {error.strerror}") from None
    try:
        document = msgspec.json.decode(raw, type=InputsFile)
    except (msgspec.ValidationError, msgspec.DecodeError) as error:
        raise CapacityInputError(f"{path}: {error}") from None
    values: dict[str, float] = {name: figure.value for name, figure in document.figures.items()}
    figures = dict(document.figures)
    for name, value in (overrides or {}).items():
        values[name] = value
        if name in figures:
            figures[name] = msgspec.structs.replace(
                figures[name], value=value, status="assumed",
                reason=f"overridden on the command line (file: {figures[name].value})")
    try:
        inputs = inputs_from_values(values)
    except CapacityInputError as error:
        raise CapacityInputError(f"{path}: {error}") from None
    return inputs, figures


# ---- the arithmetic (pure) ---------------------------------------------------------------


def busy_cores(rate_per_s: float, cpu_s_per_unit: float) -> float:
    """Cores kept busy by `rate_per_s` units of work at `cpu_s_per_unit` CPU seconds each."""
    return rate_per_s * cpu_s_per_unit


def process_budget(target_utilisation: float, fixed_cores: float = 0.0) -> float:
    """The cores of work one process may take on: its share of one core, less what it must
    do whatever its share of the load (negative: the process cannot take any)."""
    return PROCESS_CORES * target_utilisation - fixed_cores


def processes_for(busy: float, target_utilisation: float, fixed_cores: float = 0.0) -> int:
    """Processes to spread `busy` cores of work over, each at most `target_utilisation` of a
    core including `fixed_cores` of its own; at least 1. Raises when no process can take any."""
    budget = process_budget(target_utilisation, fixed_cores)
    if budget <= 0:
        raise CapacityInputError(
            f"each process needs {fixed_cores:.2f} cores of fixed work, above its "
            f"{PROCESS_CORES * target_utilisation:.2f} budget")
    return max(1, math.ceil(busy / budget - 1e-9))


def partitions_for(records_per_s: float, partition_records_per_s: float,
                   consumers: int = 1) -> int:
    """Partitions a topic needs: enough for its records/s and at least one per consumer of
    its biggest consumer group (a group gives each partition to one member)."""
    return max(1, consumers, math.ceil(records_per_s / partition_records_per_s - 1e-9))


def shard_layout(partitions_needed: int, shards: int, workers_per_shard: int) -> tuple[int, int]:
    """(partitions per shard, account partitions): account-keyed topics have shards x
    partitions per shard partitions, at least `partitions_needed`, and each of a shard's sink
    workers owns one of its partitions at least."""
    per_shard = max(workers_per_shard, math.ceil(partitions_needed / shards))
    return per_shard, per_shard * shards


def brokers_for(broker_busy: float, broker_cores: float, target_utilisation: float,
                partition_replicas: int, replicas_per_broker_max: float,
                brokers_min: int) -> int:
    """Kafka brokers: enough cores at the target utilisation, few enough partition replicas
    each, and at least `brokers_min` (the replication factor needs that many)."""
    by_cpu = math.ceil(broker_busy / (broker_cores * target_utilisation) - 1e-9)
    by_replicas = math.ceil(partition_replicas / replicas_per_broker_max - 1e-9)
    return max(brokers_min, by_cpu, by_replicas)


@dataclass(frozen=True)
class Load:
    """The rates at the peak with the spike on top."""

    orders_per_s: float
    quotes_per_s: float
    hot_symbol_quotes_per_s: float
    hot_symbol_orders_per_s: float
    ws_connections: float
    ws_updates_per_s: float
    ledger_entries_per_s: float
    records_per_s: dict[str, float]  # per topic


def peak_load(i: Inputs) -> Load:
    """The peak plus the meme spike: the hot symbol's share of orders and of quotes times
    `spike_factor`, the other symbols unchanged."""
    base_orders = i.peak_requests_per_s * i.order_share_of_requests
    hot_orders = base_orders * i.hot_symbol_order_share * i.spike_factor
    orders = base_orders * (1 - i.hot_symbol_order_share) + hot_orders
    hot_quotes = i.peak_quotes_per_s * i.hot_symbol_quote_share * i.spike_factor
    quotes = i.peak_quotes_per_s * (1 - i.hot_symbol_quote_share) + hot_quotes
    updates = i.websocket_connections * i.ws_symbols_per_connection * i.ws_updates_per_symbol_per_s
    records = {
        "orders.commands": orders * i.command_records_per_order,
        "orders.route": orders * i.route_records_per_order,
        "executions": orders * i.execution_records_per_order,
        "orders.events": orders * i.event_records_per_order,
        "ledger.postings": orders * i.posting_records_per_order,
        "quotes": quotes,
    }
    return Load(orders_per_s=orders, quotes_per_s=quotes, hot_symbol_quotes_per_s=hot_quotes,
                hot_symbol_orders_per_s=hot_orders,
                ws_connections=i.websocket_connections, ws_updates_per_s=updates,
                ledger_entries_per_s=orders * i.ledger_entries_per_order, records_per_s=records)


@dataclass(frozen=True)
class Work:
    unit: str  # plural: "orders", "quotes"
    rate_per_s: float
    cpu_s_per_unit: float
    figures: tuple[str, ...] = ()  # the inputs the CPU per unit comes from
    per_process: bool = False  # every process does all of it (reads the whole topic)

    @property
    def busy(self) -> float:
        """Cores it keeps busy (per process when `per_process`)."""
        return busy_cores(self.rate_per_s, self.cpu_s_per_unit)


@dataclass(frozen=True)
class Service:
    name: str
    work: tuple[Work, ...]
    processes: int
    cores: float  # provisioned: processes x cores each (servers: their machines' cores)
    notes: tuple[str, ...] = ()
    blockers: tuple[str, ...] = ()  # where the code as built cannot do what it is sized for

    @property
    def fits_as_built(self) -> bool:
        return not self.blockers

    @property
    def fixed_cores_per_process(self) -> float:
        return sum(work.busy for work in self.work if work.per_process)

    @property
    def busy(self) -> float:
        """Busy cores over all its processes, each process's own fixed work included."""
        shared = sum(work.busy for work in self.work if not work.per_process)
        return shared + self.processes * self.fixed_cores_per_process

    @property
    def figures(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(name for work in self.work for name in work.figures))


@dataclass(frozen=True)
class HotSymbol:
    quotes_per_s: float
    orders_per_s: float
    partition_share: float  # of one partition's records/s
    process_share: float  # of one market-data process's budget
    fits: bool


@dataclass(frozen=True)
class Gateway:
    connections_per_process: float
    memory_mb_per_process: float
    connections_by_memory: float  # what the memory budget alone allows per process
    events_tail_cores_as_built: float  # every process reads all of orders.events
    as_built_orders_per_s_max: float  # the order rate at which that tail takes the budget
    quote_readers: int  # processes that read every quote from the brokers


@dataclass(frozen=True)
class Plan:
    load: Load
    services: tuple[Service, ...]
    partitions: dict[str, int]
    shards: int
    partitions_per_shard: int
    brokers: int
    partition_replicas: int
    hot_symbol: HotSymbol
    gateway: Gateway
    blockers: tuple[str, ...] = ()

    @property
    def cores(self) -> float:
        return sum(service.cores for service in self.services)


def hot_symbol_plan(i: Inputs, load: Load) -> HotSymbol:
    """The hot symbol's quotes all land on one `quotes` partition (keyed by symbol) and one
    market-data process: how much of each the spike takes."""
    partition_share = load.hot_symbol_quotes_per_s / i.partition_records_per_s
    process_share = busy_cores(load.hot_symbol_quotes_per_s, i.market_data_us_per_quote * US) / (
        process_budget(i.target_utilisation))
    return HotSymbol(quotes_per_s=load.hot_symbol_quotes_per_s,
                     orders_per_s=load.hot_symbol_orders_per_s,
                     partition_share=partition_share, process_share=process_share,
                     fits=partition_share <= 1 and process_share <= 1)


def sink_cpu_s_per_order(i: Inputs) -> tuple[float, float]:
    """(sink worker, PostgreSQL backend) CPU seconds per order: the larger of the two measured
    ways (per order on the whole stack, small batches; per ledger entry in full batches)."""
    worker = max(i.sinks_ms_per_order * MS,
                 i.ledger_entries_per_order * i.sink_worker_us_per_entry * US)
    backend = max(i.postgres_ms_per_order * MS,
                  i.ledger_entries_per_order * i.postgres_us_per_entry * US)
    return worker, backend


def shards_for(orders_per_s: float, i: Inputs) -> int:
    """Shards for the ledger write rate: each sink worker (and its one PostgreSQL backend, one
    connection) lands orders at the target utilisation of one core."""
    worker, backend = sink_cpu_s_per_order(i)
    per_worker = process_budget(i.target_utilisation) / max(worker, backend)
    return max(1, math.ceil(orders_per_s / (per_worker * i.sink_workers_per_shard) - 1e-9))


def gateway_plan(i: Inputs, load: Load) -> tuple[Service, Gateway]:
    """The HTTP/WebSocket gateway. Every process reads every `quotes` partition (any client
    may watch any symbol) and, as built, every `orders.events` partition (replies and order
    updates for whichever user it serves). The events tail is sized as if each process read
    only its own users' partitions, the as-built limit reported beside it; and when reading
    every quote alone is more than a process's budget, as if one relay read them."""
    full = process_budget(i.target_utilisation)
    quote_read = busy_cores(load.quotes_per_s, i.http_us_per_quote_read * US)
    quotes_fit = quote_read < full
    events = load.records_per_s["orders.events"]
    events_tail_all = busy_cores(events, i.http_us_per_event_read * US)
    per_order_events = i.event_records_per_order * i.http_us_per_event_read * US
    as_built_max = max(0.0, full - quote_read) / per_order_events if per_order_events else math.inf
    quote_work = Work("quotes", load.quotes_per_s, i.http_us_per_quote_read * US,
                      ("http_us_per_quote_read",), per_process=quotes_fit)
    work = (Work("orders", load.orders_per_s, i.http_ms_per_order * MS, ("http_ms_per_order",)),
            Work("WebSocket updates", load.ws_updates_per_s, i.ws_us_per_update * US,
                 ("ws_us_per_update",)),
            Work("own users' events", events, i.http_us_per_event_read * US,
                 ("http_us_per_event_read",)),
            quote_work)
    fixed = quote_work.busy if quote_work.per_process else 0.0
    shared = sum(w.busy for w in work if not w.per_process)
    by_cpu = processes_for(shared, i.target_utilisation, fixed)
    by_memory = i.gateway_memory_mb_per_process * 1024 / i.ws_kb_per_connection
    processes = max(by_cpu, math.ceil(load.ws_connections / by_memory - 1e-9))
    per_process = load.ws_connections / processes
    notes: list[str] = []
    blockers: list[str] = []
    if quotes_fit:
        notes.append(f"every process reads every quote: {quote_read:.2f} of its {full:.2f} core")
    else:
        blockers.append(f"as built every process reads every quote ({quote_read:.2f} cores each, "
                        f"above its {full:.2f}); sized as if one relay read them")
    if events_tail_all > full - quote_read:
        blockers.append(f"as built every process reads all of orders.events ({events_tail_all:.1f} "
                        f"cores each): stops at {as_built_max:,.0f} orders/s; sized as if each "
                        "read only its own users' partitions")
    service = Service("HTTP/WebSocket gateway", work, processes, processes * PROCESS_CORES,
                      notes=tuple(notes), blockers=tuple(blockers))
    gateway = Gateway(connections_per_process=per_process,
                      memory_mb_per_process=per_process * i.ws_kb_per_connection / 1024,
                      connections_by_memory=by_memory, events_tail_cores_as_built=events_tail_all,
                      as_built_orders_per_s_max=as_built_max,
                      quote_readers=processes if quotes_fit else 1)
    return service, gateway


def python_service(name: str, work: tuple[Work, ...], i: Inputs,
                   notes: tuple[str, ...] = (), singleton: bool = False) -> Service:
    """A service of Python processes in one consumer group. `singleton`: one process as built;
    sized as if it could be split, and marked when one process is not enough."""
    processes = processes_for(sum(w.busy for w in work), i.target_utilisation)
    blockers: tuple[str, ...] = ()
    if singleton and processes > 1:
        blockers = (f"as built one process owns the whole topic: stops at "
                    f"{process_budget(i.target_utilisation) / work[0].cpu_s_per_unit:,.0f} "
                    f"{work[0].unit}/s; sized as if split by partition",)
    return Service(name, work, processes, processes * PROCESS_CORES, notes, blockers)


def _replica_factor(i: Inputs) -> float:
    """The brokers' work per record over what the (unreplicated) measurement saw: the leader
    plus each follower replica at `broker_replica_cost_share` of it."""
    return 1 + (i.replication_factor - 1) * i.broker_replica_cost_share


def plan(i: Inputs) -> Plan:
    load = peak_load(i)
    hot = hot_symbol_plan(i, load)
    orders = load.orders_per_s
    util = i.target_utilisation

    gateway_service, gateway = gateway_plan(i, load)
    accounts = python_service("account topology", (
        Work("orders", orders, i.accounts_ms_per_order * MS, ("accounts_ms_per_order",)),), i)
    fix_gateway = python_service("FIX gateway", (
        Work("orders", orders, i.fix_gateway_ms_per_order * MS, ("fix_gateway_ms_per_order",)),),
        i, singleton=True)

    shards = shards_for(orders, i)
    worker_s, backend_s = sink_cpu_s_per_order(i)
    sink_processes = shards * int(i.sink_workers_per_shard)
    sinks = Service("shard sinks", (Work("orders", orders, worker_s, (
        "sinks_ms_per_order", "sink_worker_us_per_entry")),), sink_processes,
        sink_processes * PROCESS_CORES,
        notes=(f"{int(i.sink_workers_per_shard)} worker(s) per shard, "
               f"{load.ledger_entries_per_s / shards:,.0f} ledger entries/s each shard",))
    postgres_busy = busy_cores(orders, backend_s)
    cores_per_shard = max(1, math.ceil(postgres_busy / shards / util - 1e-9))
    postgres = Service("PostgreSQL shards", (Work("orders", orders, backend_s, (
        "postgres_ms_per_order", "postgres_us_per_entry")),), shards, shards * cores_per_shard,
        notes=(f"{shards} servers of {cores_per_shard} core(s)",))

    rest_quotes = load.quotes_per_s - load.hot_symbol_quotes_per_s
    connectors = python_service("connectors", (Work(
        "quotes", load.quotes_per_s, i.connector_us_per_quote * US, ("connector_us_per_quote",)),),
        i)
    market_rest = processes_for(busy_cores(rest_quotes, i.market_data_us_per_quote * US), util)
    hot_blockers = () if hot.fits else (
        f"the hot symbol's {hot.quotes_per_s:,.0f} quotes/s on one partition take "
        f"{hot.partition_share:.0%} of a partition and {hot.process_share:.0%} of one "
        "process: conflate them before the topic",)
    market_data = Service("market-data topology", (Work(
        "quotes", load.quotes_per_s, i.market_data_us_per_quote * US,
        ("market_data_us_per_quote",)),), market_rest + 1, (market_rest + 1) * PROCESS_CORES,
        notes=("one process of its own for the hot symbol's partition",),
        blockers=hot_blockers)
    redis_work = (Work("orders", orders, i.redis_us_per_order * US, ("redis_us_per_order",)),
                  Work("quotes", load.quotes_per_s, i.redis_us_per_quote * US,
                       ("redis_us_per_quote",)))
    redis_instances = processes_for(sum(w.busy for w in redis_work), util)
    redis = Service("Redis (cluster)", redis_work, redis_instances, redis_instances * PROCESS_CORES,
                    notes=("single-threaded: one core per instance",))

    # partitions: account-keyed topics share one count, shards x partitions per shard
    account_topics = ("orders.commands", "orders.route", "executions", "orders.events",
                      "ledger.postings")
    needed = max([partitions_for(load.records_per_s[t], i.partition_records_per_s)
                  for t in account_topics] + [accounts.processes, fix_gateway.processes])
    workers = int(i.sink_workers_per_shard)
    per_shard, account_partitions = shard_layout(needed, shards, workers)
    quote_partitions = partitions_for(rest_quotes, i.partition_records_per_s, market_rest) + 1
    partitions = {topic: account_partitions for topic in account_topics}
    for topic in ("quotes", "candles", "market.status"):
        partitions[topic] = quote_partitions
    for topic in list(partitions):
        partitions[f"dlq.{topic}"] = 1
    replicas = sum(partitions.values()) * int(i.replication_factor)

    replica_factor = _replica_factor(i)
    # every gateway process reads every quote: the leaders serve each quote that many times
    broker_work = (Work("orders", orders, i.broker_ms_per_order * MS * replica_factor,
                        ("broker_ms_per_order", "broker_replica_cost_share")),
                   Work("quotes", load.quotes_per_s, i.broker_us_per_quote * US * replica_factor,
                        ("broker_us_per_quote", "broker_replica_cost_share")),
                   Work("quote reads by gateways", load.quotes_per_s * gateway.quote_readers,
                        i.broker_us_per_record_read * US, ("broker_us_per_record_read",)))
    brokers = brokers_for(sum(w.busy for w in broker_work), i.broker_cores, util, replicas,
                          i.partition_replicas_per_broker_max, int(i.brokers_min))
    broker = Service("Kafka brokers", broker_work, brokers, brokers * i.broker_cores,
                     notes=(f"{brokers} brokers of {i.broker_cores:g} cores, each replica "
                            f"x{replica_factor:g} of the measured work, "
                            f"{replicas / brokers:,.0f} partition replicas each",))

    services = (gateway_service, accounts, fix_gateway, sinks, postgres, broker, connectors,
                market_data, redis)
    blockers = [f"{s.name}: {blocker}" for s in services for blocker in s.blockers]
    return Plan(load=load, services=services, partitions=partitions, shards=shards,
                partitions_per_shard=per_shard, brokers=brokers, partition_replicas=replicas,
                hot_symbol=hot, gateway=gateway, blockers=tuple(blockers))


# ---- output ------------------------------------------------------------------------------


def _round(value: float, digits: int = 3) -> float:
    return round(value, digits) if math.isfinite(value) else value


def plan_json(p: Plan, i: Inputs, figures: Mapping[str, Figure]) -> dict[str, Any]:
    load = p.load
    return {
        "benchmark": "capacity",
        "load": {"orders_per_s": round(load.orders_per_s), "quotes_per_s": round(load.quotes_per_s),
                 "hot_symbol_orders_per_s": round(load.hot_symbol_orders_per_s),
                 "hot_symbol_quotes_per_s": round(load.hot_symbol_quotes_per_s),
                 "ws_connections": round(load.ws_connections),
                 "ws_updates_per_s": round(load.ws_updates_per_s),
                 "ledger_entries_per_s": round(load.ledger_entries_per_s),
                 "records_per_s": {t: round(r) for t, r in load.records_per_s.items()}},
        "target_utilisation": i.target_utilisation,
        "services": [{
            "name": s.name, "busy_cores": _round(s.busy, 1), "processes": s.processes,
            "cores": _round(s.cores, 1),
            "fixed_cores_per_process": _round(s.fixed_cores_per_process),
            "fits_as_built": s.fits_as_built, "notes": list(s.notes),
            "as_built_limits": list(s.blockers),
            "figures": {name: figures[name].status if name in figures else "default"
                        for name in s.figures},
            "work": [{"unit": w.unit, "rate_per_s": round(w.rate_per_s),
                      "cpu_us_per_unit": _round(w.cpu_s_per_unit / US, 2),
                      "busy_cores": _round(w.busy * (s.processes if w.per_process else 1), 1),
                      "per_process": w.per_process} for w in s.work],
        } for s in p.services],
        "totals": {"cores": _round(p.cores, 1), "busy_cores": _round(
            sum(s.busy for s in p.services), 1)},
        "partitions": p.partitions,
        "kafka": {"brokers": p.brokers, "replication_factor": i.replication_factor,
                  "partition_replicas": p.partition_replicas},
        "postgres": {"shards": p.shards, "partitions_per_shard": p.partitions_per_shard,
                     "ledger_entries_per_s_per_shard": round(load.ledger_entries_per_s / p.shards)},
        "websocket": {"connections_per_process": round(p.gateway.connections_per_process),
                      "memory_mb_per_process": round(p.gateway.memory_mb_per_process),
                      "connections_by_memory_per_process": round(p.gateway.connections_by_memory),
                      "events_tail_cores_per_process_as_built": _round(
                          p.gateway.events_tail_cores_as_built, 2),
                      "as_built_orders_per_s_max": round(p.gateway.as_built_orders_per_s_max)},
        "hot_symbol": {"quotes_per_s": round(p.hot_symbol.quotes_per_s),
                       "orders_per_s": round(p.hot_symbol.orders_per_s),
                       "partition_share": _round(p.hot_symbol.partition_share),
                       "market_data_process_share": _round(p.hot_symbol.process_share),
                       "fits": p.hot_symbol.fits},
        "blockers": list(p.blockers),
        "inputs": {name: msgspec.to_builtins(figures[name]) if name in figures
                   else getattr(i, name) for name in Inputs.__struct_fields__},
    }


def basis(service: Service, figures: Mapping[str, Figure]) -> str:
    """How the service's CPU figures were come by: "measured", "assumed" or both."""
    statuses = {figures[name].status for name in service.figures if name in figures}
    return " + ".join(s for s in ("measured", "assumed") if s in statuses) or "given"


def _work_text(service: Service) -> str:
    parts = []
    for w in service.work:
        cost = w.cpu_s_per_unit / US
        parts.append(("each process: " if w.per_process else "")
                     + f"{w.rate_per_s:,.0f} {w.unit}/s x "
                     + (f"{cost / 1000:.2f} ms" if cost >= 100 else f"{cost:.1f} µs"))
    return "; ".join(parts)


def plan_table(p: Plan, i: Inputs, figures: Mapping[str, Figure]) -> str:
    """The plan as a Markdown table and a few lines under it."""
    load = p.load
    rows = ["| service | work at peak x CPU per unit | CPU figures | busy cores | processes "
            "| cores |", "|---|---|---|---:|---:|---:|"]
    for s in p.services:
        mark = "" if s.fits_as_built else " (*)"
        rows.append(f"| {s.name}{mark} | {_work_text(s)} | {basis(s, figures)} | {s.busy:,.0f} "
                    f"| {s.processes:,} | {s.cores:,.0f} |")
    rows.append(f"| **total** | | | {sum(s.busy for s in p.services):,.0f} | | "
                f"**{p.cores:,.0f}** |")
    account = p.partitions["orders.commands"]
    gateway = next(s for s in p.services if s.name == "HTTP/WebSocket gateway")
    lines = [
        f"Peak with the {i.spike_factor:g}x spike: {load.orders_per_s:,.0f} orders/s, "
        f"{load.quotes_per_s:,.0f} quotes/s, {load.ws_connections:,.0f} WebSocket connections "
        f"({load.ws_updates_per_s:,.0f} updates/s), {load.ledger_entries_per_s:,.0f} ledger "
        f"entries/s; every process at most {i.target_utilisation:.0%} busy.",
        "",
        *rows,
        "",
        f"- Kafka: {p.brokers} brokers of {i.broker_cores:g} cores, replication factor "
        f"{i.replication_factor:g}, {p.partition_replicas:,} partition replicas; the CPU per "
        f"order and per quote is the measured figure x{_replica_factor(i):g}, each follower "
        f"replica charged {i.broker_replica_cost_share:.0%} of the leader's.",
        f"- Partitions: {account:,} for each account-keyed topic ({p.shards} shards x "
        f"{p.partitions_per_shard}), {p.partitions['quotes']:,} for quotes, candles and "
        "market.status (one of them the hot symbol's own), 1 per dead-letter topic.",
        f"- PostgreSQL: {p.shards} shards, "
        f"{load.ledger_entries_per_s / p.shards:,.0f} ledger entries/s each.",
        f"- WebSocket: {p.gateway.connections_per_process:,.0f} connections per gateway process "
        f"({p.gateway.memory_mb_per_process:,.0f} MB at {i.ws_kb_per_connection:g} KB each; "
        f"memory alone would allow {p.gateway.connections_by_memory:,.0f}); reading every "
        f"quote takes {gateway.fixed_cores_per_process:.2f} of each process's "
        f"{process_budget(i.target_utilisation):.2f} core.",
        f"- Hot symbol: {p.hot_symbol.quotes_per_s:,.0f} quotes/s on its own partition "
        f"({p.hot_symbol.partition_share:.0%} of one) and market-data process "
        f"({p.hot_symbol.process_share:.0%} of its budget); "
        f"{p.hot_symbol.orders_per_s:,.0f} orders/s spread over the account partitions.",
        f"- Not sized: the market makers (the simulator took {i.simulator_ms_per_order:g} ms "
        "per order).",
    ]
    for blocker in p.blockers:
        lines.append(f"- (*) {blocker}.")
    return "\n".join(lines)


# ---- what one order writes (the records_per_order and ledger_entries_per_order figures) ----


def measure_order(decode_loops: int = 20_000) -> dict[str, Any]:
    """One filled market buy through the account core (the command, the market maker's ack
    and one fill): records per topic with their mean encoded size, ledger entries, and the
    time to decode one `orders.events` record as the gateway's tail does (a lower bound of
    its read cost: the consumer's own work is not in it)."""
    import datetime as dt
    import time
    import timeit
    from decimal import Decimal

    from state import topics as t
    from state.domain.account import AccountState, MarketContext, RiskLimits, decide
    from state.ids import order_id_for
    from state.messages import (
        Deposit,
        ExecType,
        ExecutionReport,
        LedgerTransaction,
        OrderType,
        PlaceOrder,
        Side,
    )

    account, now = "acc_capacity1", dt.datetime(2026, 3, 2, 15, 0, tzinfo=dt.UTC)
    oid = order_id_for(account, "o-1")
    state = AccountState.empty(account)
    market, limits = MarketContext(), RiskLimits()
    state, _ = decide(state, Deposit(account_id=account, idempotency_key="d-1",
                                     amount=Decimal("100000"), submitted_at=now),
                      now, market, limits)
    command = PlaceOrder(account_id=account, idempotency_key="o-1", symbol="AAPL", side=Side.BUY,
                         order_type=OrderType.MARKET, quantity=Decimal("10"), submitted_at=now,
                         reference_price=Decimal("100"), reference_time=now)

    def report(exec_id: str, exec_type: ExecType, qty: str, cum: str, leaves: str
               ) -> ExecutionReport:
        return ExecutionReport(account_id=account, exec_id=exec_id, order_id=oid, cl_ord_id=oid,
                               exec_type=exec_type, symbol="AAPL", side=Side.BUY,
                               last_qty=Decimal(qty), last_px=Decimal("100.05"),
                               cum_qty=Decimal(cum), leaves_qty=Decimal(leaves),
                               transact_time=now, market_maker="mm1")

    inputs: list[PlaceOrder | ExecutionReport] = [
        command, report("x0", ExecType.NEW, "0", "0", "10"),
        report("x1", ExecType.TRADE, "10", "10", "0")]
    records: dict[str, list[int]] = {}
    entries = 0
    events: list[bytes] = []
    for message in inputs:
        source = (t.Topic.EXECUTIONS if isinstance(message, ExecutionReport)
                  else t.Topic.ORDERS_COMMANDS)
        records.setdefault(str(source), []).append(len(t.encode(message)))
        state, outputs = decide(state, message, now, market, limits)
        for output in outputs:
            raw = t.encode(output)
            topic = t.topic_for(output)
            records.setdefault(str(topic), []).append(len(raw))
            if topic == t.Topic.ORDERS_EVENTS:
                events.append(raw)
            if isinstance(output, LedgerTransaction):
                entries += len(output.entries)
    # CPU time, not wall clock: the machine is shared
    seconds = timeit.timeit(lambda: [t.decode(t.Topic.ORDERS_EVENTS, raw) for raw in events],
                            number=decode_loops, timer=time.process_time)
    return {"order": "market buy of 10 AAPL: command, ack, one fill",
            "records_per_topic": {topic: len(sizes) for topic, sizes in records.items()},
            "mean_bytes_per_topic": {topic: round(sum(sizes) / len(sizes))
                                     for topic, sizes in records.items()},
            "ledger_entries": entries,
            "event_decode_us": round(seconds / (decode_loops * len(events)) * 1e6, 2)}


# ---- command line ------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=Path, default=DEFAULT_INPUTS,
                        help="JSON file of figures (default: %(default)s)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override one figure (repeatable)")
    parser.add_argument("--format", choices=("both", "json", "table"), default="both")
    parser.add_argument("--measure-order", action="store_true",
                        help="print what one filled market buy writes, then exit")
    args = parser.parse_args(argv)
    if args.measure_order:
        print(json.dumps(measure_order(), indent=2))
        return 0
    try:
        overrides = dict(parse_override(text) for text in args.set)
        inputs, figures = load_inputs(args.inputs, overrides)
        result = plan(inputs)
    except CapacityInputError as error:
        print(f"capacity: {error}", file=sys.stderr)
        return 2
    if args.format in ("both", "json"):
        print(json.dumps(plan_json(result, inputs, figures), indent=2, ensure_ascii=False))
    if args.format == "both":
        print()
    if args.format in ("both", "table"):
        print(plan_table(result, inputs, figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
