"""The HTTP and WebSocket gateway (aiohttp): REST for accounts, orders and portfolio, and a
WebSocket for live quotes and the user's own order updates."""
