"""The stack file, its environment overrides, and the deployment's compose file."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
import yaml

from compose.exceptions import ConfigError
from compose.services import Endpoints, ServiceSpec, service_specs
from compose.stack import SERVICE_NAMES, StackConfig, load_stack
from gateways.http.config import HttpConfig, IdentityProviderConfig
from topologies.config import AccountTopologyConfig

COMPOSE_FILE = Path(__file__).parents[3] / "compose" / "docker-compose.yml"


def test_the_embedded_default_needs_no_file() -> None:
    stack = load_stack(environ={})
    assert stack.stack.shards == 2
    assert stack.kafka.bootstrap_servers == "" and stack.postgres.shard_dsns == ()
    assert set(stack.stack.services) == set(SERVICE_NAMES)


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = tmp_path / "stack.toml"
    path.write_text('[kafka]\nbootstrap_servers = "a:9092"\n[http]\nport = 9000\n')
    stack = load_stack(path, environ={"BROKERAGE_HTTP_PORT": "9100",
                                      "BROKERAGE_SHARD_DSNS": "postgresql://x/a, postgresql://y/b"})
    assert stack.kafka.bootstrap_servers == "a:9092"
    assert stack.http.port == 9100
    assert stack.postgres.shard_dsns == ("postgresql://x/a", "postgresql://y/b")


@pytest.mark.parametrize("text, named", [
    ("[stack]\nshards = 2\nbogus = 1\n", "bogus"),
    ("[stack]\nservices = ['accounts', 'teleporter']\n", "teleporter"),
    ("[postgres]\nshard_dsns = ['postgresql://only/one']\n", "shard_dsns"),
    ("[stack\n", "stack.toml"),
    ("[sinks]\nprocesses = 2\nworkers = 3\n", "workers"),
    ("[accounts]\nprocesses = 0\n", r"accounts\.processes"),
    ("[http]\nprocesses = 0\n", r"http\.processes"),
])
def test_a_bad_stack_file_is_refused_with_what_and_where(tmp_path: Path, text: str,
                                                         named: str) -> None:
    path = tmp_path / "stack.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=named):
        load_stack(path, environ={})


def test_a_missing_stack_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nowhere.toml"):
        load_stack(tmp_path / "nowhere.toml", environ={})


def test_every_service_gets_a_config_of_its_own_type() -> None:
    stack = load_stack(environ={})
    specs = service_specs(stack, Endpoints("127.0.0.1:9092", ("dsn0", "dsn1"),
                                           "redis://127.0.0.1:6379/0", "secret"))
    assert [spec.name for spec in specs] == ["sinks", "accounts", "simulator", "fix-gateway",
                                             "market-data", "connectors", "http"]


def test_the_compose_file_runs_every_service_of_the_embedded_default() -> None:
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    services = compose["services"]
    for name in SERVICE_NAMES:
        assert name in services, f"{name} missing from docker-compose.yml"
        assert services[name]["command"][-1] == name
    kafka = [name for name in services if name.startswith("kafka-")]
    assert len(kafka) == 3
    env = services["kafka-1"]["environment"]
    assert env["KAFKA_DEFAULT_REPLICATION_FACTOR"] == 3 and env["KAFKA_MIN_INSYNC_REPLICAS"] == 2
    assert "broker,controller" in env["KAFKA_PROCESS_ROLES"]
    assert {"shard0", "shard1", "redis"} <= set(services)
    stack_file = Path(COMPOSE_FILE.parent / "stack.docker.toml")
    docker_stack = load_stack(stack_file, environ={})
    assert len(docker_stack.postgres.shard_dsns) == docker_stack.stack.shards
    assert not docker_stack.http.demo_login  # a deployment signs in with its own provider


@pytest.mark.parametrize("value", ["abc", "70000", "0", "-1", ""])
def test_a_port_from_the_environment_is_checked_where_it_is_read(value: str) -> None:
    with pytest.raises(ConfigError, match=r"BROKERAGE_HTTP_PORT=.*expected a port number "
                                          r"from 1 to 65535"):
        load_stack(environ={"BROKERAGE_HTTP_PORT": value})


def test_a_port_out_of_range_in_the_file_names_the_field(tmp_path: Path) -> None:
    path = tmp_path / "stack.toml"
    path.write_text("[http]\nport = 70000\n")
    with pytest.raises(ConfigError, match=r"<= 65535 - at `\$\.http\.port`"):
        load_stack(path, environ={})


def _http_config(stack: StackConfig) -> HttpConfig:
    """The HTTP gateway's config as `brokerage up` builds it, decoded as the child does."""
    specs = service_specs(stack, Endpoints("127.0.0.1:9092", ("dsn0", "dsn1"),
                                           "redis://127.0.0.1:6379/0", "secret" * 6))
    spec = next(spec for spec in specs if spec.name == "http")
    return msgspec.convert(spec.config, HttpConfig, strict=False)


