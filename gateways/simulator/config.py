"""Configuration of the market-maker simulator."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

import msgspec


class SimulatorConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    bootstrap_servers: str
    topic_prefix: str = ""
    host: str = "127.0.0.1"
    port: int
    sender_comp_id: str = "MM1"
    target_comp_id: str = "BROKER"
    store_dir: str
    price_improvement_bps: Decimal = Decimal("1")
    partial_fill_qty_min: Decimal = Decimal("1000")  # at or above: fills of 40 %, 30 %, 30 %
    latency_ms: int = 0  # delay before each answer
    silent: bool = False  # take orders, never answer
    duplicate_reports: bool = False  # send every report twice (same ExecID)
    out_of_order_reports: bool = False  # send the fills of one order in reverse order
    known_symbols: tuple[str, ...] = ()  # empty: any symbol with a quote
    # Fault: drop the session (disconnect) after every this many reports; 0 never does.
    drop_session_every_reports: int = 0
    # Faults switched while the simulator runs (gateways/simulator/faults.py): this JSON file
    # is read when it changes; empty: none but the settings above.
    faults_file: str = ""
    sessions: int = 1  # counterparty sessions: target_comp_id, then target_comp_id_2, ...
    heartbeat_s: int = 5
    validate_messages: bool = True
    # An order for a symbol without a quote yet waits this long for the first one (held as
    # Pending New, executed when it comes) before it is rejected "no quote for symbol": a
    # stack's first orders often beat its first quotes. 0 rejects at once.
    quote_wait_s: Annotated[float, msgspec.Meta(ge=0)] = 30.0
