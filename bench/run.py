"""`make bench`: the contacts service vs a bare grpcio baseline; 1 vs 2 workers; 1k vs 1M rows.

Also the server's memory: after 100,000 and 200,000 requests, and with 1,000,000 rows.

    python -m bench [--duration 10] [--warmup 2] [--contacts 1000] [--workers 2]
                    [--scale-rows 1000000] [--scale-duration 4] [--soak 100000]
                    [--output bench/results.json]

Each scenario starts its own server and Envoy on free ports (`processes.Stack`),
seeds it, and drives each call over gRPC with h2load and as REST through Envoy
with wrk (`measure.measure_service`). The tables go to stdout, everything
measured to a JSON file. The scenarios, in order:

    contacts     one server process; --contacts seeded through the API; Get-, List-, CreateContact
    contacts×2   the same server with `serve --workers 2`: Get- and CreateContact
    baseline     the bare grpcio server (bench/baseline.py): GetContact
    baseline@1   the same at 1 request in flight: the latency Envoy adds when idle
    rows=1k      one process, one company of 1,000 contacts made by `python -m server seed`:
                 first 2 x 100,000 GetContact (gRPC, through Envoy's port) with the
                 memory read after each, then GetContact, the first page, and a page
                 deep in the list
    rows=1M      the same calls at 1,000,000 contacts

Every server process, Envoy and temporary file is gone when it returns,
whether it succeeds, fails, or is stopped by Ctrl-C or SIGTERM.
"""  # noqa: RUF002 (a multiplication sign: the scenario's name in the tables)

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from bench import report, scale
from bench.api import CheckFailed, Rest, seed
from bench.loadgen import LoadGenError, LoadShape, ensure_tools, versions
from bench.measure import Prepare, Step, measure_service
from bench.processes import ServerSpec, StartError
from bench.scale import SeedError
from bench.workload import create_contact, get_contact, list_contacts
from server import stack as server_stack
from server.auth import Tokens
from server.settings import PROJECT_ROOT, Settings

DEFAULT_OUTPUT = PROJECT_ROOT / "bench" / "results.json"
SMALL_ROWS = 1_000  # the scale scenarios' smaller size; --scale-rows is the larger
CONTACTS, BASELINE, QUIET = "contacts", "baseline", "baseline@1"
ALL_CALLS = ("GetContact", "ListContacts", "CreateContact")


def workers_name(workers: int) -> str:
    return f"{CONTACTS}×{workers}"  # noqa: RUF001 (a multiplication sign: 1 vs 2 workers)


def rows_name(contacts: int) -> str:
    """rows=1k, rows=1M, rows=2500."""
    for size, suffix in ((1_000_000, "M"), (1_000, "k")):
        if contacts >= size and contacts % size == 0:
            return f"rows={contacts // size}{suffix}"
    return f"rows={contacts}"


@dataclass(frozen=True)
class Shapes:
    """The loads of a run: most rows at `main`, the rest where it would not fit."""

    main: LoadShape
    unloaded: LoadShape  # the baseline at 1 request in flight
    scale: LoadShape  # GetContact and the first page in the scale scenarios: shorter
    deep: LoadShape  # the deep page: ~100 ms a query at 1M rows, so 1 in flight
    soak: LoadShape | None  # the memory rounds (a request count); None: skipped


# Scenarios


def contacts_spec(workdir: Path, secret: str, name: str = CONTACTS, workers: int = 1) -> ServerSpec:
    """The real server (`python -m server serve`) on SQLite in `workdir`, rate limits off.

    With several workers, `processes.start_server` gives it a fixed free port;
    with limits off, the workers need no Redis to share buckets.
    """
    command = [sys.executable, "-m", "server", "serve"]
    if workers > 1:
        command += ["--workers", str(workers)]
    return ServerSpec(
        name,
        command,
        {
            "CONTACTS_GRPC_PORT": "0",
            "CONTACTS_DATABASE_URL": scale.sqlite_url(database(workdir)),
            "CONTACTS_JWT_SECRET": secret,
            "CONTACTS_RATE_LIMIT_CREATE": "0",
            "CONTACTS_RATE_LIMIT_DEFAULT": "0",
        },
        workers=workers,
    )


def database(workdir: Path) -> Path:
    return workdir / "contacts.db"


