"""The shard router: partitions to shards, accounts to shards, new account ids."""

from __future__ import annotations

import pytest

from state.ids import partition_for_key
from state.router import ShardRouter


def test_partitions_are_grouped_by_shard() -> None:
    router = ShardRouter(shards=3, partitions_per_shard=4)
    assert [router.shard_of_partition(p) for p in range(12)] == [0] * 4 + [1] * 4 + [2] * 4
    assert list(router.partitions_of_shard(1)) == [4, 5, 6, 7]
    with pytest.raises(AssertionError):
        router.shard_of_partition(12)


def test_account_shard_follows_its_murmur2_partition() -> None:
    router = ShardRouter(shards=2, partitions_per_shard=2)
    for i in range(50):
        account_id, shard = router.new_account_id(f"user-{i}")
        assert router.shard_of_account(account_id) == shard
        assert router.partition_of_account(account_id) == partition_for_key(account_id, 4)
        assert router.partition_of_account(account_id) in router.partitions_of_shard(shard)


def test_new_account_ids_are_deterministic_and_spread() -> None:
    router = ShardRouter(shards=2, partitions_per_shard=3)
    assert router.new_account_id("seed-a") == router.new_account_id("seed-a")
    shards = [router.new_account_id(f"seed-{i}")[1] for i in range(200)]
    assert 60 < shards.count(0) < 140


def test_least_loaded_shard_is_chosen_when_loads_are_known() -> None:
    router = ShardRouter(shards=3, partitions_per_shard=2)
    assert router.new_account_id("x", loads={0: 10, 1: 3, 2: 7})[1] == 1
    ties = {router.choose_shard(f"s{i}", loads={0: 5, 1: 2, 2: 2}) for i in range(40)}
    assert ties == {1, 2}
