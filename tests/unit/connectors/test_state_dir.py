"""Everything a stack writes lives under its data dir: the connectors' Quix state too."""

from __future__ import annotations

from pathlib import Path

from compose.services import Endpoints, service_specs
from compose.stack import load_stack
from connectors.config import ConnectorsConfig
from connectors.service import build_app


def test_the_connectors_keep_their_state_under_the_data_dir(tmp_path: Path) -> None:
    stack = load_stack(environ={"BROKERAGE_DATA_DIR": str(tmp_path / "data")})
    endpoints = Endpoints("127.0.0.1:1", ("postgresql://x/a", "postgresql://x/b"),
                          "redis://127.0.0.1:1/0", "secret")
    [spec] = [s for s in service_specs(stack, endpoints) if s.name == "connectors"]
    assert spec.config["state_dir"] == str(tmp_path / "data" / "state" / "connectors")


def test_without_a_state_dir_nothing_is_written_where_the_process_runs(
        tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    app = build_app(ConnectorsConfig(bootstrap_servers="127.0.0.1:1", connectors=()))
    assert not Path(app.config.state_dir).is_relative_to(tmp_path)
