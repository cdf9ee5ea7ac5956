"""Connector classes by name: their settings type and how to build one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from connectors.config import ConnectorConfig
from connectors.exceptions import ConnectorConfigError
from connectors.replay import FileReplay, FileReplaySettings
from connectors.runtime import Connector
from connectors.status import MarketStatusFeed, MarketStatusSettings
from connectors.synthetic import SyntheticQuotes, SyntheticQuotesSettings

_SETTINGS: dict[str, type[msgspec.Struct]] = {
    "synthetic_quotes": SyntheticQuotesSettings,
    "file_replay": FileReplaySettings,
    "market_status": MarketStatusSettings,
}


def parse_settings(config: ConnectorConfig, origin: Path | str | None = None) -> Any:
    """The typed settings of a connector, or ConnectorConfigError naming the file and field."""
    where = origin or f"connector {config.name!r}"
    try:
        return msgspec.convert(config.settings, _SETTINGS[config.connector], strict=False)
    except (msgspec.ValidationError, ValueError) as error:
        raise ConnectorConfigError(f"{where}: settings: {error}") from error
    except RecursionError as error:
        raise ConnectorConfigError(f"{where}: settings: nested too deeply") from error


def check_settings(config: ConnectorConfig, origin: Path) -> ConnectorConfig:
    """Settings checked; a relative `path` setting made relative to the connector file."""
    settings = parse_settings(config, origin)
    path = getattr(settings, "path", "")
    if path and not Path(path).is_absolute():
        resolved = str((origin.parent / path).resolve())
        config = msgspec.structs.replace(config, settings={**config.settings, "path": resolved})
        settings = msgspec.structs.replace(settings, path=resolved)
    if path and not Path(settings.path).is_file():
        raise ConnectorConfigError(f"{origin}: settings.path: no such file {settings.path}")
    return config


def build_connector(config: ConnectorConfig) -> Connector:
    settings = parse_settings(config)
    if isinstance(settings, SyntheticQuotesSettings):
        return SyntheticQuotes(settings)
    if isinstance(settings, FileReplaySettings):
        return FileReplay(settings)
    assert isinstance(settings, MarketStatusSettings), config.connector
    return MarketStatusFeed(settings)
