"""Names of the ledger accounts: the one vocabulary shared by the domain core, the shard
schema and the portfolio. Every transaction's entries sum to zero per asset.

User accounts (per brokerage account `a`):
- `user:a:cash` (USD): cash that buys (buying power); deposits land here.
- `user:a:cash_held` (USD): cash reserved for open buys and pending withdrawals.
- `user:a:shares` (asset = symbol): settled shares, free to sell.
- `user:a:shares_unsettled` (asset = symbol): bought shares until T+1 settlement.
- `user:a:shares_held` (asset = symbol): shares reserved for open sells.
System accounts (contra sides):
- `bank:ach` (USD): money in and out over ACH (deposits, returns).
- `bank:withdrawals` (USD): money on its way out to the user's bank.
- `clearing:<market_maker>` (USD and symbols): what we owe and are owed for trades.
- `custody:dtc` (symbols): shares delivered to (or from) our custody at settlement.
- `bank:settlement` (USD): cash paid to (or received from) market makers at settlement.
"""

from __future__ import annotations

import functools

USD = "USD"
BANK_ACH = "bank:ach"
BANK_WITHDRAWALS = "bank:withdrawals"
BANK_SETTLEMENT = "bank:settlement"
CUSTODY = "custody:dtc"

CASH = "cash"
CASH_HELD = "cash_held"
SHARES = "shares"
SHARES_UNSETTLED = "shares_unsettled"
SHARES_HELD = "shares_held"
USER_BUCKETS = (CASH, CASH_HELD, SHARES, SHARES_UNSETTLED, SHARES_HELD)


def user(account_id: str, bucket: str) -> str:
    assert bucket in USER_BUCKETS, f"unknown user ledger bucket {bucket!r}"
    return f"user:{account_id}:{bucket}"


def clearing(market_maker: str) -> str:
    return f"clearing:{market_maker or 'street'}"


@functools.lru_cache(maxsize=1 << 16)
def parse_user(ledger_account: str) -> tuple[str, str] | None:
    """(account_id, bucket) of a user ledger account, or None for a system account. Cached:
    the sinks parse every entry's account, and entries name far fewer accounts than they are."""
    parts = ledger_account.split(":")
    if len(parts) == 3 and parts[0] == "user" and parts[2] in USER_BUCKETS:
        return parts[1], parts[2]
    return None
