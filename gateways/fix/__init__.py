"""The FIX 4.4 execution gateway: `orders.route` -> market makers -> `executions`."""
