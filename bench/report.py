"""The bench's table and targets.

A row's `vs base` is its req/s over the baseline's GetContact through the same door
(gRPC rows: the bare grpcio server direct; REST rows: the same server behind Envoy);
a PostgreSQL row's `vs sqlite`, over the same row on SQLite. Each target says which
two numbers it divides.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from bench.instructions import Count

Row = dict[str, Any]
GRPC, GRPC_ENVOY, REST = "gRPC", "gRPC via Envoy", "REST via Envoy"


def find(rows: list[Row], backend: str, workers: int, rpc: str, door: str) -> Row | None:
    for row in rows:
        if (row["backend"], row["workers"], row["rpc"], row["door"]) == (
            backend,
            workers,
            rpc,
            door,
        ):
            return row
    return None


def _ratio(row: Row | None, base: Row | None) -> float | None:
    return row["rps"] / base["rps"] if row and base and base["rps"] else None


def add_ratios(rows: list[Row]) -> None:
    for row in rows:
        row["vs_base"] = _ratio(row, find(rows, "baseline", 1, "GetContact", row["door"]))
        row["vs_sqlite"] = None
        if row["backend"] == "postgresql":
            row["vs_sqlite"] = _ratio(
                row, find(rows, "sqlite", row["workers"], row["rpc"], row["door"])
            )


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


def progress(row: Row) -> str:
    return (
        f"{row['rpc']:<14} {row['door']:<15} {row['rps']:9.1f} req/s  p50 {row['p50_ms']:.2f} ms"
        f"  p99 {row['p99_ms']:.2f} ms  errors {row['errors']}  {row['note']}"
    ).rstrip()


def table(rows: list[Row]) -> str:
    head = (
        f"{'backend':<11}{'workers':>7}  {'call':<14}{'door':<16}{'req/s':>9}{'p50 ms':>9}"
        f"{'p99 ms':>9}{'errors':>8}{'vs base':>9}{'vs sqlite':>11}  note"
    )
    lines = [head, "-" * (len(head) + 16)]
    for row in rows:
        lines.append(
            f"{row['backend']:<11}{row['workers']:>7}  {row['rpc']:<14}{row['door']:<16}"
            f"{_num(row['rps'], 0):>9}{_num(row['p50_ms'], 2):>9}{_num(row['p99_ms'], 2):>9}"
            f"{row['errors']:>8}{_num(row['vs_base'], 2):>9}{_num(row['vs_sqlite'], 2):>11}"
            f"  {row['note']}".rstrip()
        )
    return "\n".join(lines)


def _target(name: str, value: float | None, bound: float, at_least: bool, definition: str) -> Row:
    met = None if value is None else (value >= bound if at_least else value <= bound)
    op = ">=" if at_least else "<="
    return {
        "name": name,
        "value": value,
        "bound": f"{op} {bound:g}",
        "met": met,
        "definition": definition,
    }


def targets(rows: list[Row], row_cost_us: dict[str, float]) -> list[Row]:
    """Issue 9's targets: ratios to the baseline's gRPC GetContact in the same run, on
    SQLite and one server process unless the line says otherwise."""
    base = find(rows, "baseline", 1, "GetContact", GRPC)

    def vs_base(name: str, rpc: str, door: str, bound: float, workers: int = 1) -> Row:
        row = find(rows, "sqlite", workers, rpc, door)
        definition = f"sqlite x{workers} {rpc} {door} req/s / baseline GetContact gRPC req/s"
        return _target(name, _ratio(row, base), bound, True, definition)

    worst = min(
        (r for r in rows if r.get("vs_sqlite") is not None),
        key=lambda r: r["vs_sqlite"],
        default=None,
    )
    worst_name = f"{worst['rpc']} {worst['door']} x{worst['workers']}" if worst else "none"
    costs = ", ".join(f"{b} {us:.1f} µs" for b, us in row_cost_us.items())
    return [
        vs_base("gRPC GetContact", "GetContact", GRPC, 0.8),
        vs_base("gRPC ListContacts (100)", "ListContacts", GRPC, 0.25),
        vs_base("REST list (100) via Envoy", "ListContacts", REST, 0.2),
        vs_base("REST GetContact via Envoy", "GetContact", REST, 0.5),
        vs_base("gRPC GetContact, 2 workers", "GetContact", GRPC, 1.5, workers=2),
        _target(
            "PostgreSQL / SQLite, worst",
            worst["vs_sqlite"] if worst else None,
            0.7,
            True,
            f"the lowest 'vs sqlite' of the table: {worst_name}",
        ),
        _target(
            "cost per listed row (µs)",
            row_cost_us.get("sqlite"),
            10,
            False,
            f"sqlite, 1 call in flight: (t(limit=100) - t(limit=1)) / 99; {costs}",
        ),
    ]


def target_lines(results: list[Row]) -> str:
    lines = ["targets:"]
    for t in results:
        verdict = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
        lines.append(
            f"  {t['name']:<28}{_num(t['value'], 2):>7}  ({t['bound']:<7}) {verdict:<7} "
            f"{t['definition']}"
        )
    return "\n".join(lines)


def info_lines(
    quiet: list[Row], memory_mib: dict[str, float], ceiling: list[Row], rows: list[Row]
) -> str:
    lines = []
    base = find(rows, "baseline", 1, "GetContact", GRPC)
    ours = find(rows, "sqlite", 1, "GetContact", GRPC)
    if ceiling and base and ours:
        aio = ceiling[0]["rps"]
        lines.append(
            f"  (info) a bare grpc.aio server on uvloop, GetContact gRPC: {aio:,.0f} req/s, "
            f"{aio / base['rps']:.2f} of the sync baseline: the most an aio server does here; "
            f"sqlite x1 GetContact gRPC is {ours['rps'] / aio:.2f} of it"
        )
    direct = next((r for r in quiet if r["door"] == GRPC), None)
    via = next((r for r in quiet if r["door"] == GRPC_ENVOY), None)
    if direct and via:
        lines.append(
            f"  (info) Envoy added p50: {via['p50_ms'] - direct['p50_ms']:.2f} ms (baseline "
            f"GetContact at 1 request in flight: gRPC via Envoy {via['p50_ms']:.2f} ms, "
            f"direct {direct['p50_ms']:.2f} ms)"
        )
    memory = ", ".join(f"{name} {mib:.0f} MiB" for name, mib in memory_mib.items())
    lines.append(f"  (info) server memory after its rows (VmRSS, summed over processes): {memory}")
    return "\n".join(lines)


OBSERVABILITY_BOUND = 0.05  # issue 11: metrics and the line per call cost at most 5 %


def _pair_costs(runs: dict[str, list[Row]]) -> str:
    """The req/s cost within each pair of servers: how far one pair can be from another."""
    costs = []
    for pair in sorted({r["pair"] for r in runs["on"]}):
        on, off = (
            statistics.mean(r["rps"] for r in runs[state] if r["pair"] == pair)
            for state in ("on", "off")
        )
        costs.append(f"{1 - on / off:.1%}")
    return " ".join(costs)


def observability_lines(rows: list[Row], counted: Count | None = None) -> str:
    """What metrics and the log line per call cost GetContact: req/s and the server's CPU
    per reply, each the median of its rows with them on and off (over several pairs of
    server processes), and the instructions per call when they were counted."""
    lines = ["metrics and the line per call (sqlite x1 GetContact, on vs off, alternated):"]
    for door in (GRPC, REST):
        runs = {
            state: [r for r in rows if r["door"] == door and r["observability"] == state]
            for state in ("on", "off")
        }
        if not runs["on"] or not runs["off"]:
            continue
        rps = {state: statistics.median(r["rps"] for r in got) for state, got in runs.items()}
        cpu = {
            state: statistics.median(r["cpu_us"] or 0 for r in got) for state, got in runs.items()
        }
        cost = 1 - rps["on"] / rps["off"] if rps["off"] else math.nan
        cpu_cost = cpu["on"] / cpu["off"] - 1 if cpu["off"] else math.nan
        verdict = "met" if cost <= OBSERVABILITY_BOUND else "MISSED"
        lines.append(
            f"  {door:<15} on {rps['on']:8,.0f} req/s  off {rps['off']:8,.0f} req/s  "
            f"cost {cost:6.1%} (<= {OBSERVABILITY_BOUND:.0%}) {verdict:<7} server CPU per "
            f"reply {cpu['on']:.0f} vs {cpu['off']:.0f} µs ({cpu_cost:+.1%}); "
            f"per pair: {_pair_costs(runs)}"
        )
    if counted is not None:
        verdict = "met" if counted.cost <= OBSERVABILITY_BOUND else "MISSED"
        lines.append(
            f"  {'instructions':<15} on {counted.on:8,.0f}/call  off {counted.off:8,.0f}/call  "
            f"cost {counted.cost:6.1%} (<= {OBSERVABILITY_BOUND:.0%}) {verdict:<7} gRPC, the "
            "server's user space, counted by callgrind (within ~0.5 % from run to run here)"
        )
        if counted.split:
            lines.append("where a GetContact's instructions run (on), by the file that runs them:")
            for part, count in sorted(counted.split.items(), key=lambda item: -item[1]):
                lines.append(f"  {part:<45} {count:>9,.0f}/call  {count / counted.on:6.1%}")
    return "\n".join(lines)


COMPRESSION_BOUND = 0.05  # a reply under 1 KiB is never compressed: no measurable cost


def compression_lines(rows: list[Row]) -> str:
    """REST reads with Accept-Encoding: gzip against without: req/s and server CPU per
    reply (medians of the alternated rows) and the bytes a reply takes on the wire."""
    if not rows:
        return ""
    lines = ["REST replies, gzip accepted vs not (sqlite x1, alternated):"]
    for rpc in dict.fromkeys(r["rpc"] for r in rows):
        got = {
            e: [r for r in rows if r["rpc"] == rpc and r["encoding"] == e]
            for e in ("gzip", "identity")
        }
        if not got["gzip"] or not got["identity"]:
            continue
        rps = {e: statistics.median(r["rps"] for r in found) for e, found in got.items()}
        size = {e: found[0]["bytes"] for e, found in got.items()}
        cost = 1 - rps["gzip"] / rps["identity"] if rps["identity"] else math.nan
        small = size["identity"] < 1024
        verdict = ("met" if cost <= COMPRESSION_BOUND else "MISSED") if small else ""
        bound = f"(<= {COMPRESSION_BOUND:.0%}, under 1 KiB) {verdict}" if small else "(compressed)"
        lines.append(
            f"  {rpc:<15} gzip {rps['gzip']:8,.0f} req/s  identity {rps['identity']:8,.0f} req/s  "
            f"cost {cost:6.1%} {bound:<28} bytes {size['gzip']:,} vs {size['identity']:,}"
        )
    return "\n".join(lines)


def tracing_lines(rows: list[Row]) -> str:
    """What OpenTelemetry tracing costs GetContact: req/s and the server's CPU per reply
    with it unset, at the default sampler (every trace) and at 10 %, each against unset."""
    if not rows:
        return ""
    lines = ["tracing (sqlite x1 GetContact; Envoy and the server export to a local collector):"]
    for door in (GRPC, REST):
        found = {r["tracing"]: r for r in rows if r["door"] == door}
        unset = found.get("unset")
        if unset is None:
            continue
        parts = [f"unset {unset['rps']:8,.0f} req/s {unset['cpu_us'] or 0:4.0f} µs CPU"]
        for state in ("default", "10 %"):
            row = found.get(state)
            if row is None:
                continue
            cost = 1 - row["rps"] / unset["rps"] if unset["rps"] else math.nan
            cpu = row["cpu_us"] or 0
            parts.append(f"{state} {row['rps']:8,.0f} req/s {cpu:4.0f} µs CPU (cost {cost:6.1%})")
        lines.append(f"  {door:<15} " + "  ".join(parts))
    return "\n".join(lines)
