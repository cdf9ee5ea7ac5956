"""The capacity model's arithmetic (benchmarks/capacity.py) and its shipped inputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import msgspec
import pytest
import yaml

from benchmarks import capacity as c

ROOT = Path(__file__).parents[3]
COMPOSE_FILE = ROOT / "compose" / "docker-compose.yml"


@pytest.fixture(scope="module")
def shipped() -> tuple[c.Inputs, dict[str, c.Figure]]:
    return c.load_inputs(c.DEFAULT_INPUTS)


@pytest.fixture(scope="module")
def inputs(shipped: tuple[c.Inputs, dict[str, c.Figure]]) -> c.Inputs:
    return shipped[0]


def scaled(inputs: c.Inputs, factor: float) -> c.Inputs:
    return msgspec.structs.replace(
        inputs, peak_requests_per_s=inputs.peak_requests_per_s * factor,
        peak_quotes_per_s=inputs.peak_quotes_per_s * factor,
        websocket_connections=inputs.websocket_connections * factor)


def by_name(plan: c.Plan) -> dict[str, c.Service]:
    return {service.name: service for service in plan.services}


# ---- the small functions -----------------------------------------------------------------


def test_busy_cores_is_rate_times_cpu_per_unit() -> None:
    assert c.busy_cores(1000, 0.5e-3) == pytest.approx(0.5)
    assert c.busy_cores(0, 1.0) == 0


def test_processes_leave_the_headroom_and_the_fixed_work() -> None:
    assert c.processes_for(1.2, 0.6) == 2
    assert c.processes_for(1.21, 0.6) == 3
    assert c.processes_for(0.0, 0.6) == 1
    # a process that must spend 0.2 core on its own keeps 0.4 for its share
    assert c.processes_for(1.2, 0.6, fixed_cores=0.2) == 3


def test_a_process_whose_fixed_work_fills_its_budget_is_refused() -> None:
    with pytest.raises(c.CapacityInputError, match="fixed work"):
        c.processes_for(1.0, 0.6, fixed_cores=0.6)


def test_partitions_cover_the_rate_and_the_biggest_consumer_group() -> None:
    assert c.partitions_for(25_000, 10_000) == 3
    assert c.partitions_for(25_000, 10_000, consumers=40) == 40
    assert c.partitions_for(0, 10_000) == 1


def test_account_partitions_are_a_multiple_of_the_shards() -> None:
    assert c.shard_layout(910, 179, 1) == (6, 1074)
    assert c.shard_layout(10, 4, 1) == (3, 12)
    # each of a shard's sink workers needs a partition of its own
    assert c.shard_layout(4, 4, 2) == (2, 8)


def test_brokers_by_cpu_by_replicas_and_at_least_the_layout() -> None:
    assert c.brokers_for(1.0, 16, 0.6, 100, 4000, 3) == 3
    assert c.brokers_for(96.0, 16, 0.6, 100, 4000, 3) == 10
    assert c.brokers_for(1.0, 16, 0.6, 40_001, 4000, 3) == 11


# ---- the plan ----------------------------------------------------------------------------


def test_doubling_the_load_doubles_the_cores(inputs: c.Inputs) -> None:
    # without the work every gateway process does whatever its share (reading every quote,
    # which the brokers serve to each of them: the next test), everything is linear
    linear = msgspec.structs.replace(inputs, http_us_per_quote_read=0,
                                     broker_us_per_record_read=0)
    single, double = c.plan(linear), c.plan(scaled(linear, 2))
    one, two = by_name(single), by_name(double)
    assert single.load.orders_per_s * 2 == pytest.approx(double.load.orders_per_s)
    for name, service in one.items():
        assert two[name].busy == pytest.approx(2 * service.busy), name
    # processes round up, each on its own: doubling lands within one of twice as many
    for name in ("account topology", "FIX gateway"):
        assert 2 * one[name].processes - 1 <= two[name].processes <= 2 * one[name].processes
    assert double.shards in (2 * single.shards - 1, 2 * single.shards)
    gateway = "HTTP/WebSocket gateway"
    assert two[gateway].cores / one[gateway].cores == pytest.approx(2, rel=0.01)


def test_gateway_cores_grow_faster_than_the_quotes_it_reads(inputs: c.Inputs) -> None:
    # every gateway process reads every quote: twice the users with the same quotes is twice
    # the processes, but twice the quotes too leaves each process less room for its users
    gateway = "HTTP/WebSocket gateway"
    cheap = msgspec.structs.replace(inputs, http_us_per_quote_read=1.0)
    one = by_name(c.plan(cheap))[gateway]
    users = by_name(c.plan(msgspec.structs.replace(
        scaled(cheap, 2), peak_quotes_per_s=inputs.peak_quotes_per_s)))[gateway]
    everything = by_name(c.plan(scaled(cheap, 2)))[gateway]
    assert users.cores / one.cores == pytest.approx(2, rel=0.01)
    assert everything.fixed_cores_per_process == pytest.approx(2 * one.fixed_cores_per_process)
    assert everything.cores > users.cores
    # and the brokers serve every quote to every one of them
    brokers = by_name(c.plan(cheap))["Kafka brokers"]
    reads = next(w for w in brokers.work if w.unit == "quote reads by gateways")
    assert reads.rate_per_s == pytest.approx(c.plan(cheap).load.quotes_per_s * one.processes)


def test_a_quote_tail_above_a_process_budget_is_an_as_built_limit(inputs: c.Inputs) -> None:
    # reading every quote takes a whole process: no process is left for users
    flooded = msgspec.structs.replace(inputs, peak_quotes_per_s=1e6)
    result = c.plan(flooded)
    gateway = by_name(result)["HTTP/WebSocket gateway"]
    assert not gateway.fits_as_built
    assert any("every quote" in blocker for blocker in gateway.blockers)
    assert gateway.fixed_cores_per_process == 0  # sized as if one relay read them
    assert result.gateway.quote_readers == 1
    assert result.gateway.as_built_orders_per_s_max == 0


def test_more_headroom_means_more_processes(inputs: c.Inputs) -> None:
    tight = by_name(c.plan(msgspec.structs.replace(inputs, target_utilisation=0.9)))
    loose = by_name(c.plan(msgspec.structs.replace(inputs, target_utilisation=0.45)))
    assert loose["account topology"].processes == pytest.approx(
        2 * tight["account topology"].processes, abs=1)


def test_the_spike_sizes_the_hot_symbols_partition(inputs: c.Inputs) -> None:
    calm = c.plan(msgspec.structs.replace(inputs, spike_factor=1))
    spike = c.plan(inputs)
    hot_calm = inputs.peak_quotes_per_s * inputs.hot_symbol_quote_share
    assert calm.hot_symbol.quotes_per_s == pytest.approx(hot_calm)
    assert spike.hot_symbol.quotes_per_s == pytest.approx(hot_calm * inputs.spike_factor)
    assert spike.hot_symbol.partition_share == pytest.approx(
        hot_calm * inputs.spike_factor / inputs.partition_records_per_s)
    # the other symbols are unchanged: the total grows by the hot symbol's extra only
    assert spike.load.quotes_per_s - calm.load.quotes_per_s == pytest.approx(
        hot_calm * (inputs.spike_factor - 1))
    # the hot symbol has a partition and a market-data process of its own
    assert spike.partitions["quotes"] == c.partitions_for(
        spike.load.quotes_per_s - spike.hot_symbol.quotes_per_s, inputs.partition_records_per_s,
        by_name(spike)["market-data topology"].processes - 1) + 1


def test_a_spike_one_partition_cannot_take_is_a_blocker(inputs: c.Inputs) -> None:
    # the hot symbol's quotes keep their key: past one partition's rate they cannot be split
    too_hot = msgspec.structs.replace(inputs, hot_symbol_quote_share=0.02, spike_factor=10,
                                      partition_records_per_s=10_000)
    result = c.plan(too_hot)
    assert result.hot_symbol.quotes_per_s == pytest.approx(20_000)
    assert not result.hot_symbol.fits
    assert not by_name(result)["market-data topology"].fits_as_built
    assert any("hot symbol" in blocker for blocker in result.blockers)


def test_the_spike_adds_the_hot_symbols_extra_orders(inputs: c.Inputs) -> None:
    result = c.plan(inputs)
    base = inputs.peak_requests_per_s * inputs.order_share_of_requests
    extra = base * inputs.hot_symbol_order_share * (inputs.spike_factor - 1)
    assert result.load.orders_per_s == pytest.approx(base + extra)
    assert result.load.ledger_entries_per_s == pytest.approx(
        (base + extra) * inputs.ledger_entries_per_order)


def test_shards_follow_the_ledger_write_rate(inputs: c.Inputs) -> None:
    # make the per-entry figures the binding ones, then double the entries per order
    per_entry = msgspec.structs.replace(inputs, sinks_ms_per_order=0, postgres_ms_per_order=0)
    single = c.plan(per_entry)
    double = c.plan(msgspec.structs.replace(
        per_entry, ledger_entries_per_order=2 * inputs.ledger_entries_per_order))
    assert double.shards in (2 * single.shards - 1, 2 * single.shards)
    per_shard = single.load.ledger_entries_per_s / single.shards
    worker = max(inputs.sink_worker_us_per_entry, inputs.postgres_us_per_entry) * 1e-6
    assert per_shard <= inputs.target_utilisation / worker


def test_the_gateways_as_built_events_tail_is_per_process(inputs: c.Inputs) -> None:
    result = c.plan(inputs)
    events = result.load.records_per_s["orders.events"]
    assert result.gateway.events_tail_cores_as_built == pytest.approx(
        events * inputs.http_us_per_event_read * 1e-6)
    gateway = by_name(result)["HTTP/WebSocket gateway"]
    assert not gateway.fits_as_built  # the seed's peak is far past one process's tail
    limit = result.gateway.as_built_orders_per_s_max
    budget = c.process_budget(inputs.target_utilisation, gateway.fixed_cores_per_process)
    assert limit == pytest.approx(
        budget / (inputs.event_records_per_order * inputs.http_us_per_event_read * 1e-6))
    small = c.plan(msgspec.structs.replace(
        inputs, peak_requests_per_s=0.5 * limit, hot_symbol_order_share=0))
    assert by_name(small)["HTTP/WebSocket gateway"].fits_as_built


def test_websocket_connections_per_process_respect_memory(inputs: c.Inputs) -> None:
    lean = msgspec.structs.replace(inputs, gateway_memory_mb_per_process=10)
    result = c.plan(lean)
    assert result.gateway.connections_per_process * inputs.ws_kb_per_connection <= 10 * 1024
    assert result.gateway.connections_by_memory == pytest.approx(
        10 * 1024 / inputs.ws_kb_per_connection)


def test_the_fix_gateway_is_one_process_as_built(inputs: c.Inputs) -> None:
    fix = by_name(c.plan(inputs))["FIX gateway"]
    assert fix.processes > 1 and not fix.fits_as_built
    light = msgspec.structs.replace(inputs, peak_requests_per_s=1000, hot_symbol_order_share=0)
    assert by_name(c.plan(light))["FIX gateway"].fits_as_built


# ---- inputs ------------------------------------------------------------------------------


def test_unknown_fields_are_refused_by_the_frozen_inputs(inputs: c.Inputs) -> None:
    values = msgspec.structs.asdict(inputs)
    with pytest.raises(msgspec.ValidationError, match="unknown field `cores_per_order`"):
        msgspec.convert({**values, "cores_per_order": 1.0}, c.Inputs)
    with pytest.raises(c.CapacityInputError, match="unknown figure.*cores_per_order"):
        c.inputs_from_values({**values, "cores_per_order": 1.0})
    with pytest.raises(AttributeError):
        inputs.target_utilisation = 0.9  # type: ignore[misc]


def test_a_missing_figure_is_named(inputs: c.Inputs) -> None:
    values = msgspec.structs.asdict(inputs)
    del values["broker_cores"]
    with pytest.raises(c.CapacityInputError, match="missing figure.*broker_cores"):
        c.inputs_from_values(values)


def test_bad_values_are_named(inputs: c.Inputs) -> None:
    values = msgspec.structs.asdict(inputs)
    for name, value, message in (("target_utilisation", 0, "target_utilisation"),
                                 ("target_utilisation", 1.5, "target_utilisation"),
                                 ("replication_factor", 2.5, "not a whole number"),
                                 ("broker_cores", -1, "broker_cores"),
                                 ("hot_symbol_order_share", 2, "above 1")):
        with pytest.raises(c.CapacityInputError, match=message):
            c.inputs_from_values({**values, name: value})


def _write(tmp_path: Path, figures: dict[str, object]) -> Path:
    path = tmp_path / "inputs.json"
    path.write_text(json.dumps({"figures": figures}))
    return path


def test_the_file_refuses_unknown_figures_and_unknown_keys(tmp_path: Path) -> None:
    document = json.loads(c.DEFAULT_INPUTS.read_text())
    figures = dict(document["figures"])
    with pytest.raises(c.CapacityInputError, match="unknown figure.*quotes_per_core"):
        c.load_inputs(_write(tmp_path, {**figures, "quotes_per_core": {
            "value": 1, "status": "assumed", "reason": "x"}}))
    with pytest.raises(c.CapacityInputError, match="unknown field `units`"):
        c.load_inputs(_write(tmp_path, {**figures, "broker_cores": {
            "value": 16, "status": "assumed", "reason": "x", "units": "cores"}}))


def test_a_measured_figure_needs_its_source_and_an_assumed_one_its_reason(
        tmp_path: Path) -> None:
    figures = dict(json.loads(c.DEFAULT_INPUTS.read_text())["figures"])
    with pytest.raises(c.CapacityInputError, match="source command and date"):
        c.load_inputs(_write(tmp_path, {**figures, "broker_cores": {
            "value": 16, "status": "measured"}}))
    with pytest.raises(c.CapacityInputError, match="reason"):
        c.load_inputs(_write(tmp_path, {**figures, "broker_cores": {
            "value": 16, "status": "assumed"}}))


def test_overrides_replace_one_figure_and_say_so(tmp_path: Path) -> None:
    inputs, figures = c.load_inputs(c.DEFAULT_INPUTS, {"broker_cores": 32.0})
    assert inputs.broker_cores == 32
    assert figures["broker_cores"].status == "assumed"
    assert "overridden" in figures["broker_cores"].reason
    assert c.parse_override("broker_cores=32") == ("broker_cores", 32.0)
    with pytest.raises(c.CapacityInputError, match="unknown figure"):
        c.parse_override("broker_core=32")
    with pytest.raises(c.CapacityInputError, match="not a number"):
        c.parse_override("broker_cores=many")
    with pytest.raises(c.CapacityInputError, match="NAME=VALUE"):
        c.parse_override("broker_cores")


def test_the_shipped_inputs_name_every_figure_and_its_basis(
        shipped: tuple[c.Inputs, dict[str, c.Figure]]) -> None:
    _inputs, figures = shipped
    assert set(figures) == c.FIGURE_NAMES
    for name, figure in figures.items():
        if figure.status == "measured":
            assert figure.source and figure.date, name
        else:
            assert figure.reason, name


def test_the_shipped_layout_is_the_compose_files(inputs: c.Inputs) -> None:
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    kafka = [name for name in services if name.startswith("kafka-")]
    assert inputs.brokers_min == len(kafka)
    env = services[kafka[0]]["environment"]
    assert inputs.replication_factor == env["KAFKA_DEFAULT_REPLICATION_FACTOR"]


def test_the_shipped_records_per_order_are_what_the_core_writes(inputs: c.Inputs) -> None:
    counted = c.measure_order(decode_loops=10)
    records = counted["records_per_topic"]
    assert records["orders.commands"] == inputs.command_records_per_order
    assert records["orders.route"] == inputs.route_records_per_order
    assert records["executions"] == inputs.execution_records_per_order
    assert records["orders.events"] == inputs.event_records_per_order
    assert records["ledger.postings"] == inputs.posting_records_per_order
    assert counted["ledger_entries"] == inputs.ledger_entries_per_order
    assert counted["event_decode_us"] > 0


# ---- the command line --------------------------------------------------------------------


def test_the_script_prints_json_and_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert c.main(["--format", "json", "--set", "target_utilisation=0.5"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["target_utilisation"] == 0.5
    assert printed["inputs"]["target_utilisation"]["status"] == "assumed"
    assert {s["name"] for s in printed["services"]} >= {"account topology", "Kafka brokers"}
    assert all(math.isfinite(s["cores"]) for s in printed["services"])
    assert c.main(["--format", "table"]) == 0
    table = capsys.readouterr().out
    assert "| **total** |" in table and "connections per gateway process" in table


def test_the_script_refuses_an_unknown_override(capsys: pytest.CaptureFixture[str]) -> None:
    assert c.main(["--set", "turbo=1"]) == 2
    assert "unknown figure" in capsys.readouterr().err


def test_the_readme_shows_the_table_of_the_shipped_inputs(
        shipped: tuple[c.Inputs, dict[str, c.Figure]]) -> None:
    inputs, figures = shipped
    table = c.plan_table(c.plan(inputs), inputs, figures)
    readme = (ROOT / "README.md").read_text()
    assert table in readme, "README's capacity table is stale: paste `python " \
        "benchmarks/capacity.py --format table` into its 'Capacity past one machine' section"
