"""The base every folder may import: message types, topic names and serdes, the pure domain
core, and the stores where state lives (each store in a module of its own)."""
