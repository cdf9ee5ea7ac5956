"""The pure domain core of an account: money, the double-entry ledger, orders, risk checks and
the account's decision function. No I/O, no clock reads, no randomness: time comes in as
arguments, so replaying the same messages gives the same outputs."""