def baseline_spec(name: str = BASELINE) -> ServerSpec:
    return ServerSpec(
        name,
        [sys.executable, "-m", "bench.baseline", "--workers", str(Settings.threads)],
        ready_status=200,
    )


def seeded_calls(contacts: int, rpcs: tuple[str, ...] = ALL_CALLS) -> Prepare:
    """Seeds a company with `contacts` contacts through the API; measures `rpcs` on it."""

    def prepare(rest: Rest) -> list[Step]:
        company, ids = seed(rest, contacts)
        # Any one will do; the middle one is neither the newest nor the oldest row.
        one = ids[len(ids) // 2]
        calls = [get_contact(one), list_contacts(company), create_contact(company)]
        return [Step(call) for call in calls if call.rpc in rpcs]

    return prepare


def baseline_calls(rest: Rest) -> list[Step]:
    # The baseline answers any id with its one contact.
    return [Step(get_contact(str(uuid.uuid4())))]


def quiet_calls(rest: Rest) -> list[Step]:
    """The baseline's GetContact direct, through Envoy as gRPC, and as REST: Envoy's cost."""
    transports = (report.GRPC, report.GRPC_ENVOY, report.REST)
    return [Step(get_contact(str(uuid.uuid4())), transports=transports)]


def scale_calls(company: str, contacts: int, shapes: Shapes) -> Prepare:
    """GetContact of the middle contact (gRPC and REST), the first and a deep page (gRPC)."""

    def prepare(rest: Rest) -> list[Step]:
        query = f"company_id={company}&skip={contacts // 2}&limit=1"
        middle = rest.json("GET", f"/contacts?{query}")[0]["id"]
        deep = list_contacts(company, scale.deep_skip(contacts), label="ListContacts deep")
        return [
            Step(get_contact(middle), shapes.scale),
            Step(list_contacts(company), shapes.scale, (report.GRPC,)),
            Step(deep, shapes.deep, (report.GRPC,)),
        ]

    return prepare


def measure_scale(
    contacts: int, shapes: Shapes, token: str, secret: str, workdir: Path, soak: bool
) -> dict[str, Any]:
    """A server on a database seeded with `contacts` contacts before it starts.

    Also returns the SQLite query plan of the deep page and its time run once,
    taken before the server starts so that nothing else runs meanwhile.
    """
    name = rows_name(contacts)
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"== {name}: seeding {contacts:,} contacts with `python -m server seed`", flush=True)
    company, seconds = scale.seed_database(database(workdir), contacts, secret)
    print(f"   seeded in {seconds:.1f} s", flush=True)
    plan = scale.explain_page(database(workdir), company, scale.deep_skip(contacts))
    measured = measure_service(
        contacts_spec(workdir, secret, name),
        scale_calls(company, contacts, shapes),
        shapes.main,
        token,
        workdir,
        soak=shapes.soak if soak else None,
        seeds_at_start=False,
    )
    return {**measured, "seed_seconds": seconds, "query_plan": plan.to_dict()}


def run_scenarios(
    args: argparse.Namespace, work: Path, shapes: Shapes, token: str, secret: str
) -> dict[str, dict[str, Any]]:
    """Every scenario the arguments ask for, one after the other: {name: what it measured}."""
    runs = {}

    def service(spec: ServerSpec, prepare: Prepare, shape: LoadShape) -> None:
        runs[spec.name] = measure_service(spec, prepare, shape, token, work / spec.name)

    service(contacts_spec(work / CONTACTS, secret), seeded_calls(args.contacts), shapes.main)
    if args.workers > 1:
        name = workers_name(args.workers)
        service(
            contacts_spec(work / name, secret, name, args.workers),
            seeded_calls(args.contacts, ("GetContact", "CreateContact")),
            shapes.main,
        )
    service(baseline_spec(), baseline_calls, shapes.main)
    if not args.no_unloaded:
        service(baseline_spec(QUIET), quiet_calls, shapes.unloaded)
    if args.scale_rows:
        for contacts, soak in ((SMALL_ROWS, True), (args.scale_rows, False)):
            name = rows_name(contacts)
            runs[name] = measure_scale(contacts, shapes, token, secret, work / name, soak)
    return runs


# Output


@dataclass
class Outcome:
    """The rows of a run put together, with their ratios, and the targets checked."""

    rows: list[dict[str, Any]]
    scale_rows: list[dict[str, Any]]
    targets: list[dict[str, Any]]
    scale_targets: list[dict[str, Any]]
    envoy_unloaded: dict[str, Any] | None


