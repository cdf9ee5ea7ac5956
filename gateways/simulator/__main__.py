"""`python -m gateways.simulator CONFIG_JSON`: run the simulator with a JSON config."""

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
