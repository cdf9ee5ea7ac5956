"""Hot symbols get a partition to themselves; the rest spread by murmur2 over the others."""

from __future__ import annotations

import msgspec
import pytest

from connectors.config import ConnectorsConfig
from connectors.exceptions import ConnectorConfigError
from connectors.partitioning import SymbolPartitioner
from state.ids import partition_for_key

SYMBOLS = [f"S{i:03d}" for i in range(300)] + ["AAPL", "MSFT", "TSLA", "SPY", "AMC"]


def test_a_hot_symbol_owns_its_partition() -> None:
    partitioner = SymbolPartitioner(4, {"GME": 3})
    assert partitioner.partition("GME") == 3
    placed = {symbol: partitioner.partition(symbol) for symbol in SYMBOLS}
    assert 3 not in placed.values()
    assert set(placed.values()) == {0, 1, 2}  # the others still spread over what is left


def test_without_hot_symbols_it_is_kafkas_murmur2() -> None:
    partitioner = SymbolPartitioner(6, {})
    assert all(partitioner.partition(s) == partition_for_key(s, 6) for s in SYMBOLS)


def test_several_hot_symbols() -> None:
    partitioner = SymbolPartitioner(8, {"GME": 7, "AMC": 0})
    others = {partitioner.partition(s) for s in SYMBOLS if s not in ("GME", "AMC")}
    assert (partitioner.partition("GME"), partitioner.partition("AMC")) == (7, 0)
    assert others == {1, 2, 3, 4, 5, 6}


@pytest.mark.parametrize(("hot", "partitions", "match"), [
    ({"GME": 4}, 4, "not a partition of 4"),
    ({"GME": -1}, 4, "not a partition"),
    ({"GME": 1, "AMC": 1}, 4, "share partition 1"),
    ({"GME": 0, "AMC": 1}, 2, "leave none of 2"),
])
def test_bad_maps_are_refused(hot: dict[str, int], partitions: int, match: str) -> None:
    with pytest.raises(ConnectorConfigError, match=match):
        SymbolPartitioner(partitions, hot)


def test_the_runtime_config_checks_the_map() -> None:
    data = {"bootstrap_servers": "x:1", "connectors": [], "hot_symbols": {"GME": 2}}
    assert msgspec.convert(data, ConnectorsConfig).hot_symbols == {"GME": 2}
    with pytest.raises(msgspec.ValidationError, match="share partition"):
        msgspec.convert({**data, "hot_symbols": {"GME": 2, "AMC": 2}}, ConnectorsConfig)
