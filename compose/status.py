"""`brokerage status`: every server, service and consumer group of a running stack at a glance.

What it shows comes from where `/healthz` gets it, not from a second health logic:
- the servers (broker, Redis, each shard) are asked with state.health's checks, and judged by
  its verdicts (the gateway's `/healthz` asks the same with its own clients);
- the consumer groups' lag is one sample by state.liveness's GroupSampler; whether a group is
  stuck takes samples over time, so it is the HTTP gateway's verdict, read from `/healthz`
  (its `stage:<group>` checks), and `/healthz` itself is one line of the table;
- what only the CLI sees: the processes `brokerage up` supervises (pid, restarts, last exit),
  from the stack file it keeps in the data dir (`stack.json`).

`observe` does the I/O; `build_report`, `render_table` and `exit_code` are pure.

Exit codes: 0 every component ok; 1 something down, degraded or stuck (or `/healthz` not
answering 200 ok); 3 no running stack to ask (`NOT_RUNNING`).
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from gateways.http.health import STAGE_CHECK_PREFIX
from state.health import CHECK_TIMEOUT_S, broker_error, first_line, redis_error, shard_error
from state.liveness import STALL_S_DEFAULT, GroupSampler, assess

OK_EXIT = 0
NOT_OK_EXIT = 1
NOT_RUNNING = 3

GROUPS_TIMEOUT_S = 5.0
HEALTHZ_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class HealthAnswer:
    """What `/healthz` answered: its status and body, or why it did not answer."""

    status: int | None
    body: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True)
class Observed:
    """Everything `status` saw: the input of the report."""

    server_errors: Mapping[str, str | None]  # broker, redis, shard<N> -> None (up) or why not
    endpoints: Mapping[str, str]  # server name -> where it listens (no password)
    processes: Mapping[str, Sequence[Mapping[str, Any]]] | None  # the stack file's, if any
    pids_alive: Mapping[int, bool]
    healthz: HealthAnswer | None  # None: the stack runs no HTTP gateway
    lags: Mapping[str, int] | None  # group -> records behind; None: not sampled
    lags_error: str | None = None


@dataclass(frozen=True)
class Component:
    kind: str  # server, service, gateway, group
    name: str
    state: str  # up, down; for /healthz its status; for a group ok, stuck or unknown
    ok: bool
    detail: str = ""
    last_error: str | None = None
    pid: int | None = None
    restarts: int | None = None
    lag: int | None = None
    endpoint: str | None = None


@dataclass(frozen=True)
class Report:
    components: list[Component]
    notes: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        return [f"{c.kind} {c.name} {c.state}" for c in self.components if not c.ok]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_builtins(self) -> dict[str, Any]:
        return {"running": True, "ok": self.ok, "exit_code": exit_code(self),
                "problems": self.problems, "notes": self.notes,
                "components": [asdict(component) for component in self.components]}


def exit_code(report: Report) -> int:
    return OK_EXIT if report.ok else NOT_OK_EXIT


# ---- the report (pure) ---------------------------------------------------------------------


def _last_error(recorded: Mapping[str, Any] | None) -> str | None:
    if not recorded:
        return None
    return f"{recorded.get('error', '?')} (at {recorded.get('at', '?')})"


def _process(entry: Mapping[str, Any], alive: Mapping[int, bool]) -> tuple[bool, str]:
    """Whether a supervised process runs now, and its detail."""
    pid = entry.get("pid")
    running = bool(entry.get("running")) and isinstance(pid, int) and alive.get(pid, False)
    detail = f"pid {pid}" if running else "not running (the supervisor restarts it)"
    return running, detail


def _server_components(observed: Observed) -> list[Component]:
    recorded = {entry["name"]: entry for entry in (observed.processes or {}).get("servers", ())}
    components = []
    for name, error in observed.server_errors.items():
        entry = recorded.get(name)
        details = [observed.endpoints.get(name, "")]
        if entry is not None:
            _, process_detail = _process(entry, observed.pids_alive)
            details.append(process_detail)
        if error is not None:
            details.append(f"not answering: {error}")
        components.append(Component(
            "server", name, "up" if error is None else "down", error is None,
            "; ".join(d for d in details if d),
            last_error=_last_error(entry.get("last_error")) if entry else None,
            pid=entry.get("pid") if entry else None,
            restarts=entry.get("restarts") if entry else None,
            endpoint=observed.endpoints.get(name)))
    return components


def _service_components(observed: Observed) -> list[Component]:
    components = []
    for entry in (observed.processes or {}).get("services", ()):
        running, detail = _process(entry, observed.pids_alive)
        components.append(Component(
            "service", entry["name"], "up" if running else "down", running, detail,
            last_error=_last_error(entry.get("last_error")), pid=entry.get("pid"),
            restarts=entry.get("restarts")))
    return components


def _healthz_component(healthz: HealthAnswer) -> Component:
    if healthz.status is None:
        return Component("gateway", "/healthz", "down", False,
                         "the HTTP gateway does not answer", last_error=healthz.error)
    status = str(healthz.body.get("status", "")) if healthz.status == 200 else "unhealthy"
    detail = f"{healthz.status}"
    if healthz.status != 200:
        detail += f": {healthz.body.get('detail') or healthz.error or 'no detail'}"
    return Component("gateway", "/healthz", status or "unknown",
                     healthz.status == 200 and status == "ok", detail)


def _group_components(observed: Observed) -> list[Component]:
    checks: Mapping[str, Any] = (observed.healthz.body.get("checks") or {}) \
        if observed.healthz else {}
    verdicts = {key[len(STAGE_CHECK_PREFIX):]: str(value) for key, value in checks.items()
                if key.startswith(STAGE_CHECK_PREFIX)}
    lags = observed.lags or {}
    components = []
    for group in sorted(set(verdicts) | set(lags)):
        verdict = verdicts.get(group)
        lag = lags.get(group)
        details = [] if lag is not None else ["lag not sampled"]
        if verdict is None:
            state = "unknown"
            details.append("not judged: /healthz gave no verdict" if observed.healthz
                           else "not judged: the stack runs no HTTP gateway")
        elif verdict == "ok":
            state = "ok"
        else:
            state = "stuck"
        components.append(Component(
            "group", group, state, state != "stuck", ", ".join(details),
            last_error=verdict if state == "stuck" else None, lag=lag))
    return components


def build_report(observed: Observed) -> Report:
    components = _server_components(observed) + _service_components(observed)
    if observed.healthz is not None:
        components.append(_healthz_component(observed.healthz))
    components += _group_components(observed)
    notes = []
    if observed.processes is None:
        notes.append("no process list: the stack's services are not supervised by "
                     "`brokerage up` on this data dir")
    if observed.lags is None and observed.lags_error:
        notes.append(f"consumer group lag not sampled: {observed.lags_error}")
    return Report(components, notes)


def render_table(report: Report) -> list[str]:
    """The report for a terminal: one line per component, then the verdict."""
    rows = [("COMPONENT", "STATE", "RESTARTS", "LAG", "DETAIL")]
    for c in report.components:
        detail = c.detail + (f"; last error: {c.last_error}" if c.last_error else "")
        rows.append((f"{c.kind} {c.name}", c.state,
                     "-" if c.restarts is None else str(c.restarts),
                     "-" if c.lag is None else str(c.lag), detail))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}  "
             f"{row[3]:>{widths[3]}}  {row[4]}".rstrip() for row in rows]
    lines += [f"note: {note}" for note in report.notes]
    if report.ok:
        lines.append(f"ok: all {len(report.components)} components up")
    else:
        lines.append(f"not ok: {', '.join(report.problems)}")
    return lines


def not_running_json(error: str) -> str:
    """`--json`'s one line for a data dir without a running stack."""
    return json.dumps({"running": False, "ok": False, "exit_code": NOT_RUNNING,
                       "error": error})


