"""Day end: every account's open day orders expire and release their holds.

One `expire_orders` command per account, keyed by account, with the trading day as its
idempotency key (`eod-YYYY-MM-DD`): running it twice for a day changes nothing."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence

from compose.per_account import produce_per_account
from state.messages import ExpireOrders

__all__ = ["expire_day_orders"]


def expire_day_orders(bootstrap: str, prefix: str, shard_dsns: Sequence[str],
                      trading_day: dt.date, report: Callable[[str], None]) -> int:
    def expire(account_id: str, now: dt.datetime) -> ExpireOrders:
        return ExpireOrders(account_id=account_id, idempotency_key=f"eod-{trading_day}",
                            trading_day=trading_day, submitted_at=now)

    count = produce_per_account(bootstrap, prefix, shard_dsns, expire, report)
    report(f"day orders of {trading_day} expired for {count} accounts")
    return count
