"""Entry point of one supervised service: `python -m compose.child NAME CONFIG_PATH`."""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path

import msgspec


def _resolve(ref: str) -> object:
    module, attribute = ref.split(":")
    return getattr(importlib.import_module(module), attribute)


def main(argv: list[str]) -> int:
    name, spec_path = argv
    logging.basicConfig(level=logging.INFO,
                        format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s")
    spec = msgspec.json.decode(Path(spec_path).read_bytes())
    config = msgspec.convert(spec["config"], _resolve(spec["config_type"]))
    runner = _resolve(spec["runner"])
    runner(config)  # type: ignore[operator]
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
