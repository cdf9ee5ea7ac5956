"""The short `brokerage chaos`: one seed, a minute of load over every shard, a few
single-component faults (a service killed, a shard's PostgreSQL killed, a service frozen, the
market maker sending duplicates and dropping its session), then the independent audit and
`brokerage reconcile`. Run as the command line runs it, from its JSON.

The long version is `brokerage chaos --minutes 5` (every fault kind; README "Proof under
fire"). BROKERAGE_CHAOS_SEED=N replays another seed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.crash]

SEED = int(os.environ.get("BROKERAGE_CHAOS_SEED", "20261204"))
FAULTS = "kill_service:accounts,kill_shard:0,freeze:fix-gateway,mm_duplicate,mm_drop_session"
MINUTES = 1.0


@pytest.mark.timeout(420)
def test_single_component_faults_under_load_lose_and_double_nothing() -> None:
    started = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "compose.cli", "chaos", "--seed", str(SEED), "--minutes",
         str(MINUTES), "--faults", FAULTS, "--no-progress"],
        capture_output=True, text=True, timeout=400, stdin=subprocess.DEVNULL)
    print(run.stderr[-6000:])
    assert run.stdout.strip(), f"no JSON (exit {run.returncode}):\n{run.stderr[-3000:]}"
    result = json.loads(run.stdout)
    print(json.dumps({key: result.get(key) for key in (
        "seed", "recovery_s", "lost", "doubled", "cents_off", "reconcile", "problems",
        "elapsed_s")}, indent=1))
    print(f"whole test: {time.monotonic() - started:.0f} s")
    assert result["seed"] == SEED
    injected = [(i["kind"], i["target"]) for i in result["injected"]]
    assert sorted(injected) == sorted([
        ("kill_service", "accounts"), ("kill_shard", "0"), ("freeze", "fix-gateway"),
        ("mm_duplicate", "sim"), ("mm_drop_session", "sim")]), result["injected"]
    assert all(i["recovery_s"] is not None and i["error"] is None
               for i in result["injected"]), result["injected"]
    assert all(i["new_pid"] for i in result["injected"] if i["kind"].startswith("kill_"))
    load = result["load"]
    assert load["orders_acknowledged"] > 50, load
    assert load["acknowledged_orders_ended"].get("filled", 0) > 20, load
    assert set(load["requests_by_kind"]) >= {"order", "cancel", "deposit"}, load
    assert (result["lost"], result["doubled"], result["cents_off"]) == (0, 0, 0), result["audit"]
    assert result["reconcile"] == "clean", result["audit"]
    assert result["passed"], result["problems"]
    assert run.returncode == 0
