# Shortcuts for ./dev (which needs no make).
.PHONY: run test check lint
run:
	./dev run
check:
	./dev check
test:
	./dev test
lint:
	.venv/bin/ruff check state topologies connectors gateways sinks compose tests benchmarks
	.venv/bin/mypy state topologies connectors gateways sinks compose
