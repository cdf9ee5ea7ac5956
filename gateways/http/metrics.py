"""A few counters and histograms rendered in the Prometheus text format (0.0.4)."""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Callable

Labels = tuple[tuple[str, str], ...]
_INF = 'le="+Inf"'
_LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def _labels(labels: Labels, extra: str = "") -> str:
    parts = [f'{name}="{_escape(value)}"' for name, value in labels]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Counter:
    def __init__(self, name: str, help_text: str) -> None:
        self.name = name
        self.help_text = help_text
        self.values: dict[Labels, float] = defaultdict(float)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        self.values[tuple(sorted(labels.items()))] += amount

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help_text}", f"# TYPE {self.name} counter"]
        lines += [f"{self.name}{_labels(k)} {v}" for k, v in sorted(self.values.items())]
        return lines


class Gauge:
    def __init__(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        self.name = name
        self.help_text = help_text
        self.read = read

    def render(self) -> list[str]:
        return [f"# HELP {self.name} {self.help_text}", f"# TYPE {self.name} gauge",
                f"{self.name} {self.read()}"]


class Histogram:
    def __init__(self, name: str, help_text: str,
                 buckets: tuple[float, ...] = _LATENCY_BUCKETS_S) -> None:
        self.name = name
        self.help_text = help_text
        self.buckets = buckets
        self.counts: dict[Labels, list[int]] = {}
        self.sums: dict[Labels, float] = defaultdict(float)

    def observe(self, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        counts = self.counts.setdefault(key, [0] * (len(self.buckets) + 1))
        counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sums[key] += value

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help_text}", f"# TYPE {self.name} histogram"]
        for key, counts in sorted(self.counts.items()):
            running = 0
            for bound, count in zip(self.buckets, counts, strict=False):
                running += count
                le = 'le="' + str(bound) + '"'
                lines.append(f"{self.name}_bucket{_labels(key, le)} {running}")
            running += counts[-1]
            lines.append(f"{self.name}_bucket{_labels(key, _INF)} {running}")
            lines.append(f"{self.name}_sum{_labels(key)} {self.sums[key]}")
            lines.append(f"{self.name}_count{_labels(key)} {running}")
        return lines


class Metrics:
    def __init__(self) -> None:
        self.requests = Counter("http_requests_total", "HTTP requests by route, method, status")
        self.latency = Histogram("http_request_duration_seconds", "HTTP request latency")
        self.commands = Counter("gateway_commands_produced_total", "Commands on orders.commands")
        self.replies = Counter("gateway_replies_total",
                               "Request/reply outcomes (answered, timeout)")
        self.ws_messages = Counter("gateway_ws_messages_sent_total", "WebSocket frames sent")
        # Degraded mode: what was done without Redis (rate_limit counted in this process,
        # idempotency left to the account topology, quotes: an order sent without a
        # reference price because the quote cache could not answer).
        self.redis_fallbacks = Counter(
            "gateway_redis_fallbacks_total",
            "Requests served without Redis, by what fell back (rate_limit, idempotency, quotes)")
        self.gauges: list[Gauge] = []

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        self.gauges.append(Gauge(name, help_text, read))

    def render(self) -> str:
        lines: list[str] = []
        for metric in (self.requests, self.latency, self.commands, self.replies,
                       self.ws_messages, self.redis_fallbacks):
            lines += metric.render()
        for gauge in self.gauges:
            lines += gauge.render()
        return "\n".join(lines) + "\n"
