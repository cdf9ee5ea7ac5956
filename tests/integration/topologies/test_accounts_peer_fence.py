"""A process of the account topology's group that died inside a transaction holds back every
read_committed reader of the partitions it wrote to (the embedded broker never times
transactions out). Its sibling fences it (topologies.accounts.PeerFence) once it is down, and
only then: a live sibling, which holds its member lock, is left alone."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from state.member_id import stable_member_id
from state.topics import Topic
from topologies.accounts import PeerFence
from topologies.config import AccountTopologyConfig, KafkaSettings

pytestmark = pytest.mark.integration

GROUP = "accounts"

# A member that takes its lock, opens a transaction under its transactional id, writes one
# record and then dies at once (os._exit: no abort, no clean close) or, with "live", sleeps.
_PEER = """
import os, sys, time
from confluent_kafka import Producer
from state.member_id import MemberLock, stable_member_id
bootstrap, topic, state_dir, how = sys.argv[1:5]
lock = MemberLock(state_dir)
producer = Producer({"bootstrap.servers": bootstrap,
                     "transactional.id": stable_member_id(state_dir, "accounts")})
producer.init_transactions(10)
producer.begin_transaction()
producer.produce(topic, key=b"k", value=b"left-open", partition=0)
producer.flush(10)
print("open", flush=True)
if how == "die":
    os._exit(9)
time.sleep(60)
"""


def _peer(bootstrap: str, topic: str, state_dir: Path, how: str) -> subprocess.Popen[str]:
    process = subprocess.Popen([sys.executable, "-c", _PEER, bootstrap, topic, str(state_dir),
                                how], stdout=subprocess.PIPE, text=True,
                               cwd=Path(__file__).parents[3])
    assert process.stdout is not None and process.stdout.readline().strip() == "open"
    return process


def _committed_after(bootstrap: str, topic: str) -> bool:
    """Whether a read_committed reader gets a record committed after the open transaction."""
    marker = f"committed-{time.monotonic_ns()}".encode()
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": marker.decode()})
    producer.init_transactions(10)
    producer.begin_transaction()
    producer.produce(topic, key=b"k", value=marker, partition=0)
    producer.commit_transaction(10)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "fence-reader",
                         "isolation.level": "read_committed", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, 0, 0)])
    try:
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline:
            record = consumer.poll(0.2)
            if record is not None and not record.error() and record.value() == marker:
                return True
        return False
    finally:
        consumer.close()


def _fence(services, tmp_path: Path, peer_dir: Path) -> PeerFence:
    return PeerFence(AccountTopologyConfig(
        kafka=KafkaSettings(bootstrap_servers=services.bootstrap_servers),
        state_dir=str(tmp_path / "state" / "accounts"), account_partitions=1,
        consumer_group=GROUP, static_membership=False, peer_state_dirs=(str(peer_dir),)))


def test_a_dead_sibling_is_fenced_and_its_partitions_read_on(services, topics, tmp_path):
    topic = topics + Topic.ORDERS_EVENTS
    peer_dir = tmp_path / "state" / "accounts-1"
    peer = _peer(services.bootstrap_servers, topic, peer_dir, "die")
    peer.wait(10)
    assert not _committed_after(services.bootstrap_servers, topic), \
        "expected the dead member's open transaction to hold read_committed readers back"
    fenced = _fence(services, tmp_path, peer_dir).fence_down_peers()
    assert fenced == [stable_member_id(str(peer_dir), GROUP)]
    assert _committed_after(services.bootstrap_servers, topic)


def test_a_live_sibling_is_left_alone(services, topics, tmp_path):
    topic = topics + Topic.ORDERS_EVENTS
    peer_dir = tmp_path / "state" / "accounts-1"
    peer = _peer(services.bootstrap_servers, topic, peer_dir, "live")
    try:
        assert _fence(services, tmp_path, peer_dir).fence_down_peers() == []
    finally:
        peer.kill()
        peer.wait(10)
    # Down now (the kernel let go of its lock): fenced at the next look.
    assert _fence(services, tmp_path, peer_dir).fence_down_peers() == [
        stable_member_id(str(peer_dir), GROUP)]
