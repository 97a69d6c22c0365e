"""`make bench`: the contacts service against a bare grpcio baseline, on SQLite and on
PostgreSQL, with 1 and 2 worker processes, over gRPC (h2load) and REST through Envoy (wrk);
then GetContact with an RS256 token against HS256 and over TLS against plaintext
(bench/identity.py).

    python -m bench [--duration 5] [--warmup 1] [--contacts 1000] [--workers 2]
                    [--backends sqlite,postgresql] [--postgres DSN] [--strict]

Each stack (a server and Envoy, tests/harness.py) runs on free ports and is gone when
the run ends, however it ends. The table and the targets go to stdout, everything
measured to bench/results.json, and the same table and targets into
docs/performance.md (bench/performance.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psutil

from bench import identity, instructions, performance, report
from bench.calls import Call, CheckFailed, Client, create_contact, get_contact, list_contacts
from bench.load import Load, LoadError, h2load, wrk
from server.auth.tokens import Tokens
from server.settings import PROJECT_ROOT, Settings
from tests.collector import Collector
from tests.harness import POSTGRES_DSN, SERVE, Envoy, Server, empty_database, postgres_reachable

GRPC, GRPC_ENVOY, REST = report.GRPC, report.GRPC_ENVOY, report.REST
BASELINE = (sys.executable, "-m", "bench.baseline")
OWNER = "bench"  # the seeded company's owner: the token's sub
Row = dict[str, Any]


@dataclass
class Run:
    """What a run is given and what it has measured so far."""

    load: Load
    secret: str
    token: str  # the seeded company's owner's
    workdir: Path
    rows: list[Row] = field(default_factory=list)
    memory_mib: dict[str, float] = field(default_factory=dict)  # after each stack's rows
    row_cost_us: dict[str, float] = field(default_factory=dict)
    quiet: list[Row] = field(default_factory=list)  # the baseline at 1 request in flight
    ceiling: list[Row] = field(default_factory=list)  # the bare grpc.aio server (--aio)
    observed: list[Row] = field(default_factory=list)  # GetContact, metrics and log on and off
    compressed: list[Row] = field(default_factory=list)  # REST reads, gzip accepted or not
    traced: list[Row] = field(default_factory=list)  # GetContact, tracing unset, default, 10 %
    counted: instructions.Count | None = None  # the same, in instructions per call
    identity: list[Row] = field(default_factory=list)  # RS256 vs HS256, TLS vs plaintext


@dataclass(frozen=True)
class Stack:
    """A running server with Envoy in front, and a client of both: what a row drives."""

    backend: str
    workers: int
    server: Server
    envoy: Envoy
    client: Client


@contextmanager
def started(
    run: Run,
    backend: str,
    env: dict[str, str],
    workers: int = 1,
    command: tuple[str, ...] = SERVE,
    envoy_settings: Settings | None = None,
) -> Iterator[Stack]:
    """Started in order and stopped in reverse: Envoy stops before the server. Envoy's
    tracing, if any, is `envoy_settings`'."""
    with ExitStack() as cleanup:
        server = Server(env, run.workdir, workers, command)
        cleanup.callback(server.stop)
        # Our server has a door for Envoy; the baseline only its gRPC port.
        door = server.proxy_port if command == SERVE else server.port
        envoy = Envoy(door, run.workdir, settings=envoy_settings)
        cleanup.callback(envoy.stop)
        envoy.wait_upstream()
        client = Client(server.port, envoy.url, run.token)
        cleanup.callback(client.close)
        yield Stack(backend, workers, server, envoy, client)


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def server_cpu_seconds(server: Server) -> float:
    """The supervisor's and its workers' CPU time (the workers serve)."""
    return sum(cpu_seconds(process) for process in server.processes())


class WorkerCpu:
    """How the CPU time of a row was shared among a server's worker processes: with
    SO_REUSEPORT the kernel spreads connections, not requests, and a few long-lived
    ones can land on one worker."""

    def __init__(self, server: Server, workers: int) -> None:
        self.workers = server.processes()[1:] if workers > 1 else []
        self.before = [cpu_seconds(p) for p in self.workers]

    def note(self) -> str:
        used = [cpu_seconds(p) - b for p, b in zip(self.workers, self.before, strict=True)]
        if not used or sum(used) <= 0:
            return ""
        return "worker CPU " + "/".join(f"{u / sum(used):.0%}" for u in used)


