"""Where the integration tests take their services from.

By default the embedded servers (Tansu broker, one PostgreSQL per shard, Redis) are started
on loopback ports for the session and stopped at its end. Instead:
- BROKERAGE_TEST_BOOTSTRAP, BROKERAGE_TEST_SHARD_DSNS (comma-separated) and
  BROKERAGE_TEST_REDIS_URL point the tests at external servers;
- BROKERAGE_TEST_TESTCONTAINERS=1 uses testcontainers' Kafka, PostgreSQL and Redis where a
  Docker engine runs (skipped, with the reason, where none does).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

_RUNTIME_DIR = Path(tempfile.gettempdir()) / f"brokerage-runtime-{os.getuid()}"
_RUNTIME_DIR.mkdir(mode=0o700, exist_ok=True)
os.environ.setdefault("XDG_RUNTIME_DIR", str(_RUNTIME_DIR))

SHARDS = 2
PARTITIONS_PER_SHARD = 2


@dataclass(frozen=True)
class Services:
    bootstrap_servers: str
    shard_dsns: tuple[str, ...]
    redis_url: str
    partitions_per_shard: int = PARTITIONS_PER_SHARD
    embedded: object | None = None  # compose.embedded.EmbeddedServers when we started them

    @property
    def shards(self) -> int:
        return len(self.shard_dsns)

    @property
    def account_partitions(self) -> int:
        return self.shards * self.partitions_per_shard


def _docker_available() -> str | None:
    try:
        import docker  # type: ignore[import-not-found]

        docker.from_env().ping()
    except Exception as error:  # noqa: BLE001
        return f"no Docker engine: {error}"
    return None


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    if os.environ.get("BROKERAGE_TEST_BOOTSTRAP"):
        yield Services(
            bootstrap_servers=os.environ["BROKERAGE_TEST_BOOTSTRAP"],
            shard_dsns=tuple(os.environ["BROKERAGE_TEST_SHARD_DSNS"].split(",")),
            redis_url=os.environ["BROKERAGE_TEST_REDIS_URL"],
        )
        return
    if os.environ.get("BROKERAGE_TEST_TESTCONTAINERS") == "1":
        reason = _docker_available()
        if reason:
            pytest.skip(f"testcontainers requested but {reason}")
        yield from _testcontainer_services()
        return
    from compose.embedded import start_embedded_servers

    # Outside pytest's basetemp: PostgreSQL runs as its own system user and must reach it.
    data_dir = Path(tempfile.mkdtemp(prefix="brokerage-test-"))
    servers = start_embedded_servers(data_dir, SHARDS)
    try:
        yield Services(servers.bootstrap_servers, tuple(servers.shard_dsns), servers.redis_url,
                       embedded=servers)
    finally:
        servers.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def _testcontainer_services() -> Iterator[Services]:
    from testcontainers.kafka import KafkaContainer  # type: ignore[import-not-found]
    from testcontainers.postgres import PostgresContainer  # type: ignore[import-not-found]
    from testcontainers.redis import RedisContainer  # type: ignore[import-not-found]

    with KafkaContainer() as kafka, RedisContainer() as redis_c, \
            PostgresContainer() as pg0, PostgresContainer() as pg1:
        redis_url = f"redis://{redis_c.get_container_host_ip()}:{redis_c.get_exposed_port(6379)}/0"
        dsns = tuple(pg.get_connection_url().replace("+psycopg2", "") for pg in (pg0, pg1))
        yield Services(kafka.get_bootstrap_server(), dsns, redis_url)


@pytest.fixture
def server_dir() -> Iterator[Path]:
    """A directory for server data outside pytest's basetemp: PostgreSQL runs as a system user
    of its own, and a pytest session starting elsewhere on the machine resets the basetemp's
    permissions under a running server."""
    path = Path(tempfile.mkdtemp(prefix="brokerage-srv-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def topic_prefix() -> str:
    """A fresh topic namespace per test, so tests sharing one broker never see each other."""
    return f"t{uuid.uuid4().hex[:8]}."


@pytest.fixture
def topics(services: Services, topic_prefix: str) -> str:
    """Create every topic under a fresh prefix and return the prefix."""
    from compose.kafka import prepare_topics
    from state.topics import topic_specs

    prepare_topics(services.bootstrap_servers, topic_prefix,
                   topic_specs(topic_prefix, services.account_partitions, 2))
    return topic_prefix


@pytest.fixture
def fresh_databases(services: Services) -> Iterator[tuple[str, ...]]:
    """One new empty database per shard for this test; dropped afterwards."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:10]}"
    created: list[str] = []
    for dsn in services.shard_dsns:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        created.append(dsn.rsplit("/", 1)[0] + f"/{name}")
    try:
        yield tuple(created)
    finally:
        for dsn in services.shard_dsns:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# `./dev test` runs the suite on two pytest-xdist workers (`--dist loadgroup`). The tests that
# start a whole stack (`brokerage up`, each with its own servers and a dozen processes) share
# one group, so one worker runs them one after another while the other takes everything else:
# two whole stacks never compete for the 2 cores.
_WHOLE_STACK_FILES = ("tests/integration/compose/", "tests/integration/gateways/test_web_page.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        path = item.nodeid.split("::", 1)[0]
        if path.startswith(_WHOLE_STACK_FILES):
            item.add_marker(pytest.mark.xdist_group("whole-stack"))
