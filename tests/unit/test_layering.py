"""The one-way flow, held by a test: which folder may import which."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("state", "topologies", "connectors", "gateways", "sinks", "compose")
# Connectors, gateways, topologies and sinks talk only through topics and the stores in state/.
MAY_IMPORT = {
    "state": {"state"},
    "topologies": {"state", "topologies"},
    "connectors": {"state", "connectors"},
    "gateways": {"state", "gateways"},
    "sinks": {"state", "sinks"},
    "compose": set(PACKAGES),
}
# The pure core: no I/O, no clock, no randomness, no store.
CORE_FORBIDDEN = {"confluent_kafka", "quixstreams", "psycopg", "psycopg_pool", "redis",
                  "aiohttp", "quickfix", "random", "socket", "subprocess", "os", "time",
                  "state.shard_store", "state.shard_reader", "state.shard_schema",
                  "state.router", "state.quote_cache"}


_READS_ENV = re.compile(r"os\.environ\s*[\[.]|getenv\(")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", PACKAGES)
def test_folders_import_only_what_the_flow_allows(package: str) -> None:
    allowed = MAY_IMPORT[package]
    wrong = []
    for path in _sources(package):
        for name in _imports(path):
            top = name.split(".")[0]
            if top in PACKAGES and top not in allowed:
                wrong.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("package", PACKAGES)
def test_product_code_imports_neither_tests_nor_benchmarks(package: str) -> None:
    """What ships (`brokerage chaos` included) runs without the repository's tests/ and
    benchmarks/: what they share with product code lives in the product (compose/chaos/)."""
    wrong = [f"{path.relative_to(ROOT)} imports {name}" for path in _sources(package)
             for name in _imports(path) if name.split(".")[0] in ("tests", "benchmarks")]
    assert not wrong, "\n".join(wrong)


def test_the_pure_core_does_no_io() -> None:
    wrong = []
    for path in _sources("state/domain"):
        for name in _imports(path):
            if name in CORE_FORBIDDEN or name.split(".")[0] in CORE_FORBIDDEN:
                wrong.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_environment_variables_are_read_only_in_compose() -> None:
    readers = []
    for package in PACKAGES:
        if package == "compose":
            continue
        for path in _sources(package):
            # passing the environment on to a child ({**os.environ}) is not reading it
            if _READS_ENV.search(path.read_text()):
                readers.append(str(path.relative_to(ROOT)))
    assert not readers, readers


def test_every_folder_has_one_root_exception() -> None:
    for package in PACKAGES:
        tree = ast.parse((ROOT / package / "exceptions.py").read_text())
        roots = [node.name for node in tree.body if isinstance(node, ast.ClassDef)
                 and any(isinstance(base, ast.Name) and base.id == "Exception"
                         for base in node.bases)]
        assert len(roots) == 1, f"{package}/exceptions.py roots: {roots}"