def measure(
    run: Run,
    stack: Stack,
    call: Call,
    door: str,
    load: Load | None = None,
    accept_encoding: str | None = None,
) -> Row:
    """One row: `call` over `door`, its reply checked before and after the load; REST
    clients send `accept_encoding` if given."""
    load = load or run.load
    client = stack.client
    check = client.check_rest if door == REST else client.check_grpc
    check(call)
    before = client.count(call.creates_in) if call.creates_in else None
    cpu = WorkerCpu(stack.server, stack.workers)
    used = server_cpu_seconds(stack.server)
    name = f"{stack.backend}-{stack.workers}-{call.rpc}-{door}".replace(" ", "-")
    stem = run.workdir / name
    headers = {"authorization": f"Bearer {run.token}"}
    if accept_encoding:
        headers["accept-encoding"] = accept_encoding
        stem = stem.with_name(f"{stem.name}-{accept_encoding}")
    if door == REST:
        url = stack.envoy.url + call.path
        result = wrk(url, call.method, call.body, headers, load, stem.with_suffix(".lua"))
    else:
        body = stem.with_suffix(".grpc")
        body.write_bytes(call.framed())
        port = stack.server.port if door == GRPC else stack.envoy.port
        url = f"http://127.0.0.1:{port}{call.grpc_path}"
        result = h2load(url, body, headers, load, stem.with_suffix(".log"))
    row: Row = {"backend": stack.backend, "workers": stack.workers, "rpc": call.rpc, "door": door}
    row |= {**asdict(result), "note": cpu.note()}
    # The server's CPU per reply (the warm-up's replies included, at the measured rate):
    # steadier than req/s on a shared machine.
    replies = result.rps * (load.duration + load.warmup)
    spent = server_cpu_seconds(stack.server) - used
    row["cpu_us"] = spent / replies * 1e6 if replies and stack.workers == 1 else None
    if before is not None and call.creates_in:
        # Every success adds a contact (the warm-up some more): fewer new
        # contacts than measured replies means some calls failed.
        created = client.count(call.creates_in) - before
        row["errors"] = max(row["errors"], row["requests"] - created)
    check(call)  # and it still succeeds after the load
    print("  " + report.progress(row), flush=True)
    if row["errors"]:
        print(f"  errors: the end of the server's log:\n{stack.server.log_tail(1500)}")
    return row


def measure_baseline(run: Run) -> None:
    """The bare grpcio server: GetContact over both doors, then at 1 request in flight
    direct and via Envoy's port (what Envoy adds when idle)."""
    print("== baseline (bench/baseline.py)", flush=True)
    with started(run, "baseline", {}, command=BASELINE) as stack:
        call = get_contact(str(uuid.uuid4()), echoed=False)  # it answers any id with its one
        run.rows += [measure(run, stack, call, door) for door in (GRPC, REST)]
        quiet = Load(1, 1, 1, run.load.duration, run.load.warmup)
        run.quiet += [measure(run, stack, call, door, quiet) for door in (GRPC, GRPC_ENVOY)]
        run.memory_mib["baseline"] = stack.server.rss() / 2**20
    with started(run, "baseline-aio", {}, command=(*BASELINE, "--aio")) as stack:
        run.ceiling.append(measure(run, stack, get_contact(str(uuid.uuid4()), echoed=False), GRPC))


# Metrics and the line per call off: what they cost is the difference.
UNOBSERVED = {"CONTACTS_METRICS_PORT": "0", "CONTACTS_LOG_LEVEL": "warning"}


# Rounds of a fresh pair of stacks: two server processes of one configuration
# differ by up to 3 % in req/s, which one pair would count as the cost.
OBSERVABILITY_ROUNDS = 4  # even: each state starts first as often


