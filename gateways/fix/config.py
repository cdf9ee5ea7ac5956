"""Configuration of the FIX execution gateway: market makers come from the stack file."""

from __future__ import annotations

import msgspec


class MarketMakerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One market maker's FIX acceptor. With `sessions` > 1, session i (from 2) logs on as
    `{sender_comp_id}_{i}` so each session has its own SessionID and sequence numbers."""

    name: str
    host: str
    port: int
    sender_comp_id: str
    target_comp_id: str
    fix_version: str = "FIX.4.4"
    sessions: int = 1


class FixGatewayConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    bootstrap_servers: str
    topic_prefix: str = ""
    market_makers: tuple[MarketMakerConfig, ...]
    store_dir: str
    consumer_group: str = "fix-gateway"  # names the committed offsets of `orders.route`
    session_timeout_ms: int = 3000  # Kafka consumer session timeout
    stuck_order_timeout_ms: int = 30000
    routing_policy: str = "round_robin"  # or "best_price_improvement"
    heartbeat_s: int = 5
    # A market maker with a request unanswered this long stops getting new orders while
    # another one is available; any answer closes the breaker again.
    breaker_timeout_ms: int = 5000
    # How long the broker may hold a fetch of `orders.route` when it has nothing new: some
    # brokers (Tansu) answer only when it expires, so it is latency added to every order.
    # Tansu also answers empty when reading the partition takes longer than this, and that
    # read grows with what the partition holds: at 2 ms the gateway read nothing more after
    # 15 minutes of 2 orders/s on one partition (6,000 records); 10 ms read them.
    route_fetch_wait_ms: int = 10
    validate_messages: bool = True  # QuickFIX data-dictionary validation of incoming messages
    # Orders a session may have awaiting their first answer; when every session is full the
    # gateway stops reading `orders.route` (Kafka holds the backlog). Without it a burst
    # queued thousands of small FIX messages on one socket: the peer's receive queue was
    # pruned, TCP fell into retransmission back-off and the link stalled for seconds.
    max_in_flight_per_session: int = 256
    # The store forgets orders closed longer ago than this, with their ClOrdIDs and ExecIDs,
    # and the gateway refuses route records older than it (so a replay of a forgotten order
    # is never sent again). Keep it above the retention of `orders.route`.
    closed_order_retention_days: int = 7
    # Durable executions and orders in flight at a reset (gateways.fix.durable). The shards
    # are read (never written) to see which forwarded reports are booked and which orders
    # are open; without them nothing is checked and payloads stay in the store.
    shard_dsns: tuple[str, ...] = ()
    partitions_per_shard: int = 1
    booking_check_interval_ms: int = 2000  # one bounded pass over unbooked reports
    booking_check_batch_max: int = 500  # reports looked up per pass
    reforward_after_ms: int = 30_000  # not booked this long (same epoch): forwarded again
    # A report whose order is not in its shard waits this long for it before going anyway.
    orphan_after_ms: int = 120_000
    open_order_check_interval_ms: int = 60_000  # open orders of the shards reconciled
    # An order open in its shard that this gateway never got is ended after this long.
    unrouted_order_timeout_ms: int = 120_000
    epoch_check_interval_ms: int = 5000  # how often the broker's epoch is read again

    def __post_init__(self) -> None:
        if not self.market_makers:
            raise ValueError("at least one market maker is required")
        names = [mm.name for mm in self.market_makers]
        if len(set(names)) != len(names):
            raise ValueError(f"market maker names must be unique: {names}")
        if self.closed_order_retention_days < 1:
            raise ValueError("closed_order_retention_days must be at least 1")
        if self.max_in_flight_per_session < 1:
            raise ValueError("max_in_flight_per_session must be at least 1")
        if self.shard_dsns and self.partitions_per_shard < 1:
            raise ValueError("partitions_per_shard must be at least 1")
        for name in ("booking_check_interval_ms", "booking_check_batch_max",
                     "reforward_after_ms", "open_order_check_interval_ms",
                     "unrouted_order_timeout_ms", "epoch_check_interval_ms"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.routing_policy not in ROUTING_POLICIES:
            raise ValueError(f"routing_policy must be one of {sorted(ROUTING_POLICIES)}")
        seen: dict[tuple[str, str, str], str] = {}
        for mm in self.market_makers:
            if mm.sessions < 1:
                raise ValueError(f"market maker {mm.name}: sessions must be at least 1")
            # A FIX session is named by its CompIDs: two market makers may not share one.
            session = (mm.fix_version, mm.sender_comp_id, mm.target_comp_id)
            if session in seen:
                raise ValueError(f"market makers {seen[session]} and {mm.name} have the same "
                                 f"SenderCompID/TargetCompID {session[1]}/{session[2]}")
            seen[session] = mm.name


ROUTING_POLICIES = frozenset({"round_robin", "best_price_improvement"})
