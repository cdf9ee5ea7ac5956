"""A FIX 4.4 market-maker simulator (acceptor) that fills against the quotes on `quotes`."""
