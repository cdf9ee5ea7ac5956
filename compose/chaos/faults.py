"""The faults of a chaos run: what each kind does to which process, and the seeded schedule.

Every fault hits one component of a running `brokerage up` (the whole stack at once is the
crash test's, tests/integration/compose/test_crash.py):

| kind | what | targets (one fault each) |
|---|---|---|
| kill_service | SIGKILL of a service and what it started; restarted by the supervisor | all |
| kill_shard | SIGKILL of a shard's PostgreSQL; restarted, it recovers from its WAL | every shard |
| kill_redis | SIGKILL of Redis; restarted | redis |
| kill_broker | SIGKILL of the broker; restarted empty: a new epoch | broker |
| freeze | SIGSTOP of a service (with what it started), SIGCONT a few seconds later | two, drawn |
| mm_duplicate | the market maker sends every execution report twice, for a few seconds | sim |
| mm_delay | ... sends every report late (0.5-3 s) | sim |
| mm_reorder | ... sends the fills of one answer in reverse order | sim |
| mm_drop_session | ... drops its FIX session now and every few reports meanwhile | sim |

`--faults kind:target` picks one target (`kill_service:accounts`, `kill_shard:1`,
`freeze:fix-gateway`). The seed decides the order of the faults, their moments, targets drawn
and durations, so a seed replays the same schedule (the machine's timing still varies).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil

from compose.chaos.stack_process import StackProcess, freeze_and_kill
from compose.exceptions import ComposeError

SERVICES = ("accounts", "sinks", "simulator", "fix-gateway", "market-data", "connectors", "http")
FREEZE_TARGETS = ("accounts", "sinks", "simulator", "fix-gateway", "http")
FREEZES = 2  # freeze: this many faults, targets drawn from FREEZE_TARGETS
FREEZE_S = (3.0, 8.0)  # past the group session timeout (3 s)
MM_WINDOW_S = (5.0, 10.0)
MM_DELAY_MS = (500, 3000)
MM_DROP_EVERY_REPORTS = 10
FIND_TIMEOUT_S = 30.0  # a target not running at its moment (restarting): how long to look

KINDS: dict[str, str] = {
    "kill_service": "SIGKILL of a service and what it started (each service once); the "
                    "supervisor restarts it",
    "kill_shard": "SIGKILL of a shard's PostgreSQL (each shard once); restarted from its WAL",
    "kill_redis": "SIGKILL of Redis; restarted",
    "kill_broker": "SIGKILL of the broker; restarted empty (a new epoch)",
    "freeze": f"SIGSTOP of a service and what it started, SIGCONT "
              f"{FREEZE_S[0]:.0f}-{FREEZE_S[1]:.0f} s later ({FREEZES} drawn from "
              f"{', '.join(FREEZE_TARGETS)})",
    "mm_duplicate": "the market maker sends every execution report twice (a window)",
    "mm_delay": "the market maker sends every report late (a window)",
    "mm_reorder": "the market maker sends the fills of an answer in reverse order (a window)",
    "mm_drop_session": "the market maker drops its FIX session, and every few reports (a window)",
}
DEFAULT_KINDS = tuple(KINDS)


@dataclass(frozen=True)
class Fault:
    kind: str
    target: str
    planned_at_s: float  # from the start of the load
    window_s: float = 0.0  # freeze and market-maker faults: how long the fault lasts
    latency_ms: int = 0  # mm_delay

    def describe(self) -> str:
        window = f" for {self.window_s:.1f} s" if self.window_s else ""
        latency = f" ({self.latency_ms} ms)" if self.latency_ms else ""
        return f"{self.kind} {self.target}{latency}{window}"


def parse_faults(text: str) -> list[tuple[str, str | None]]:
    """`kind[:target],...` -> [(kind, target or None)]; raises ComposeError naming the kinds."""
    chosen: list[tuple[str, str | None]] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        kind, _, target = item.partition(":")
        if kind == "all":
            chosen += [(k, None) for k in DEFAULT_KINDS]
            continue
        if kind not in KINDS:
            raise ComposeError(f"unknown fault kind {kind!r}; known: all, {', '.join(KINDS)}")
        if target and kind in ("kill_service", "freeze") and target not in SERVICES:
            raise ComposeError(f"{kind}: unknown service {target!r}; known: "
                               f"{', '.join(SERVICES)}")
        if target and kind == "kill_shard" and not target.isdigit():
            raise ComposeError(f"kill_shard: the target is a shard number, not {target!r}")
        chosen.append((kind, target or None))
    if not chosen:
        raise ComposeError("no fault kinds given")
    return chosen


def _targets(kind: str, target: str | None, shards: int, rng: random.Random) -> list[str]:
    if target is not None:
        return [target]
    if kind == "kill_service":
        return list(SERVICES)
    if kind == "kill_shard":
        return [str(shard) for shard in range(shards)]
    if kind == "freeze":
        return rng.sample(FREEZE_TARGETS, FREEZES)
    return {"kill_redis": ["redis"], "kill_broker": ["broker"]}.get(kind, ["sim"])


def plan(seed: int, chosen: list[tuple[str, str | None]], load_s: float,
         shards: int) -> list[Fault]:
    """The seeded schedule: every fault of the chosen kinds, in a seeded order, at seeded
    moments spread over the load (none in its first tenth, to let it get going, nor in its
    last fifth, to let the last one recover under load)."""
    rng = random.Random(f"chaos-schedule:{seed}")
    items = [(kind, target) for kind, chosen_target in chosen
             for target in _targets(kind, chosen_target, shards, rng)]
    rng.shuffle(items)
    start, end = load_s * 0.1, load_s * 0.8
    slot = (end - start) / max(len(items), 1)
    faults = []
    for n, (kind, target) in enumerate(items):
        at = start + (n + rng.uniform(0.0, 0.5)) * slot
        window = 0.0
        latency = 0
        if kind == "freeze":
            window = round(rng.uniform(*FREEZE_S), 1)
        elif kind.startswith("mm_"):
            window = round(rng.uniform(*MM_WINDOW_S), 1)
            if kind == "mm_delay":
                latency = rng.randrange(*MM_DELAY_MS, 100)
        faults.append(Fault(kind, target, round(at, 1), window, latency))
    return faults


# ---- finding the processes -----------------------------------------------------------------


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        if process.status() == psutil.STATUS_ZOMBIE:
            return []
        return process.cmdline()
    except psutil.Error:
        return []


def find_process(stack: StackProcess, kind: str, target: str) -> psutil.Process | None:
    """The process a fault hits, among `brokerage up`'s; None when there is none now (dead,
    not restarted yet)."""
    try:
        servers = psutil.Process(stack.popen.pid).children()
    except psutil.Error:
        return None
    if kind in ("kill_service", "freeze") or kind.startswith("mm_"):
        name = "simulator" if kind.startswith("mm_") else target
        for process in servers:
            argv = _cmdline(process)
            if "compose.child" in argv and argv[argv.index("compose.child") + 1:][:1] == [name]:
                return process
        return None
    for process in servers:
        argv = _cmdline(process)
        if not argv:
            continue
        if kind == "kill_broker" and "--listener-url" in argv:
            return process
        if kind == "kill_redis" and "redis-server" in argv[0]:
            return process
        if kind == "kill_shard" and argv[0].endswith("/postgres") \
                and f"-D {stack.data_dir / f'shard{target}'}" in " ".join(argv):
            return process
    return None


# ---- doing it ------------------------------------------------------------------------------


@dataclass
class Injection:
    """What happened to one fault."""

    fault: Fault
    at_s: float = 0.0  # from the start of the load
    pid: int | None = None
    new_pid: int | None = None
    back_after_s: float | None = None  # kills: until a new process runs in its place
    recovery_s: float | None = None  # until a new order placed after the fault filled
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, object]:
        fault = self.fault
        return {"kind": fault.kind, "target": fault.target,
                "planned_at_s": fault.planned_at_s, "at_s": round(self.at_s, 1),
                "window_s": fault.window_s or None, "latency_ms": fault.latency_ms or None,
                "pid": self.pid, "new_pid": self.new_pid,
                "back_after_s": None if self.back_after_s is None else round(self.back_after_s, 1),
                "recovery_s": None if self.recovery_s is None else round(self.recovery_s, 1),
                "error": self.error, "notes": self.notes}


class Injector:
    """Starts and ends faults on one stack."""

    def __init__(self, stack: StackProcess, say: Callable[[str], None]) -> None:
        self.stack = stack
        self.say = say
        self.faults_file = stack.data_dir / "fix" / "simulator-sim" / "faults.json"
        self.drops = 0
        self.frozen: dict[int, list[psutil.Process]] = {}  # frozen service's pid -> its tree

    def start(self, injection: Injection) -> None:
        """Inject; raises ComposeError when the target cannot be found."""
        fault = injection.fault
        if fault.kind.startswith("mm_"):
            self._market_maker(fault)
            return
        deadline = time.monotonic() + FIND_TIMEOUT_S
        while (process := find_process(self.stack, fault.kind, fault.target)) is None:
            if time.monotonic() > deadline:  # e.g. being restarted after dying on its own
                raise ComposeError(f"{fault.kind}: no {fault.target} process under "
                                   f"brokerage up for {FIND_TIMEOUT_S:.0f} s")
            time.sleep(0.2)
        injection.pid = process.pid
        # A service is its process and what it started (the sinks run a worker per shard):
        # all of them are frozen, or killed as at one instant.
        tree = [process]
        if fault.kind in ("kill_service", "freeze"):
            with contextlib.suppress(psutil.Error):
                tree += process.children(recursive=True)
        if fault.kind == "freeze":
            for member in tree:
                with contextlib.suppress(psutil.Error):
                    member.send_signal(signal.SIGSTOP)
            self.frozen[process.pid] = tree
        elif len(tree) > 1:
            freeze_and_kill(tree)
        else:
            process.send_signal(signal.SIGKILL)
        if len(tree) > 1:
            injection.notes.append(f"{len(tree)} processes")

    def end(self, injection: Injection) -> None:
        """The end of a window: SIGCONT, or the market maker behaves again."""
        fault = injection.fault
        if fault.kind == "freeze" and injection.pid is not None:
            self._resume(injection.pid)
        elif fault.kind.startswith("mm_"):
            self._write_faults({"drop_sessions": self.drops})

    def replaced(self, injection: Injection) -> psutil.Process | None:
        """After a kill: the process that runs in the target's place now, if any."""
        process = find_process(self.stack, injection.fault.kind, injection.fault.target)
        if process is None or process.pid == injection.pid:
            return None
        return process

    def release_all(self) -> None:
        """SIGCONT whatever is still frozen, and the market maker's faults off."""
        for pid in list(self.frozen):
            self._resume(pid)
        with contextlib.suppress(OSError):
            self.faults_file.unlink()

    def _resume(self, pid: int) -> None:
        for member in self.frozen.pop(pid, []):
            with contextlib.suppress(psutil.Error):
                member.send_signal(signal.SIGCONT)

    def _market_maker(self, fault: Fault) -> None:
        faults: dict[str, object] = {}
        if fault.kind == "mm_duplicate":
            faults["duplicate_reports"] = True
        elif fault.kind == "mm_delay":
            faults["latency_ms"] = fault.latency_ms
        elif fault.kind == "mm_reorder":
            faults["out_of_order_reports"] = True
        elif fault.kind == "mm_drop_session":
            self.drops += 1
            faults["drop_session_every_reports"] = MM_DROP_EVERY_REPORTS
        self._write_faults({**faults, "drop_sessions": self.drops})

    def _write_faults(self, faults: dict[str, object]) -> None:
        """Atomically (the simulator never reads half a file)."""
        self.faults_file.parent.mkdir(parents=True, exist_ok=True)
        partial = self.faults_file.with_suffix(".partial")
        partial.write_text(json.dumps(faults))
        os.replace(partial, self.faults_file)
