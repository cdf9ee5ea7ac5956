"""The simulator listens where its config says: the bind-host shim, built and checked.

QuickFIX 1.16's acceptor has no setting for its listening address (`SocketAcceptPort` only) and
binds INADDR_ANY. `bind_host.c`, preloaded into the simulator's process (LD_PRELOAD) with
BROKERAGE_BIND_HOST set, moves every bind to the any-address onto that host. This module builds
it once with the system C compiler (the same one QuickFIX's install needs) into a cache named by
the hash of the source (a changed source is a new file), gives the environment a process needs
to run with it, and lets the simulator refuse to listen when it runs without it: never on every
interface by accident.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import ipaddress
import os
import platform
import shutil
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from gateways.exceptions import BindHostError

SOURCE = Path(__file__).with_name("bind_host.c")
HOST_VARIABLE = "BROKERAGE_BIND_HOST"
COMPILERS = ("cc", "gcc")
COMPILE_FLAGS = ("-shared", "-fPIC", "-O2", "-Wall")
COMPILE_TIMEOUT_S = 60.0


def cache_dirs() -> tuple[Path, ...]:
    """Where the built shim is kept, first writable wins: beside the environment's packages
    (built once per venv), else the user's cache."""
    return (Path(sys.prefix) / "lib" / "brokerage", Path.home() / ".cache" / "brokerage")


def find_compiler() -> str:
    for name in COMPILERS:
        path = shutil.which(name)
        if path:
            return path
    raise BindHostError(f"no C compiler ({' or '.join(COMPILERS)}) on PATH")


def shim_name(source: bytes) -> str:
    """The built file's name: the hash of what it is built from."""
    digest = hashlib.sha256(source)
    digest.update(" ".join(COMPILE_FLAGS).encode())
    digest.update(platform.machine().encode())
    return f"bind_host-{digest.hexdigest()[:16]}.so"


def build(directories: Sequence[Path] | None = None, compiler: str | None = None,
          source_path: Path = SOURCE) -> Path:
    """The shim for the current source: the cached file when one exists in `directories`, else
    compiled into the first writable one (written under a temporary name and renamed, so that
    concurrent builders never see half a file). Raises BindHostError, one line, naming why."""
    directories = tuple(directories or cache_dirs())
    source = source_path.read_bytes()
    name = shim_name(source)
    for directory in directories:
        if (directory / name).is_file():
            return directory / name
    compiler = compiler or find_compiler()
    unusable = []
    for directory in directories:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            unusable.append(f"{directory}: {error.strerror}")
            continue
        if not os.access(directory, os.W_OK):
            unusable.append(f"{directory}: not writable")
            continue
        return _compile(compiler, source, directory / name)
    raise BindHostError(f"no writable cache dir for the bind-host shim ({'; '.join(unusable)})")


def _compile(compiler: str, source: bytes, target: Path) -> Path:
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    argv = [compiler, *COMPILE_FLAGS, "-x", "c", "-o", str(temporary), "-", "-ldl"]
    try:
        result = subprocess.run(argv, input=source, capture_output=True,
                                timeout=COMPILE_TIMEOUT_S)
    except OSError as error:
        raise BindHostError(f"cannot run {compiler}: {error.strerror}") from error
    except subprocess.TimeoutExpired as error:
        raise BindHostError(f"{compiler} did not finish in {COMPILE_TIMEOUT_S:.0f} s") from error
    if result.returncode != 0:
        with contextlib.suppress(OSError):
            temporary.unlink()
        lines = result.stderr.decode(errors="replace").strip().splitlines()
        first = next((line for line in lines if "error" in line), lines[0] if lines else "")
        raise BindHostError(f"{compiler} failed (exit {result.returncode}) on {SOURCE.name}: "
                            f"{first.strip()}")
    os.replace(temporary, target)
    return target


def numeric_host(host: str) -> str:
    """`host` as the address the shim binds to: an IP literal as it is, a name resolved (its
    first IPv4 address: the QuickFIX acceptor listens on IPv4 only)."""
    with contextlib.suppress(ValueError):
        return str(ipaddress.ip_address(host))
    try:
        found = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError as error:
        raise BindHostError(f"cannot resolve host {host!r}: {error}") from error
    found.sort(key=lambda entry: entry[0] != socket.AF_INET)
    return str(ipaddress.ip_address(found[0][4][0]))


def binds_everywhere(host: str) -> bool:
    """Whether `host` asks for every interface (0.0.0.0, ::): no shim is needed then."""
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def environment(host: str, directories: Sequence[Path] | None = None,
                preload: str = "") -> dict[str, str]:
    """What a process must get in its environment so that its any-binds go to `host` (the
    shim is built first when needed), keeping the libraries of `preload` (an LD_PRELOAD
    value) after the shim. Nothing for a host that is every interface."""
    if binds_everywhere(host):
        return {}
    address = numeric_host(host)
    shim = str(build(directories))
    if any(character in shim for character in " :"):
        raise BindHostError(f"the bind-host shim's path {shim!r} holds a space or colon: "
                            "LD_PRELOAD cannot name it")
    kept = [entry for entry in preload.replace(":", " ").split() if entry != shim]
    return {"LD_PRELOAD": " ".join([shim, *kept]), HOST_VARIABLE: address}


def active_host() -> str | None:
    """The address this process's any-binds go to: None when the shim is not loaded into it
    (or has no host)."""
    try:
        function = ctypes.CDLL(None).brokerage_bind_host
    except AttributeError:
        return None
    function.restype = ctypes.c_char_p
    function.argtypes = []
    value = function()
    return value.decode() if value else None


def require(host: str) -> None:
    """Return when a listener of this process bound to the any-address ends up on `host`;
    otherwise raise BindHostError (one line) rather than listen on every interface."""
    if binds_everywhere(host):
        return
    address = numeric_host(host)
    active = active_host()
    if active == address:
        return
    if active is None:
        why = ("the bind-host shim is not loaded into this process (start it with the "
               "environment bind_host.environment() gives)")
    else:
        why = f"the bind-host shim binds to {active}"
    raise BindHostError(f"refusing to listen: QuickFIX would bind every interface, not {host} "
                        f"({address}): {why}")
