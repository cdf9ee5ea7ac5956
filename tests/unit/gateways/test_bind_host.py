"""The simulator's bind-host shim (issue 14, item 3): built once per source into a cache, moves
a process's any-address binds onto the configured host, and the simulator refuses to listen
without it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateways.exceptions import BindHostError
from gateways.simulator import bind_host

REPO = Path(__file__).resolve().parents[3]

# Binds what a listener would, in a process started with the environment under test, and
# prints where each socket ended up (or the errno).
PROBE = """
import json, socket
from gateways.simulator import bind_host
found = {"active": bind_host.active_host()}
for family, address in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET, "127.0.0.2"),
                        (socket.AF_INET6, "::")):
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.bind((address, 0))
        sock.listen()
        found[f"{family.name} {address}"] = sock.getsockname()[0]
    except OSError as error:
        found[f"{family.name} {address}"] = error.errno
    finally:
        sock.close()
print(json.dumps(found))
"""


def _probe(env: dict[str, str]) -> dict[str, object]:
    environ = {key: value for key, value in os.environ.items()
               if key not in ("LD_PRELOAD", bind_host.HOST_VARIABLE)}
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                            timeout=60, env={**environ, "PYTHONPATH": str(REPO), **env})
    assert result.returncode == 0, result.stderr
    found: dict[str, object] = json.loads(result.stdout)
    return found


def test_any_address_binds_go_to_the_host_and_others_pass_through(tmp_path: Path) -> None:
    found = _probe(bind_host.environment("127.0.0.1", [tmp_path]))
    assert found["active"] == "127.0.0.1"
    assert found["AF_INET 0.0.0.0"] == "127.0.0.1"
    assert found["AF_INET 127.0.0.2"] == "127.0.0.2"  # a bind to an address is left alone
    assert found["AF_INET6 ::"] in ("::ffff:127.0.0.1", 97)  # 97: no IPv6 on this machine


def test_an_ipv6_host_refuses_an_ipv4_any_bind_rather_than_listen_everywhere(
        tmp_path: Path) -> None:
    found = _probe(bind_host.environment("::1", [tmp_path]))
    assert found["active"] == "::1"
    assert found["AF_INET 0.0.0.0"] == 99  # EADDRNOTAVAIL


def test_without_a_host_the_shim_changes_nothing(tmp_path: Path) -> None:
    shim = bind_host.build([tmp_path])
    found = _probe({"LD_PRELOAD": str(shim)})
    assert found["active"] is None and found["AF_INET 0.0.0.0"] == "0.0.0.0"
    found = _probe({"LD_PRELOAD": str(shim), bind_host.HOST_VARIABLE: "not-an-address"})
    assert found["active"] is None and found["AF_INET 0.0.0.0"] == 99


def test_the_shim_is_built_once_and_then_taken_from_the_cache(tmp_path: Path) -> None:
    first = bind_host.build([tmp_path])
    stat = first.stat()
    # A compiler that cannot run is never asked: the cached file is used.
    again = bind_host.build([tmp_path], compiler=str(tmp_path / "no-such-cc"))
    assert again == first and (again.stat().st_ino, again.stat().st_mtime_ns) == (
        stat.st_ino, stat.st_mtime_ns)
    assert [path.name for path in tmp_path.iterdir()] == [first.name]  # no temporary left


def test_a_changed_source_is_built_again_under_a_new_name(tmp_path: Path) -> None:
    first = bind_host.build([tmp_path / "cache"])
    changed = tmp_path / "bind_host.c"
    changed.write_bytes(bind_host.SOURCE.read_bytes() + b"\n/* changed */\n")
    second = bind_host.build([tmp_path / "cache"], source_path=changed)
    assert second != first and second.is_file() and first.is_file()
    assert second.name == bind_host.shim_name(changed.read_bytes())


def test_an_unusable_cache_dir_falls_back_to_the_next(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    built = bind_host.build([blocker / "cache", tmp_path / "fallback"])
    assert built.parent == tmp_path / "fallback"
    with pytest.raises(BindHostError, match="no writable cache dir") as error:
        bind_host.build([blocker / "cache"])
    assert "\n" not in str(error.value)


def test_a_missing_compiler_is_one_line_naming_it(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BindHostError, match=r"^no C compiler \(cc or gcc\) on PATH$"):
        bind_host.build([tmp_path / "cache"])
    with pytest.raises(BindHostError, match="cannot run .*no-such-cc"):
        bind_host.build([tmp_path / "cache"], compiler=str(tmp_path / "no-such-cc"))


def test_a_compile_error_is_one_line_naming_it(tmp_path: Path) -> None:
    broken = tmp_path / "bind_host.c"
    broken.write_text("int bind(void) { return }\n")
    with pytest.raises(BindHostError, match="failed .* error") as error:
        bind_host.build([tmp_path / "cache"], source_path=broken)
    assert "\n" not in str(error.value)
    assert not list((tmp_path / "cache").iterdir())  # nothing half-built is cached


def test_every_interface_needs_no_shim_and_a_preload_is_kept_once(tmp_path: Path) -> None:
    assert bind_host.environment("0.0.0.0", [tmp_path]) == {}
    assert bind_host.environment("::", [tmp_path]) == {}
    env = bind_host.environment("localhost", [tmp_path], preload="/x/a.so")
    shim = str(bind_host.build([tmp_path]))
    assert env == {"LD_PRELOAD": f"{shim} /x/a.so", bind_host.HOST_VARIABLE: "127.0.0.1"}
    # Computed again in the process that has it already: unchanged (no second entry).
    assert bind_host.environment("localhost", [tmp_path], preload=env["LD_PRELOAD"]) == env


def test_the_simulator_refuses_to_listen_without_the_shim() -> None:
    assert bind_host.active_host() is None  # this test process runs without it
    with pytest.raises(BindHostError, match=r"refusing to listen: .* not 127\.0\.0\.1 .*"
                                            r"shim is not loaded") as error:
        bind_host.require("127.0.0.1")
    assert "\n" not in str(error.value)
    bind_host.require("0.0.0.0")  # every interface asked for: nothing to refuse



def test_a_simulator_started_without_the_shim_exits_in_one_line(tmp_path: Path) -> None:
    config = {"bootstrap_servers": "127.0.0.1:1", "port": 1, "store_dir": str(tmp_path)}
    environ = {key: value for key, value in os.environ.items()
               if key not in ("LD_PRELOAD", bind_host.HOST_VARIABLE)}
    result = subprocess.run([sys.executable, "-m", "gateways.simulator", json.dumps(config)],
                            capture_output=True, text=True, timeout=60,
                            env={**environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 2, result.stderr
    said = (result.stdout + result.stderr).strip().splitlines()
    assert len(said) == 1 and "refusing to listen" in said[0], said