def evaluate(args: argparse.Namespace, runs: dict[str, dict[str, Any]]) -> Outcome:
    """Puts the rows together, with their ratios, and checks the targets."""
    main_names = [CONTACTS, workers_name(args.workers), BASELINE]
    rows = report.side_by_side([r for n in main_names if n in runs for r in runs[n]["rows"]])
    report.add_ratios(rows, baseline=BASELINE)
    targets = [t.evaluate(rows) for t in report.targets(CONTACTS, BASELINE)]
    quiet = runs.get(QUIET)
    envoy_unloaded = None
    if quiet:
        envoy_unloaded = report.envoy_target(QUIET).evaluate(quiet["rows"])
        targets.append(envoy_unloaded)

    small, large = rows_name(SMALL_ROWS), rows_name(args.scale_rows)
    scale_rows = report.side_by_side(
        [r for n in (small, large) if n in runs for r in runs[n]["rows"]]
    )
    report.add_scale_ratios(scale_rows, small)
    scale_targets = (
        [t.evaluate(scale_rows) for t in report.scale_targets(small, large)] if scale_rows else []
    )
    return Outcome(rows, scale_rows, targets, scale_targets, envoy_unloaded)


def print_main(
    args: argparse.Namespace, shapes: Shapes, runs: dict[str, dict[str, Any]], outcome: Outcome
) -> None:
    header = (
        f"contacts vs bare grpcio baseline: {os.cpu_count()} CPUs, SQLite, "
        f"{args.contacts} contacts seeded, rate limits off, auth on\n"
        f"load (every row): {shapes.main.describe()} ({shapes.main.in_flight} requests in "
        f"flight)\n"
        f"vs baseline: req/s / baseline GetContact req/s over the same transport"
    )
    print()
    print(report.table(outcome.rows, header))
    print()
    print(report.target_lines(outcome.targets))
    if outcome.envoy_unloaded:
        p50 = {r["transport"]: r["p50_ms"] for r in runs[QUIET]["rows"]}
        print(
            f"  (info) at 1 request in flight, p50: gRPC direct {p50[report.GRPC]:.2f} ms, "
            f"gRPC via Envoy {p50[report.GRPC_ENVOY]:.2f} ms, REST via Envoy "
            f"{p50[report.REST]:.2f} ms: a REST client pays "
            f"{p50[report.REST] - p50[report.GRPC]:.2f} ms over a direct gRPC one "
            "(transcoding, Lua, HTTP/1.1, another load generator)"
        )
    workers = workers_name(args.workers)
    if workers in runs:
        print()
        print(
            f"{args.workers} worker processes vs 1 ({workers} req/s / {CONTACTS} req/s, same "
            f"load; the {os.cpu_count()} CPUs also run the load generator and Envoy):"
        )
        print("\n".join(report.comparison_lines(outcome.rows, workers, CONTACTS)))
        lopsided = [
            f"{row['rpc']} {row['transport']}"
            for row in outcome.rows
            if row["service"] == workers and max(row.get("worker_cpu_share") or [0]) >= 0.8
        ]
        if lopsided:
            print(
                f"  note: one worker did 80% or more of the work in {', '.join(lopsided)}.\n"
                f"  SO_REUSEPORT spreads connections, not requests, and these runs have few\n"
                f"  long-lived ones (h2load: {shapes.main.h2_clients}; Envoy: one upstream HTTP/2 "
                f"connection per Envoy worker thread): such a row measures mostly one worker."
            )