# ---- looking (I/O) -------------------------------------------------------------------------


def shown_dsn(dsn: str) -> str:
    """A shard's address without its password."""
    import psycopg.conninfo

    try:
        parts = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.Error:
        return "(a DSN that cannot be parsed)"
    return f"{parts.get('host', '')}:{parts.get('port', 5432)}/{parts.get('dbname', '')}"


def shown_url(url: str) -> str:
    """A URL without its user and password."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}{parts.path}"


def fetch_healthz(base_url: str, timeout_s: float = HEALTHZ_TIMEOUT_S) -> HealthAnswer:
    try:
        with urllib.request.urlopen(base_url + "/healthz", timeout=timeout_s) as answer:
            return HealthAnswer(answer.status, _json(answer.read()))
    except urllib.error.HTTPError as error:
        return HealthAnswer(error.code, _json(error.read()))
    except (OSError, ValueError) as error:
        return HealthAnswer(None, error=f"{base_url}/healthz: {first_line(error)}")


def _json(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def group_lags(bootstrap_servers: str, topic_prefix: str,
               timeout_s: float = GROUPS_TIMEOUT_S) -> dict[str, int]:
    """Each consumer group's lag now (one sample, judged as /healthz judges it)."""
    sampler = GroupSampler(bootstrap_servers, extra={"log_level": "0"}, timeout_s=timeout_s,
                           topic_prefix=topic_prefix)
    samples = sampler.sample(time.monotonic())
    return {group: assess(group, [sample], STALL_S_DEFAULT).lag
            for group, sample in samples.items()}


