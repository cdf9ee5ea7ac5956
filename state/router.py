"""Which shard owns an account.

Account-keyed topics have `shards * partitions_per_shard` partitions; shard `s` owns partitions
`[s * partitions_per_shard, (s + 1) * partitions_per_shard)`. An account's partition is the
murmur2 partition of its id (what producers with `partitioner=murmur2_random` choose), so the
shard follows from the id alone: no lookup, and the directory table on shard 0 only answers
"which accounts does this user have".

New accounts: the shard is chosen by a policy, then an id is derived from the seed that hashes
into that shard's partitions (`state.ids.account_id_for`). The default policy hashes the seed,
so retrying a creation with the same seed yields the same id; given the current account count
per shard, the least loaded shard is chosen instead.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping

from state.ids import account_id_for, partition_for_key
from state.ids import shard_of_partition as _shard_of_partition


@functools.lru_cache(maxsize=1 << 16)
def account_partition(account_id: str, partitions: int) -> int:
    """Cached: murmur2 in Python costs more than decoding a record, and the records of a sink
    or a gateway come from far fewer accounts than records."""
    return partition_for_key(account_id, partitions)


class ShardRouter:
    def __init__(self, shards: int, partitions_per_shard: int) -> None:
        assert shards >= 1, f"shards must be at least 1, got {shards}"
        assert partitions_per_shard >= 1, (
            f"partitions_per_shard must be at least 1, got {partitions_per_shard}")
        self.shards = shards
        self.partitions_per_shard = partitions_per_shard

    @property
    def partitions(self) -> int:
        return self.shards * self.partitions_per_shard

    def shard_of_partition(self, partition: int) -> int:
        assert 0 <= partition < self.partitions, (
            f"partition {partition} outside 0..{self.partitions - 1}")
        return _shard_of_partition(partition, self.partitions_per_shard)

    def partition_of_account(self, account_id: str) -> int:
        return account_partition(account_id, self.partitions)

    def shard_of_account(self, account_id: str) -> int:
        return self.shard_of_partition(self.partition_of_account(account_id))

    def partitions_of_shard(self, shard: int) -> range:
        assert 0 <= shard < self.shards, f"shard {shard} outside 0..{self.shards - 1}"
        first = shard * self.partitions_per_shard
        return range(first, first + self.partitions_per_shard)

    def choose_shard(self, seed: str, loads: Mapping[int, int] | None = None) -> int:
        """The least loaded shard when `loads` (accounts per shard) is given, ties broken by
        the seed's hash; otherwise the seed's hash alone (uniform and deterministic)."""
        hashed = int.from_bytes(hashlib.blake2b(seed.encode(), digest_size=8).digest(), "big")
        if not loads:
            return hashed % self.shards
        least = min(loads.get(shard, 0) for shard in range(self.shards))
        candidates = [shard for shard in range(self.shards) if loads.get(shard, 0) == least]
        return candidates[hashed % len(candidates)]

    def new_account_id(self, seed: str, loads: Mapping[int, int] | None = None
                       ) -> tuple[str, int]:
        """(account_id, shard) for a new account; deterministic in `seed` (and `loads`)."""
        shard = self.choose_shard(seed, loads)
        account_id = account_id_for(seed, shard, self.shards, self.partitions_per_shard)
        assert self.shard_of_account(account_id) == shard
        return account_id, shard
