from __future__ import annotations

import json
from pathlib import Path

import pytest

from connectors.config import ConnectorConfig, load_connector_dir
from connectors.exceptions import ConnectorConfigError, ConnectorError
from connectors.registry import build_connector
from connectors.synthetic import SyntheticQuotes

EXAMPLES = Path(__file__).parents[3] / "connectors" / "examples"


def test_the_examples_load_and_build() -> None:
    configs = load_connector_dir(EXAMPLES)
    assert {(c.connector, c.topic) for c in configs} == {
        ("synthetic_quotes", "quotes"), ("market_status", "market.status")}
    feed = next(c for c in configs if c.connector == "synthetic_quotes")
    built = build_connector(feed)
    assert isinstance(built, SyntheticQuotes)
    assert set(built.settings.symbols) == {"AAPL", "MSFT", "TSLA", "GME", "SPY"}
    assert built.settings.rate_per_s == 50


def test_a_relative_path_is_relative_to_the_connector_file(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "ticks.csv").write_text("symbol,bid\n")
    (tmp_path / "replay.json").write_text(json.dumps({
        "name": "replay", "connector": "file_replay", "topic": "quotes",
        "settings": {"path": "data/ticks.csv", "speed": 2}}))
    (config,) = load_connector_dir(tmp_path)
    assert config.settings["path"] == str(tmp_path / "data" / "ticks.csv")


@pytest.mark.parametrize(("text", "names"), [
    ('name = "a"\nconnector = "nope"\ntopic = "quotes"\n', ["bad.toml", "nope"]),
    ('name = "a"\nconnector = "synthetic_quotes"\ntopic = "quotes"\ncolour = 1\n',
     ["bad.toml", "colour"]),
    ('name = "a"\nconnector = "synthetic_quotes"\ntopic = "quotes"\n[settings]\n'
     'symbols = ["A"]\nrate_per_s = "fast"\n', ["bad.toml", "rate_per_s"]),
    ('name = "a"\nconnector = "synthetic_quotes"\ntopic = "quotes"\n[settings]\n'
     'symbols = ["A"]\n[settings.validation]\nstale_ms = 3\n', ["bad.toml", "stale_ms"]),
    ('name = "a"\nconnector = "file_replay"\ntopic = "quotes"\n[settings]\npath = "x.csv"\n',
     ["bad.toml", "settings.path"]),
    ("name = [", ["bad.toml", "cannot read"]),
])
def test_a_bad_file_names_the_file_and_the_field(tmp_path: Path, text: str,
                                                 names: list[str]) -> None:
    (tmp_path / "bad.toml").write_text(text)
    with pytest.raises(ConnectorConfigError) as raised:
        load_connector_dir(tmp_path)
    assert isinstance(raised.value, ConnectorError)
    for name in names:
        assert name in str(raised.value)


def test_names_are_unique(tmp_path: Path) -> None:
    body = {"name": "same", "connector": "market_status", "topic": "market.status"}
    for file in ("a.json", "b.json"):
        (tmp_path / file).write_text(json.dumps(body))
    with pytest.raises(ConnectorConfigError, match="b.json.*same.*a.json"):
        load_connector_dir(tmp_path)


def test_config_objects_are_frozen() -> None:
    config = ConnectorConfig(name="a", connector="market_status", topic="market.status")
    with pytest.raises(AttributeError):
        config.name = "b"  # type: ignore[misc]