def measure_observability(run: Run, env: dict[str, str], contact: str) -> None:
    """GetContact on two stacks over one database, metrics and log lines on (the default,
    and every row above) and off, alternated so that the machine's drift hits both; then
    the same counted in instructions, if valgrind is installed."""
    call = get_contact(contact)
    for round_ in range(1, OBSERVABILITY_ROUNDS + 1):
        print(
            f"== sqlite, 1 worker: metrics and the line per call on and off, pair {round_}",
            flush=True,
        )
        # Which starts first, and is measured first, changes from pair to pair.
        states = {"on": env, "off": env | UNOBSERVED}
        first, second = ("on", "off") if round_ % 2 else ("off", "on")
        with (
            started(run, "sqlite", states[first]) as a,
            started(run, "sqlite", states[second]) as b,
        ):
            for door in (GRPC, REST):
                for stack, state in ((a, first), (b, second), (b, second), (a, first)):
                    row = measure(run, stack, call, door)
                    run.observed.append(row | {"observability": state, "pair": round_})
    if not instructions.available():
        print("== instructions per call: SKIPPED (valgrind is not installed)", flush=True)
        return
    print("== instructions per call (callgrind): metrics and the line per call on, then off")
    headers = {"authorization": f"Bearer {run.token}"}
    try:
        run.counted = instructions.count(env, env | UNOBSERVED, call, headers, run.workdir)
    except Exception as error:  # the timed rows stand without it
        print(f"  FAILED: {type(error).__name__}: {error}", flush=True)
        return
    on, off = run.counted.on, run.counted.off
    print(f"  on {on:,.0f}  off {off:,.0f}  ({run.counted.cost:+.1%})", flush=True)


# Rounds of gzip and identity on one stack, each first as often.
COMPRESSION_ROUNDS = 2


def measure_compression(run: Run, env: dict[str, str], contact: str, company: str) -> None:
    """REST GetContact (under 1 KiB: never compressed) and a page of 100 contacts, for
    clients that send Accept-Encoding: gzip and for clients that do not, alternated;
    with the bytes each reply takes on the wire."""
    print("== sqlite, 1 worker: REST replies, gzip accepted or not", flush=True)
    with started(run, "sqlite", env) as stack:
        for call in (get_contact(contact), list_contacts(company)):
            sizes = {encoding: stack.client.rest_bytes(call, encoding) for encoding in ENCODINGS}
            for round_ in range(COMPRESSION_ROUNDS):
                for encoding in ENCODINGS if round_ % 2 == 0 else ENCODINGS[::-1]:
                    row = measure(run, stack, call, REST, accept_encoding=encoding)
                    row |= {"encoding": encoding, "bytes": sizes[encoding], "round": round_ + 1}
                    run.compressed.append(row)


ENCODINGS = ("gzip", "identity")


