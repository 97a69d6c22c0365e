"""`make bench`: measures the contacts service against a bare grpcio baseline.

    python -m bench [--duration 10] [--warmup 2] [--contacts 1000] [--output bench/results.json]

Each scenario starts its own server and Envoy on free ports (`processes.Stack`),
seeds it through the API, and drives each call over gRPC with h2load and as
REST through Envoy with wrk, all at one fixed load (`loadgen.LoadShape`). The
table goes to stdout, everything measured to a JSON file.

A scenario is one `measure_service` call: a `ServerSpec` (command and
environment) and a `prepare` function that seeds the server and returns the
calls to measure. More scenarios (a server with more workers, a larger seed)
are one more call each in `main`.
"""

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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import report
from bench.api import CheckFailed, Grpc, Rest, check_grpc, check_rest, count_contacts, seed
from bench.loadgen import LoadGenError, LoadShape, ensure_tools, run_h2load, run_wrk, versions
from bench.processes import ServerSpec, Stack, StartError, rss_kb
from bench.workload import Call, create_contact, get_contact, grpc_frame, list_contacts
from server import stack as server_stack
from server.auth import Tokens
from server.settings import PROJECT_ROOT, Settings

DEFAULT_OUTPUT = PROJECT_ROOT / "bench" / "results.json"

# prepare(rest) seeds a freshly started server and returns the calls to measure.
Prepare = Callable[[Rest], list[Call]]


# Scenarios


def contacts_spec(
    workdir: Path, secret: str, extra_env: dict[str, str] | None = None
) -> ServerSpec:
    """The real server (`python -m server serve`) on SQLite in `workdir`, rate limits off."""
    return ServerSpec(
        "contacts",
        [sys.executable, "-m", "server", "serve"],
        {
            "CONTACTS_GRPC_PORT": "0",
            "CONTACTS_DATABASE_URL": f"sqlite:///{workdir.resolve() / 'contacts.db'}",
            "CONTACTS_JWT_SECRET": secret,
            "CONTACTS_RATE_LIMIT_CREATE": "0",
            "CONTACTS_RATE_LIMIT_DEFAULT": "0",
            **(extra_env or {}),
        },
    )


def baseline_spec(name: str = "baseline") -> ServerSpec:
    return ServerSpec(
        name,
        [sys.executable, "-m", "bench.baseline", "--workers", str(Settings.threads)],
        ready_status=200,
    )