def print_scale(
    args: argparse.Namespace, shapes: Shapes, runs: dict[str, dict[str, Any]], outcome: Outcome
) -> None:
    small, large = rows_name(SMALL_ROWS), rows_name(args.scale_rows)
    header = (
        f"scale: one company of {SMALL_ROWS:,} vs {args.scale_rows:,} contacts, seeded by "
        f"`python -m server seed` before the server starts; one server process\n"
        f"load: GetContact and the first page at {shapes.scale.brief('h2load')} "
        f"(+{shapes.scale.warmup:g} s warm-up), REST {shapes.scale.brief('wrk')};\n"
        f"      the deep page at {shapes.deep.brief('h2load')} (+{shapes.deep.warmup:g} s "
        f"warm-up): at ~100 ms a query, the main load would only queue behind it\n"
        f"vs {small}: req/s / the same call's req/s at {SMALL_ROWS:,} rows"
    )
    print()
    print(report.table(outcome.scale_rows, header, ratio=f"vs {small}"))
    print()
    print(report.target_lines(outcome.scale_targets, f"scale targets ({large} vs {small}):"))
    for name in (small, large):
        deep = report.find(outcome.scale_rows, name, "ListContacts deep", report.GRPC)
        if deep:
            print(
                f"  (info) deep page at {name} ({deep['note']}): {deep['rps']:.1f} req/s, "
                f"p50 {deep['p50_ms']:.1f} ms, p99 {deep['p99_ms']:.1f} ms; as measured, no target"
            )
    sql = runs[large]["query_plan"]["sql"]
    print()
    print("the deep page in SQLite: EXPLAIN QUERY PLAN of the server's list query,")
    print(f"  {sql}")
    print("  with company_id as 32 hex digits; no sort (the index is in list order), but")
    print("  OFFSET still steps over every skipped index entry, so the time grows with skip:")
    for name in (small, large):
        print("\n".join(report.plan_lines(name, runs[name]["query_plan"])))


def print_memory(runs: dict[str, dict[str, Any]]) -> None:
    print()
    print("server memory (VmRSS; MiB, growth since the reading before in brackets):")
    for name, run in runs.items():
        processes = max(len(sizes) for sizes in run["rss_kb_by_process"].values())
        print(report.rss_line(name, run["rss_kb"], processes))
    for run in runs.values():
        for row in run["soak_rows"]:
            print(
                f"  {run['service']} memory rounds: {row['rpc']} {row['transport']}, "
                f"{row['note']}: {row['rps']:.1f} req/s, p50 {row['p50_ms']:.2f} ms, "
                f"p99 {row['p99_ms']:.2f} ms, errors {row['errors']}"
            )


def results_json(
    args: argparse.Namespace,
    shapes: Shapes,
    runs: dict[str, dict[str, Any]],
    outcome: Outcome,
    machine: dict[str, Any],
    tools: dict[str, str],
) -> dict[str, Any]:
    found = versions()
    large = rows_name(args.scale_rows)
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine,
        "tools": {
            **{name: {"path": path, "version": found[name]} for name, path in tools.items()},
            "envoy": {"path": server_stack.envoy_binary()},
        },
        "load": asdict(shapes.main) | {"description": shapes.main.describe()},
        "loads": asdict(shapes),
        "seeded_contacts": args.contacts,
        "rows": outcome.rows,
        "targets": outcome.targets,
        "envoy_added_p50_unloaded": outcome.envoy_unloaded,
        "unloaded_rows": runs[QUIET]["rows"] if QUIET in runs else [],
        "workers": args.workers,
        "scale": {
            "rows": outcome.scale_rows,
            "targets": outcome.scale_targets,
            "seed_seconds": {n: r["seed_seconds"] for n, r in runs.items() if "seed_seconds" in r},
            "query_plans": {n: r["query_plan"] for n, r in runs.items() if "query_plan" in r},
            "sizes": {rows_name(SMALL_ROWS): SMALL_ROWS, large: args.scale_rows},
        },
        "scenario_seconds": {name: round(run["seconds"], 1) for name, run in runs.items()},
        "rss_kb": {name: run["rss_kb"] for name, run in runs.items()},
        "rss_kb_by_process": {name: run["rss_kb_by_process"] for name, run in runs.items()},
        "memory_rounds": [row for run in runs.values() for row in run["soak_rows"]],
        "seed_seconds": runs[CONTACTS]["prepare_seconds"],
    }


