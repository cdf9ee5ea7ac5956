"""The stack file, its environment overrides, and the deployment's compose file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
import yaml

from compose.exceptions import ConfigError, ServiceStartError
from compose.services import Endpoints, ServiceSpec, service_specs
from compose.stack import SERVICE_NAMES, StackConfig, load_stack
from compose.supervisor import Supervisor
from gateways.http.config import HttpConfig, IdentityProviderConfig
from gateways.simulator import bind_host
from topologies.config import AccountTopologyConfig

COMPOSE_FILE = Path(__file__).parents[3] / "compose" / "docker-compose.yml"
REPO = Path(__file__).resolve().parents[3]


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


def _simulator_spec(stack: StackConfig) -> ServiceSpec:
    specs = service_specs(stack, Endpoints("127.0.0.1:9092", ("dsn0", "dsn1"),
                                           "redis://127.0.0.1:6379/0", "secret"))
    return next(spec for spec in specs if spec.name == "simulator")


def test_the_simulator_runs_with_the_bind_host_shim_for_its_host(tmp_path: Path) -> None:
    """QuickFIX binds every interface: the simulator's process is given the shim that moves
    its listener to the stack file's host (issue 14, item 3)."""
    path = tmp_path / "stack.toml"
    path.write_text('[[market_makers]]\nname = "sim"\nhost = "127.0.0.3"\nport = 9878\n'
                    'target_comp_id = "MM1"\nsimulator = true\n')
    spec = _simulator_spec(load_stack(path, environ={}))
    assert spec.config["host"] == spec.bind_host == "127.0.0.3"
    env = spec.environment()
    assert env[bind_host.HOST_VARIABLE] == "127.0.0.3"
    shim = env["LD_PRELOAD"].split()[0]
    assert Path(shim).is_file() and Path(shim).name == bind_host.shim_name(
        bind_host.SOURCE.read_bytes())
    # The spec reaches the child through its JSON file.
    assert msgspec.json.decode(msgspec.json.encode(spec), type=ServiceSpec) == spec
    everywhere = path.read_text().replace("127.0.0.3", "0.0.0.0")
    path.write_text(everywhere)
    assert _simulator_spec(load_stack(path, environ={})).environment() == {}
    # The other services need nothing, and no simulator's host is resolved for them.
    specs = service_specs(load_stack(environ={}), Endpoints("127.0.0.1:9092", ("a", "b"),
                                                            "redis://127.0.0.1:1/0", "s"))
    assert [spec.name for spec in specs if spec.bind_host] == ["simulator"]
    assert all(spec.environment() == {} for spec in specs if spec.name != "simulator")


def test_a_shim_that_cannot_be_built_stops_up_in_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bind_host, "cache_dirs", lambda: (tmp_path / "empty",))
    monkeypatch.setenv("PATH", str(tmp_path))
    spec = _simulator_spec(load_stack(environ={}))  # describing the stack builds nothing
    with pytest.raises(ServiceStartError, match=r"^simulator: cannot listen on 127\.0\.0\.1 "
                                                r"only: no C compiler \(cc or gcc\) on PATH$"):
        spec.environment()
    # `up` stops there, before any service starts.
    with pytest.raises(ServiceStartError, match="no C compiler"):
        Supervisor([spec], tmp_path / "run", tmp_path / "logs")


def test_a_service_run_in_the_foreground_gets_its_environment_at_its_start() -> None:
    """`brokerage run simulator` runs itself again (same pid) with the spec's environment:
    a preload takes effect only when a process starts."""
    script = ("import os; from compose.cli import _exec_with; "
              "print(os.getpid(), os.environ.get('BROKERAGE_TEST_MARK'), flush=True); "
              "_exec_with({'BROKERAGE_TEST_MARK': '1'}); print('after', os.getpid())")
    environ = {key: value for key, value in os.environ.items() if key != "BROKERAGE_TEST_MARK"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60, env={**environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    first, second, after = result.stdout.splitlines()
    pid = first.split()[0]
    assert (first, second, after) == (f"{pid} None", f"{pid} 1", f"after {pid}")
