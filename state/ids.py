"""Deterministic ids and the partition arithmetic that aligns accounts with shards.

Ids derive from what caused them, so replaying any topic produces the same ids. Partitioning
uses Kafka's murmur2 (the Java client's default), so any producer configured with
`partitioner=murmur2_random` places an account's records in its shard's partitions.
"""

from __future__ import annotations

import hashlib


def _digest(*parts: str, size: int = 10) -> str:
    return hashlib.blake2b("\x1f".join(parts).encode(), digest_size=size).hexdigest()


def order_id_for(account_id: str, idempotency_key: str) -> str:
    """The system-assigned order id, derived from the client's idempotency key."""
    return "ord_" + _digest(account_id, idempotency_key)


def cl_ord_id_for(order_id: str, attempt: int = 0) -> str:
    """FIX ClOrdID of the order's new-order request (attempt 0) or its later requests."""
    return order_id if attempt == 0 else f"{order_id}.{attempt}"


def order_id_of_cl_ord_id(cl_ord_id: str) -> str:
    return cl_ord_id.split(".", 1)[0]


def txn_id_for(cause_id: str, kind: str) -> str:
    """Ledger transaction id from the event that caused it."""
    return f"txn_{_digest(cause_id, kind, size=12)}"


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 hash (as in the Java client's DefaultPartitioner)."""
    length = len(data)
    seed = 0x9747B28C
    m = 0x5BD1E995
    r = 24
    h = (seed ^ length) & 0xFFFFFFFF
    for i in range(0, length - length % 4, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    tail = length % 4
    base = length - tail
    if tail == 3:
        h ^= data[base + 2] << 16
    if tail >= 2:
        h ^= data[base + 1] << 8
    if tail >= 1:
        h ^= data[base]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


def partition_for_key(key: str, partitions: int) -> int:
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def shard_of_partition(partition: int, partitions_per_shard: int) -> int:
    return partition // partitions_per_shard


def account_id_for(seed: str, shard: int, shards: int, partitions_per_shard: int) -> str:
    """A new account id whose murmur2 partition belongs to `shard`; deterministic in `seed`."""
    partitions = shards * partitions_per_shard
    base = "acc_" + _digest(seed, size=6)
    for suffix in range(10_000):
        candidate = f"{base}{suffix:x}"
        if shard_of_partition(partition_for_key(candidate, partitions),
                              partitions_per_shard) == shard:
            return candidate
    raise AssertionError("no account id found for shard; murmur2 should spread keys")