def test_the_quote_age_limit_is_one_setting_for_the_risk_check_and_the_gateway(
        tmp_path: Path) -> None:
    """The account topology refuses orders priced at quotes older than `quote_age_ms_max`;
    the gateway gets the same value, which GET /v1/quotes publishes for stale marks."""
    def limits(stack: StackConfig) -> tuple[int, int]:
        specs = {spec.name: spec for spec in service_specs(
            stack, Endpoints("127.0.0.1:9092", ("dsn0", "dsn1"), "redis://127.0.0.1:6379/0",
                             "secret" * 6))}
        accounts = msgspec.convert(specs["accounts"].config, AccountTopologyConfig,
                                   strict=False)
        return accounts.quote_age_ms_max, _http_config(stack).quote_age_ms_max

    assert limits(load_stack(environ={})) == (60_000, 60_000)
    path = tmp_path / "stack.toml"
    path.write_text("[accounts]\nquote_age_ms_max = 15000\n")
    assert limits(load_stack(path, environ={})) == (15_000, 15_000)
    path.write_text("[accounts]\nquote_age_ms_max = 0\n")
    with pytest.raises(ConfigError, match="quote_age_ms_max"):
        load_stack(path, environ={})


def test_the_demo_login_is_on_without_a_stack_file_and_off_in_one(tmp_path: Path) -> None:
    assert _http_config(load_stack(environ={})).demo_login
    path = tmp_path / "stack.toml"
    path.write_text("[http]\nport = 9000\n")
    assert not _http_config(load_stack(path, environ={})).demo_login
    path.write_text("[http]\ndemo_login = true\n")
    assert _http_config(load_stack(path, environ={})).demo_login
    assert not load_stack(environ={"BROKERAGE_DEMO_LOGIN": "false"}).http.demo_login
    assert load_stack(environ={"BROKERAGE_STACK": str(path)}).http.demo_login
    with pytest.raises(ConfigError, match="BROKERAGE_DEMO_LOGIN='maybe'"):
        load_stack(environ={"BROKERAGE_DEMO_LOGIN": "maybe"})


def test_the_identity_provider_reaches_the_gateway(tmp_path: Path) -> None:
    path = tmp_path / "stack.toml"
    path.write_text('[http.identity]\nissuer = "https://login.example.test/"\n'
                    'audience = "brokerage-api"\n'
                    'jwks_url = "https://login.example.test/.well-known/jwks.json"\n'
                    'algorithms = ["ES256"]\n')
    http = _http_config(load_stack(path, environ={}))
    assert not http.demo_login
    assert http.identity == IdentityProviderConfig(
        issuer="https://login.example.test/", audience="brokerage-api",
        jwks_url="https://login.example.test/.well-known/jwks.json", algorithms=("ES256",))
    assert _http_config(load_stack(environ={})).identity is None