# Tracing's states: unset (every row above), the default sampler (every trace
# kept) and one trace in ten, exported to a collector in this process.
TRACING = {
    "unset": {},
    "default": {},
    "10 %": {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"},
}


def measure_tracing(run: Run, env: dict[str, str], contact: str) -> None:
    """GetContact over gRPC and REST with tracing unset, at the default sampler and at
    10 %: Envoy and the server both export to an OTLP receiver in this process."""
    call = get_contact(contact)
    collector = Collector(keep=False)
    try:
        for state, extra in TRACING.items():
            print(f"== sqlite, 1 worker: tracing {state}", flush=True)
            traced = (
                env
                if state == "unset"
                else env | extra | {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint}
            )
            settings = Settings.from_env(traced)
            with started(run, "sqlite", traced, envoy_settings=settings) as stack:
                for door in (GRPC, REST):
                    row = measure(run, stack, call, door)
                    run.traced.append(row | {"tracing": state})
        print(f"  the collector received {collector.count:,} spans", flush=True)
    finally:
        collector.stop()


def measure_backend(run: Run, backend: str, url: str, contacts: int, workers: int) -> None:
    """One database: seeded once through the API, then 1 and `workers` server processes."""
    env = {
        "CONTACTS_DATABASE_URL": url,
        "CONTACTS_JWT_SECRET": run.secret,
        "CONTACTS_RATE_LIMIT_CREATE": "0",
        "CONTACTS_RATE_LIMIT_DEFAULT": "0",
    }
    company = contact = ""
    for count in sorted({1, workers}):
        print(f"== {backend}, {count} worker(s)", flush=True)
        with started(run, backend, env, count) as stack:
            if not company:
                began = time.monotonic()
                company, ids = stack.client.seed(contacts)
                contact = ids[len(ids) // 2]  # neither the newest nor the oldest
                print(f"  seeded {contacts} contacts in {time.monotonic() - began:.1f} s")
                run.row_cost_us[backend] = stack.client.row_cost_us(company)
                print(f"  cost per listed row: {run.row_cost_us[backend]:.1f} µs", flush=True)
            # Creates last: they grow the company, which the first page does not see.
            for call in (get_contact(contact), list_contacts(company), create_contact(company)):
                run.rows += [measure(run, stack, call, door) for door in (GRPC, REST)]
            run.memory_mib[f"{backend} x{count}"] = stack.server.rss() / 2**20
    if backend == "sqlite":
        measure_observability(run, env, contact)
        measure_compression(run, env, contact, company)
        measure_tracing(run, env, contact)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured per row")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up per row")
    parser.add_argument("--contacts", type=int, default=1000, help="contacts seeded (>= 100)")
    parser.add_argument("--workers", type=int, default=2, help="the multi-process rows' workers")
    parser.add_argument("--backends", default="sqlite,postgresql", help="comma-separated")
    parser.add_argument(
        "--postgres",
        default=POSTGRES_DSN,
        help="a PostgreSQL server where the bench may make and drop a database",
    )
    parser.add_argument("--output", type=Path, default=PROJECT_ROOT / "bench" / "results.json")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    if args.contacts < 100:
        parser.error("--contacts must be at least 100: ListContacts measures a full page")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM (make stopped, a CI timeout) unwinds like Ctrl-C: every `finally` runs.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    busy = psutil.cpu_percent(interval=1)
    if busy > 25:
        print(f"bench: WARNING: the CPUs are already {busy:.0f}% busy: expect low numbers")
    started = time.monotonic()
    load = Load(duration=args.duration, warmup=args.warmup)
    skipped = []
    try:
        with tempfile.TemporaryDirectory(prefix="contacts-bench-") as tmp:
            secret = secrets.token_urlsafe(48)
            token = Tokens(secret).issue(OWNER, lifetime=3600)
            run = Run(load, secret, token, Path(tmp))
            measure_baseline(run)
            for backend in args.backends.split(","):
                if backend == "postgresql" and not postgres_reachable(args.postgres):
                    skipped.append(backend)
                    print(f"\n!! SKIPPED: every PostgreSQL row: no server at {args.postgres}\n")
                    continue
                with empty_database(Path(tmp), backend, args.postgres) as url:
                    measure_backend(run, backend, url, args.contacts, args.workers)
            with empty_database(Path(tmp)) as url:
                run.identity = identity.measure(load, Path(tmp), url)
    except (CheckFailed, LoadError, RuntimeError, TimeoutError, grpc.RpcError) as error:
        print(f"bench: FAILED: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: stopped; everything it started is stopped too", file=sys.stderr)
        return 130

    report.add_ratios(run.rows)
    targets = report.targets(run.rows, run.row_cost_us)
    print()
    print(
        f"{os.cpu_count()} CPUs; {args.contacts} contacts seeded in one company; auth on, "
        f"rate limits off; {load.describe()}"
    )
    print(report.table(run.rows))
    for backend in skipped:
        print(f"!! {backend}: SKIPPED (not reachable at {args.postgres})")
    print()
    print(report.target_lines(targets))
    print(report.info_lines(run.quiet, run.memory_mib, run.ceiling, run.rows))
    print(report.observability_lines(run.observed, run.counted))
    print(report.compression_lines(run.compressed))
    for line in identity.lines(run.identity):
        print(line)
    print(report.tracing_lines(run.traced))

    results = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "cpu_busy": busy},
        "load": asdict(load),
        "contacts": args.contacts,
        "rows": run.rows,
        "targets": targets,
        "unloaded": run.quiet,
        "ceiling": run.ceiling,
        "observability": run.observed,
        "compression": run.compressed,
        "instructions": asdict(run.counted) if run.counted else None,
        "identity": run.identity,
        "tracing": run.traced,
        "row_cost_us": run.row_cost_us,
        "memory_mib": run.memory_mib,
        "skipped": skipped,
        "seconds": round(time.monotonic() - started, 1),
    }
    args.output.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    print(f"results: {args.output} ({results['seconds']} s in all)")
    if args.output.resolve() == performance.RESULTS:  # not a trial run's elsewhere
        performance.write(results)
        print(f"rendered into {performance.DOC}")
    failed = [
        f"{r['backend']} x{r['workers']} {r['rpc']} {r['door']}"
        for r in run.rows + run.quiet + run.observed + run.traced
        if r["errors"]
    ] + [f"{r['config']} {r['door']} round {r['round']}" for r in run.identity if r["errors"]]
    if failed:
        print(f"bench: replies were errors in {', '.join(failed)}: see above", file=sys.stderr)
        return 1
    return 1 if args.strict and not all(t["met"] for t in targets) else 0
