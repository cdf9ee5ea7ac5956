"""Entry point of one supervised service: `python -m compose.child NAME SPEC_PATH`."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import msgspec

from compose.services import ServiceSpec


def main(argv: list[str]) -> int:
    name, spec_path = argv
    logging.basicConfig(level=logging.INFO,
                        format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s")
    msgspec.json.decode(Path(spec_path).read_bytes(), type=ServiceSpec).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
