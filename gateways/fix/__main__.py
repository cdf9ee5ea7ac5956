"""`python -m gateways.fix CONFIG_JSON`: run the FIX gateway with a JSON config."""

from __future__ import annotations

import faulthandler
import sys

import msgspec

from gateways.fix.config import FixGatewayConfig
from gateways.fix.runtime import configure_logging
from gateways.fix.service import run

if __name__ == "__main__":
    faulthandler.enable()  # a crash in the FIX engine leaves a trace in the log
    configure_logging("fix-gateway")
    run(msgspec.json.decode(sys.argv[1].encode(), type=FixGatewayConfig))
