"""Which partition of a symbol-keyed topic a symbol's records go to.

Hot symbols (the meme-stock case) get a dedicated partition each, named in the configuration
(`hot_symbols = {GME = 3}`); every other symbol is spread by Kafka's murmur2 of the key (the
Java client's default) over the partitions that are left. A hot symbol's partition thus
carries that symbol only, and the market-data topology, run with as many worker processes as
there are partitions, gives it a consumer of its own. Every producer of `quotes` must use the
same map: connectors pick the partition explicitly rather than trusting a client's default.
"""

from __future__ import annotations

from collections.abc import Mapping

from connectors.exceptions import ConnectorConfigError
from state.ids import murmur2


def check_hot_symbols(hot_symbols: Mapping[str, int], partitions: int | None = None) -> None:
    """ConnectorConfigError unless every hot symbol has its own partition, in range when the
    count is known, and at least one partition is left for the other symbols."""
    taken: dict[int, str] = {}
    for symbol, partition in sorted(hot_symbols.items()):
        if partition < 0 or (partitions is not None and partition >= partitions):
            where = f" of {partitions}" if partitions is not None else ""
            raise ConnectorConfigError(
                f"hot_symbols: {symbol} -> partition {partition} is not a partition{where}")
        if partition in taken:
            raise ConnectorConfigError(
                f"hot_symbols: {symbol} and {taken[partition]} share partition {partition}; "
                "each hot symbol needs its own")
        taken[partition] = symbol
    if partitions is not None and len(taken) >= partitions:
        raise ConnectorConfigError(
            f"hot_symbols: {len(taken)} hot symbols leave none of {partitions} partitions "
            "for the other symbols")


class SymbolPartitioner:
    def __init__(self, partitions: int, hot_symbols: Mapping[str, int]) -> None:
        check_hot_symbols(hot_symbols, partitions)
        self._hot = dict(hot_symbols)
        dedicated = set(self._hot.values())
        self._rest = [p for p in range(partitions) if p not in dedicated]
        self._cache: dict[str, int] = {}

    def partition(self, symbol: str) -> int:
        found = self._cache.get(symbol)
        if found is None:
            found = self._hot.get(symbol)
            if found is None:
                hashed = murmur2(symbol.encode()) & 0x7FFFFFFF
                found = self._rest[hashed % len(self._rest)]
            self._cache[symbol] = found
        return found
