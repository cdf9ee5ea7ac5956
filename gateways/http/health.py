"""Stage progress for /healthz and /metrics: every consumer group of the stack (those with
committed offsets on the broker) sampled every `SAMPLE_INTERVAL_S` and judged by
state.liveness. A group behind its input whose committed offsets stand still for `STALL_S` is
stuck: /healthz names it and answers 503; /metrics exposes lag, committed movement and the
verdict per group. The stuck service heals itself (market data exits for the supervisor to
restart it); the gateway only tells.

Kept out of routes.py: a middleware adds the stages to the answer of /healthz.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from aiohttp import web

from gateways.http.context import GATEWAY
from gateways.http.metrics import _labels
from gateways.http.problems import Handler, Problem
from state.liveness import GroupSampler, GroupStatus, Tracker

log = logging.getLogger(__name__)

SAMPLE_INTERVAL_S = 10.0
STALL_S = 30.0  # a stage behind and committing nothing this long is stuck


class StageWatch:
    def __init__(self, sampler: Callable[[], Any], stall_s: float = STALL_S) -> None:
        self._make_sampler = sampler
        self._sampler: Any = None
        self.tracker = Tracker(stall_s=stall_s)
        self.sampled_at_s: float | None = None
        self.error: str | None = None

    def sample_once(self, now_s: float) -> None:
        """One sample of every group (blocking: run it in a thread)."""
        if self._sampler is None:
            self._sampler = self._make_sampler()
        samples = self._sampler.sample(now_s)
        for group, sample in samples.items():
            self.tracker.add(group, sample)
        self.tracker.forget_except(samples)
        self.sampled_at_s = now_s
        self.error = None

    def statuses(self) -> list[GroupStatus]:
        return self.tracker.statuses()

    def close(self) -> None:
        """Drop the broker client (librdkafka destroys it with the last reference), so that
        it does not go on reconnecting to a broker that is gone."""
        self._sampler = None

    async def run(self, interval_s: float = SAMPLE_INTERVAL_S) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                await loop.run_in_executor(None, self.sample_once, time.monotonic())
            except Exception as error:  # noqa: BLE001 - the broker did not answer: say so
                self.error = str(error)
                log.warning("stage watch: cannot sample the broker: %s", error)
            await asyncio.sleep(interval_s)


STAGES = web.AppKey("stages", StageWatch)


class GroupGauges:
    """Per-group gauges in the Prometheus text format, read from the watch when rendered."""

    def __init__(self, watch: StageWatch) -> None:
        self._watch = watch

    def render(self) -> list[str]:
        statuses = self._watch.statuses()
        lines: list[str] = []
        for name, help_text, read in (
                ("consumer_group_lag", "records behind the input, summed over partitions",
                 lambda s: s.lag),
                ("consumer_group_committed_moved",
                 "records committed during the last sampling interval",
                 lambda s: s.committed_moved),
                ("consumer_group_stuck", "1 while the group is behind and commits nothing",
                 lambda s: int(s.stuck)),
                ("consumer_group_stalled_seconds", "how long the group has stood still",
                 lambda s: s.stalled_for_s)):
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
            for status in statuses:
                lines.append(f"{name}{_labels((('group', status.group),))} {read(status)}")
        return lines


def watch_for(bootstrap_servers: str, topic_prefix: str = "") -> StageWatch:
    """The stages of this stack: the groups that read its topics (its prefix)."""
    return StageWatch(lambda: GroupSampler(bootstrap_servers, topic_prefix=topic_prefix))


# /healthz names each stage's check `stage:<group>`; `brokerage status` reads them back.
STAGE_CHECK_PREFIX = "stage:"


def stage_checks(statuses: list[GroupStatus]) -> dict[str, str]:
    """`stage:<group>` -> "ok", or "stuck: <partitions> <lag> behind for <s> s"."""
    checks: dict[str, str] = {}
    for status in statuses:
        checks[f"{STAGE_CHECK_PREFIX}{status.group}"] = "ok" if not status.stuck else (
            f"stuck: {', '.join(f'{t}[{p}]' for t, p in status.stalled)} {status.lag} behind, "
            f"committed still for {status.stalled_for_s:.0f} s")
    return checks


@web.middleware
async def stages_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """/healthz also says which stage is stuck, and is 503 while one is."""
    response = await handler(request)
    watch = request.app.get(STAGES)
    if request.path != "/healthz" or watch is None or not isinstance(response, web.Response) \
            or response.status != 200 or response.body is None:
        return response
    body = orjson.loads(response.body)  # type: ignore[arg-type]
    statuses = watch.statuses()
    checks = {**body.get("checks", {}), **stage_checks(statuses)}
    stuck = [status.group for status in statuses if status.stuck]
    if stuck:
        raise Problem(503, "unhealthy", f"stuck: {', '.join(stuck)}", down=stuck, checks=checks)
    body["checks"] = checks
    return web.Response(body=orjson.dumps(body), status=200, content_type="application/json")


async def open_stage_watch(app: web.Application) -> AsyncIterator[None]:
    """Sample the broker's groups in the background while the gateway runs."""
    watch = app[STAGES]
    app[GATEWAY].metrics.gauges.append(GroupGauges(watch))  # type: ignore[arg-type]
    task = asyncio.create_task(watch.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        watch.close()