async def _redis(url: str) -> str | None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url, socket_timeout=CHECK_TIMEOUT_S,
                                     socket_connect_timeout=CHECK_TIMEOUT_S)
    try:
        return await redis_error(client)
    finally:
        await client.aclose()


async def _broker_and_lags(bootstrap_servers: str, topic_prefix: str,
                           ) -> tuple[str | None, dict[str, int] | None, str | None]:
    """The broker's check, then (when it answers) the groups' lag."""
    error = await asyncio.to_thread(broker_error, bootstrap_servers)
    if error is not None:
        return error, None, "the broker does not answer"
    try:
        lags = await asyncio.to_thread(group_lags, bootstrap_servers, topic_prefix)
    except Exception as sampling:  # noqa: BLE001 - said in the report, not a traceback
        return None, None, first_line(sampling)
    return None, lags, None


async def _observe(endpoints: Mapping[str, Any], topic_prefix: str, http_url: str | None,
                   processes: Mapping[str, Sequence[Mapping[str, Any]]] | None) -> Observed:
    shard_dsns: list[str] = list(endpoints["shard_dsns"])
    healthz_task = asyncio.create_task(asyncio.to_thread(fetch_healthz, http_url)) \
        if http_url else None
    broker_task = asyncio.create_task(
        _broker_and_lags(endpoints["bootstrap_servers"], topic_prefix))
    redis, *shards = await asyncio.gather(_redis(endpoints["redis_url"]),
                                          *(shard_error(dsn) for dsn in shard_dsns))
    broker, lags, lags_error = await broker_task
    healthz = await healthz_task if healthz_task else None
    server_errors: dict[str, str | None] = {"broker": broker, "redis": redis}
    shown = {"broker": endpoints["bootstrap_servers"],
             "redis": shown_url(endpoints["redis_url"])}
    for shard, (dsn, error) in enumerate(zip(shard_dsns, shards, strict=True)):
        server_errors[f"shard{shard}"] = error
        shown[f"shard{shard}"] = shown_dsn(dsn)
    pids = {entry["pid"] for entries in (processes or {}).values() for entry in entries
            if isinstance(entry.get("pid"), int)}
    from compose.embedded import pid_alive

    return Observed(server_errors, shown, processes, {pid: pid_alive(pid) for pid in pids},
                    healthz, lags, lags_error)


def observe(endpoints: Mapping[str, Any], topic_prefix: str, http_url: str | None,
            processes: Mapping[str, Sequence[Mapping[str, Any]]] | None) -> Observed:
    """Ask every server, `/healthz` and the broker's groups at once (bounded: a server that
    does not answer costs its check's timeout, not more)."""
    return asyncio.run(_observe(endpoints, topic_prefix, http_url, processes))
