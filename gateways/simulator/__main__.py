"""`python -m gateways.simulator CONFIG_JSON`: run the simulator with a JSON config.

Start it with the environment `bind_host.environment(config.host)` gives (the bind-host shim
preloaded, as the supervisor and `gateways.fix.harness.launch` do): without it the simulator
refuses to listen rather than bind every interface (exit 2, one line)."""

from __future__ import annotations

import faulthandler
import sys

import msgspec

from gateways.fix.runtime import configure_logging
from gateways.simulator.config import SimulatorConfig
from gateways.simulator.service import run

if __name__ == "__main__":
    faulthandler.enable()  # a crash in the FIX engine leaves a trace in the log
    configure_logging("simulator")
    run(msgspec.json.decode(sys.argv[1].encode(), type=SimulatorConfig))
