"""What every benchmark prints beside its figures: the machine it ran on."""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu_model": model or platform.processor(),
            "python": platform.python_version(), "load_average_1m": os.getloadavg()[0],
            "reference_loop_ms": reference_loop_ms()}


def reference_loop_ms() -> float:
    """The same pure-Python work timed (median of 5, in ms): how fast one core of this shared
    machine is right now. CPU-per-unit figures scale with it, so two runs' figures compare
    only beside their references."""
    times = []
    for _ in range(5):
        started = time.perf_counter()
        total = 0
        for i in range(300_000):
            total += i * i % 7
        times.append(time.perf_counter() - started)
    return round(statistics.median(times) * 1000, 2)


_CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process so far, all its threads (from /proc/<pid>/stat);
    None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state is fields[0]
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS_PER_S


def percentile(values: list[float], fraction: float) -> float:
    """The value at `fraction` (0..1) of the sorted values (nearest rank)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[index]


def stop_stack(stack: Any, root: Path) -> None:
    """Stop a benchmark's `brokerage up` (a StackProcess), say on stderr when it did not exit
    cleanly, and remove its data dir."""
    code = stack.stop()
    if code != 0:
        print(f"brokerage up exited {code}:\n{''.join(stack.output)[-3000:]}", file=sys.stderr)
    shutil.rmtree(root, ignore_errors=True)