# The command


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured per row")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per row")
    parser.add_argument("--contacts", type=int, default=1000, help="contacts seeded (>= 100)")
    parser.add_argument(
        "--workers", type=int, default=2, help="processes of the multi-worker scenario (<2: skip)"
    )
    parser.add_argument(
        "--scale-rows",
        type=int,
        default=1_000_000,
        help=f"the larger size of the scale scenarios, compared with {SMALL_ROWS:,} (0: skip)",
    )
    parser.add_argument(
        "--scale-duration",
        type=float,
        default=4.0,
        help="seconds measured per scale row, after 1 s of warm-up (default 4)",
    )
    parser.add_argument(
        "--soak",
        type=int,
        default=100_000,
        help="GetContact requests per memory round; two rounds (0: skip)",
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="the JSON results")
    parser.add_argument(
        "--no-unloaded",
        action="store_true",
        help="skip measuring the baseline at 1 request in flight (Envoy's unloaded latency)",
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    if args.contacts < 100:
        parser.error("--contacts must be at least 100: ListContacts measures a full page")
    if args.scale_rows and args.scale_rows <= SMALL_ROWS:
        parser.error(f"--scale-rows must be above {SMALL_ROWS:,} (or 0 to skip)")
    return args


def shapes_for(args: argparse.Namespace) -> Shapes:
    main = LoadShape(duration=args.duration, warmup=args.warmup)
    short = {"duration": args.scale_duration, "warmup": min(args.warmup, 1.0)}
    return Shapes(
        main=main,
        unloaded=LoadShape(1, 1, 1, 1, duration=args.duration, warmup=args.warmup),
        scale=LoadShape(**short),
        deep=LoadShape(1, 1, 1, 1, **short),
        soak=LoadShape(requests=args.soak) if args.soak else None,
    )


def cpu_busy(seconds: float = 1.0) -> float:
    """The fraction of all CPUs busy over `seconds`, from /proc/stat."""

    def sample() -> tuple[int, int]:
        fields = [int(n) for n in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields), idle

    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    return 1 - (idle1 - idle0) / max(1, total1 - total0)


class Stopped(KeyboardInterrupt):
    """SIGINT or SIGTERM: unwinds like Ctrl-C, so that every `finally` runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def stop_on_signals() -> None:
    """SIGTERM (make being stopped, a CI timeout) and Ctrl-C raise `Stopped`; once
    unwinding, further ones are ignored, so that they cannot cut the cleanup short."""

    def stop(signum: int, frame: FrameType | None) -> None:
        for each in (signal.SIGINT, signal.SIGTERM):
            signal.signal(each, signal.SIG_IGN)
        raise Stopped(signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop_on_signals()
    try:
        tools = ensure_tools()
        server_stack.envoy_binary()
    except (LoadGenError, FileNotFoundError) as error:
        print(f"bench: {error}", file=sys.stderr)
        return 2

    # The load generators, Envoy and the server share the machine's CPUs: any
    # other work running meanwhile lowers every number, so say so up front.
    busy = cpu_busy()
    if busy > 0.25:
        print(f"bench: WARNING: the CPUs are already {busy:.0%} busy: expect low numbers")
    shapes = shapes_for(args)
    secret = secrets.token_urlsafe(36)  # 48 characters
    # The scale scenarios' company belongs to this user: only its owner may list it.
    token = Tokens(secret).issue(scale.OWNER, lifetime=3600)
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="contacts-bench-") as tmp:
            runs = run_scenarios(args, Path(tmp), shapes, token, secret)
    except (StartError, CheckFailed, LoadGenError, SeedError, subprocess.TimeoutExpired) as error:
        print(f"bench: FAILED: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as stopped:
        print("bench: interrupted; everything it started is stopped", file=sys.stderr)
        return 128 + stopped.signum if isinstance(stopped, Stopped) else 130

    outcome = evaluate(args, runs)
    print_main(args, shapes, runs, outcome)
    if outcome.scale_rows:
        print_scale(args, shapes, runs, outcome)
    print_memory(runs)

    machine = {"cpus": os.cpu_count(), "platform": platform.platform(), "cpu_busy_before": busy}
    results = results_json(args, shapes, runs, outcome, machine, tools)
    results["seconds"] = round(time.monotonic() - started, 1)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", "utf-8")
    print(f"results: {args.output}  ({results['seconds']} s in all)")
    return exit_status(args, outcome, runs)


def exit_status(args: argparse.Namespace, outcome: Outcome, runs: dict[str, Any]) -> int:
    soaked = [row for run in runs.values() for row in run["soak_rows"]]
    if any(row["errors"] for row in outcome.rows + outcome.scale_rows + soaked):
        print(
            "bench: some replies were errors: the numbers above are not to be trusted",
            file=sys.stderr,
        )
        return 1
    if args.strict and not all(t["met"] for t in outcome.targets + outcome.scale_targets):
        return 1
    return 0
