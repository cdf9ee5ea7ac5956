"""QuickFIX session settings, written from our config objects (no hand-kept .cfg files)."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import quickfix as fix

from gateways.exceptions import GatewayError


def data_dictionary_path(fix_version: str = "FIX.4.4") -> Path:
    """The QuickFIX data dictionary installed with the engine (in `<prefix>/share/quickfix`)."""
    name = fix_version.replace(".", "") + ".xml"
    for root in (sys.prefix, sys.base_prefix):
        path = Path(root) / "share" / "quickfix" / name
        if path.exists():
            return path
    raise GatewayError(f"no QuickFIX data dictionary {name} under {sys.prefix}/share/quickfix")


@dataclass(frozen=True)
class SessionSpec:
    """One FIX session: who we are, who they are, and (for initiators) where they listen."""

    begin_string: str
    sender_comp_id: str
    target_comp_id: str
    host: str = ""
    port: int = 0

    @property
    def key(self) -> str:
        return f"{self.begin_string}:{self.sender_comp_id}->{self.target_comp_id}"


def session_key(session_id: fix.SessionID) -> str:
    return (f"{session_id.getBeginString().getValue()}:"
            f"{session_id.getSenderCompID().getValue()}->"
            f"{session_id.getTargetCompID().getValue()}")


def _common(store_dir: Path, heartbeat_s: int, validate: bool, fix_version: str) -> list[str]:
    # Sequence numbers persist across restarts and disconnects: a restart resumes the session
    # with ResendRequest / gap fill instead of starting over.
    return [
        f"FileStorePath={store_dir / 'store'}",
        f"FileLogPath={store_dir / 'log'}",
        "NonStopSession=Y",
        f"HeartBtInt={heartbeat_s}",
        "ResetOnLogon=N",
        "ResetOnLogout=N",
        "ResetOnDisconnect=N",
        "PersistMessages=Y",
        # Validation is the data dictionary's: QuickFIX 1.16 still validated with
        # ValidateIncomingMessage=N, so "no validation" means no dictionary (our messages
        # carry no repeating groups that would need one to parse).
        *(["UseDataDictionary=Y", f"DataDictionary={data_dictionary_path(fix_version)}"]
          if validate else ["UseDataDictionary=N"]),
        "ValidateUserDefinedFields=N",
        "AllowUnknownMsgFields=Y",
        "CheckLatency=N",
        "SocketNodelay=Y",  # no Nagle delay: one report is one small packet
        "LogonTimeout=5",
        "LogoutTimeout=2",
    ]


def initiator_settings_text(sessions: Iterable[SessionSpec], store_dir: Path, heartbeat_s: int,
                            validate: bool = True) -> str:
    specs = list(sessions)
    lines = ["[DEFAULT]", "ConnectionType=initiator", "ReconnectInterval=1",
             *_common(store_dir, heartbeat_s, validate, specs[0].begin_string)]
    for spec in specs:
        lines += ["", "[SESSION]", f"BeginString={spec.begin_string}",
                  f"SenderCompID={spec.sender_comp_id}", f"TargetCompID={spec.target_comp_id}",
                  f"SocketConnectHost={spec.host}", f"SocketConnectPort={spec.port}"]
    return "\n".join(lines) + "\n"


def session_comp_ids(comp_id: str, sessions: int) -> list[str]:
    """The CompIDs of a market maker's sessions: `X`, then `X_2`, `X_3`... so each session has
    its own SessionID and sequence numbers; both sides derive them the same way."""
    return [comp_id if i == 1 else f"{comp_id}_{i}" for i in range(1, sessions + 1)]


def acceptor_settings_text(begin_string: str, sender_comp_id: str, target_comp_ids: list[str],
                           host: str, port: int, store_dir: Path, heartbeat_s: int = 5,
                           validate: bool = True) -> str:
    lines = ["[DEFAULT]", "ConnectionType=acceptor", f"SocketAcceptHost={host}",
             f"SocketAcceptPort={port}", "SocketReuseAddress=Y",
             *_common(store_dir, heartbeat_s, validate, begin_string)]
    for target in target_comp_ids:
        lines += ["", "[SESSION]", f"BeginString={begin_string}",
                  f"SenderCompID={sender_comp_id}", f"TargetCompID={target}"]
    return "\n".join(lines) + "\n"


def load_settings(text: str, path: Path) -> fix.SessionSettings:
    """QuickFIX settings from text, via a file kept next to the store for operators to read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return fix.SessionSettings(str(path))