@pytest.mark.parametrize("text, named", [
    ('[http]\ndemo_login = true\n[http.identity]\nissuer = "i"\naudience = "a"\n'
     'jwks_url = "https://x/jwks"\n', "demo_login"),
    ('[http.identity]\nissuer = "i"\naudience = "a"\njwks_url = "https://x/jwks"\n'
     'algorithms = ["HS256"]\n', "HS256"),
    ('[http.identity]\nissuer = "i"\njwks_url = "https://x/jwks"\n', "audience"),
    ('[http.identity]\nissuer = "i"\naudience = "a"\njwks_url = "https://x/jwks"\n'
     'leeway = 5\n', "leeway"),
])
def test_a_weak_or_unknown_sign_in_setting_is_refused(tmp_path: Path, text: str,
                                                      named: str) -> None:
    path = tmp_path / "stack.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"stack.toml.*{named}"):
        load_stack(path, environ={})


def _specs(tmp_path: Path, text: str) -> dict[str, ServiceSpec]:
    path = tmp_path / "stack.toml"
    path.write_text(f'[stack]\ndata_dir = "{tmp_path / "data"}"\n' + text)
    specs = service_specs(load_stack(path, environ={}), Endpoints(
        "127.0.0.1:9092", ("dsn0", "dsn1"), "redis://127.0.0.1:6379/0", "secret" * 6))
    return {spec.name: spec for spec in specs}


def test_one_process_per_service_by_default_as_a_static_member(tmp_path: Path) -> None:
    from sinks.config import SinkConfig
    from topologies.config import AccountTopologyConfig

    specs = _specs(tmp_path, "")
    assert [name for name in specs if name.startswith(("accounts", "sinks", "http"))] == [
        "sinks", "accounts", "http"]
    accounts = msgspec.convert(specs["accounts"].config, AccountTopologyConfig, strict=False)
    assert accounts.static_membership and accounts.peer_state_dirs == ()
    assert accounts.state_dir == str(tmp_path / "data" / "state" / "accounts")
    sinks = msgspec.convert(specs["sinks"].config, SinkConfig, strict=False)
    assert sinks.static_membership and sinks.member_dir == str(tmp_path / "data" / "state"
                                                               / "sinks")
    assert not msgspec.convert(specs["http"].config, HttpConfig, strict=False).reuse_port


def test_processes_share_a_group_each_with_its_own_state_and_member_id(tmp_path: Path) -> None:
    from sinks.config import SinkConfig
    from topologies.config import AccountTopologyConfig

    specs = _specs(tmp_path, "[accounts]\nprocesses = 3\n[sinks]\nprocesses = 2\n"
                             "[http]\nprocesses = 2\nport = 9000\n")
    state = tmp_path / "data" / "state"
    accounts = [msgspec.convert(specs[name].config, AccountTopologyConfig, strict=False)
                for name in ("accounts", "accounts-1", "accounts-2")]
    assert [a.state_dir for a in accounts] == [str(state / n) for n in
                                               ("accounts", "accounts-1", "accounts-2")]
    assert all(not a.static_membership for a in accounts)  # state.member_id says why
    assert {a.consumer_group for a in accounts} == {"accounts"}
    for one in accounts:
        assert set(one.peer_state_dirs) == {a.state_dir for a in accounts} - {one.state_dir}
    sinks = [msgspec.convert(specs[name].config, SinkConfig, strict=False)
             for name in ("sinks", "sinks-1")]
    assert [s.member_dir for s in sinks] == [str(state / "sinks"), str(state / "sinks-1")]
    assert all(not s.static_membership and s.shard is None for s in sinks)
    gateways = [msgspec.convert(specs[name].config, HttpConfig, strict=False)
                for name in ("http", "http-1")]
    assert all(g.reuse_port and g.port == 9000 for g in gateways)
    assert "accounts-3" not in specs and "sinks-2" not in specs and "http-2" not in specs