def seeded_calls(contacts: int) -> Prepare:
    """Seeds a company with `contacts` contacts; measures Get-, List- and CreateContact."""

    def prepare(rest: Rest) -> list[Call]:
        company, ids = seed(rest, contacts)
        # Any one will do; the middle one is neither the newest nor the oldest row.
        one = ids[len(ids) // 2]
        return [get_contact(one), list_contacts(company), create_contact(company)]

    return prepare


def baseline_calls(rest: Rest) -> list[Call]:
    # The baseline answers any id with its one contact.
    return [get_contact(str(uuid.uuid4()))]


# Measuring


def measure_service(
    spec: ServerSpec, prepare: Prepare, shape: LoadShape, token: str, workdir: Path
) -> dict[str, Any]:
    """Starts `spec` behind Envoy, prepares it, measures each call over both transports.

    Returns {"service", "rss_kb": {when: kB}, "prepare_seconds", "rows": [...]};
    the processes are stopped before it returns, whatever happens.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"== {spec.name}: starting", flush=True)
    with Stack(spec, workdir) as stack:
        rss: dict[str, int | None] = {"at start": rss_kb(stack.server.pid)}
        rest, grpc_client = Rest(stack.http_port, token), Grpc(stack.grpc_port, token)
        try:
            started = time.monotonic()
            calls = prepare(rest)
            prepared = time.monotonic() - started
            rss["after seeding"] = rss_kb(stack.server.pid)
            rows = []
            for call in calls:
                for measure in (measure_grpc, measure_rest):
                    row = measure(stack, call, shape, token, grpc_client, rest)
                    row["service"] = spec.name
                    rows.append(row)
                    print(f"   {_progress(row)}", flush=True)
                    stack.check_alive()
            rss["after the runs"] = rss_kb(stack.server.pid)
        finally:
            rest.close()
            grpc_client.close()
    return {"service": spec.name, "rss_kb": rss, "prepare_seconds": prepared, "rows": rows}


def measure_grpc(
    stack: Stack, call: Call, shape: LoadShape, token: str, client: Grpc, rest: Rest
) -> dict[str, Any]:
    """h2load straight at the server's gRPC port."""
    # h2load takes any HTTP 200 as success: prove first that this very body
    # gets grpc-status 0 and the reply it should.
    check_grpc(client, call)
    body = stack.workdir / f"{call.rpc}.grpc"
    body.write_bytes(grpc_frame(call.grpc_request))
    before = count_contacts(rest, call.creates_in) if call.creates_in else None
    result = run_h2load(
        f"http://127.0.0.1:{stack.grpc_port}{call.grpc_path}",
        body,
        {"authorization": f"Bearer {token}"},
        shape,
        stack.workdir / f"{call.rpc}.h2load.log",
    ).to_dict()
    if before is not None and call.creates_in:
        # Every successful create adds a row, and the warm-up adds some more:
        # fewer new rows than measured replies means some calls failed.
        created = count_contacts(rest, call.creates_in) - before
        result["rows_created"] = created
        result["errors"] = max(result["errors"], result["requests"] - created)
    check_grpc(client, call)  # and the server still answers it after the load
    return {"rpc": call.rpc, "transport": report.GRPC, **result}


def measure_rest(
    stack: Stack, call: Call, shape: LoadShape, token: str, client: Grpc, rest: Rest
) -> dict[str, Any]:
    """wrk at Envoy's port: JSON in, the transcoder, gRPC to the server, JSON out."""
    check_rest(rest, call)
    result = run_wrk(
        f"http://127.0.0.1:{stack.http_port}{call.rest_path}",
        call.rest_method,
        call.rest_body,
        {"Authorization": f"Bearer {token}"},
        shape,
        stack.workdir / f"{call.rpc}.wrk.lua",
    ).to_dict()
    return {"rpc": call.rpc, "transport": report.REST, **result}


def _progress(row: dict[str, Any]) -> str:
    return (
        f"{row['rpc']:<14} {row['transport']:<15} {row['rps']:9.1f} req/s  "
        f"p50 {row['p50_ms']:.2f} ms  p99 {row['p99_ms']:.2f} ms  errors {row['errors']}"
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


# The command


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured per row")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per row")
    parser.add_argument("--contacts", type=int, default=1000, help="contacts seeded (>= 100)")
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
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM (make being stopped, a CI timeout) unwinds like Ctrl-C, so that
    # every `finally` runs and no server or Envoy is left behind.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
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
    shape = LoadShape(duration=args.duration, warmup=args.warmup)
    unloaded = LoadShape(1, 1, 1, 1, duration=args.duration, warmup=args.warmup)
    secret = secrets.token_urlsafe(36)  # 48 characters
    token = Tokens(secret).issue("bench-user", lifetime=3600)
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="contacts-bench-") as tmp:
            work = Path(tmp)
            service = measure_service(
                contacts_spec(work / "contacts", secret),
                seeded_calls(args.contacts),
                shape,
                token,
                work / "contacts",
            )
            baseline = measure_service(
                baseline_spec(), baseline_calls, shape, token, work / "baseline"
            )
            quiet = None
            if not args.no_unloaded:
                quiet = measure_service(
                    baseline_spec("baseline@1"), baseline_calls, unloaded, token, work / "quiet"
                )
    except (StartError, CheckFailed, LoadGenError, subprocess.TimeoutExpired) as error:
        print(f"bench: FAILED: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted; everything it started is stopped", file=sys.stderr)
        return 130

    rows = service["rows"] + baseline["rows"]
    report.add_ratios(rows, baseline="baseline")
    checked = [t.evaluate(rows) for t in report.targets("contacts", "baseline")]
    envoy_unloaded = (
        report.targets("baseline@1", "baseline@1")[3].evaluate(quiet["rows"]) if quiet else None
    )

    header = (
        f"contacts vs bare grpcio baseline: {os.cpu_count()} CPUs, SQLite, "
        f"{args.contacts} contacts seeded, rate limits off, auth on\n"
        f"load (every row): {shape.describe()} ({shape.in_flight} requests in flight)\n"
        f"vs baseline: req/s / baseline GetContact req/s over the same transport"
    )
    print()
    print(report.table(rows, header))
    print()
    print(report.target_lines(checked))
    if envoy_unloaded:
        p50 = {r["transport"]: r["p50_ms"] for r in quiet["rows"]}  # type: ignore[index]
        print(
            f"  (info) Envoy added p50 at 1 request in flight: {envoy_unloaded['value']:.2f} ms "
            f"(REST {p50[report.REST]:.2f} ms - gRPC {p50[report.GRPC]:.2f} ms)"
        )
    print()
    print(report.rss_line("contacts", service["rss_kb"]))

    results = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "cpu_busy_before": round(busy, 3),
        },
        "tools": {
            **{name: {"path": path, "version": versions()[name]} for name, path in tools.items()},
            "envoy": {"path": server_stack.envoy_binary()},
        },
        "load": shape.__dict__ | {"description": shape.describe()},
        "seeded_contacts": args.contacts,
        "seconds": round(time.monotonic() - started, 1),
        "rows": rows,
        "targets": checked,
        "envoy_added_p50_unloaded": envoy_unloaded,
        "unloaded_rows": quiet["rows"] if quiet else [],
        "rss_kb": {"contacts": service["rss_kb"], "baseline": baseline["rss_kb"]},
        "seed_seconds": service["prepare_seconds"],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {args.output}  ({results['seconds']} s in all)")

    if any(row["errors"] for row in rows):
        print(
            "bench: some replies were errors: the numbers above are not to be trusted",
            file=sys.stderr,
        )
        return 1
    if args.strict and not all(t["met"] for t in checked):
        return 1
    return 0
