"""The results as tables and as the spec's targets, each marked met or missed.

Ratios compare requests per second with the baseline's GetContact over the
same transport (gRPC rows with baseline gRPC, REST rows with the baseline
behind Envoy); in the scale table, with the same call at the smaller size.
The targets are made by `targets()` and `scale_targets()` below, each saying
exactly which two numbers it divides or subtracts. The rest is printing:
memory, the query plan, how two scenarios compare.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Row = dict[str, Any]
Rule = Callable[[list[Row]], float | None]  # computes a target's value from the rows

GRPC, REST = "gRPC", "REST via Envoy"
GRPC_ENVOY = "gRPC via Envoy"  # native gRPC sent to Envoy's port, passed on as it is


def find(rows: list[Row], service: str, rpc: str, transport: str) -> Row | None:
    for row in rows:
        if (row["service"], row["rpc"], row["transport"]) == (service, rpc, transport):
            return row
    return None


def add_ratios(rows: list[Row], baseline: str) -> None:
    """Sets each row's `ratio`: its req/s over the baseline GetContact's, same transport."""
    for row in rows:
        base = find(rows, baseline, "GetContact", row["transport"])
        row["ratio"] = row["rps"] / base["rps"] if base and base["rps"] else None


def add_scale_ratios(rows: list[Row], small: str) -> None:
    """Sets each row's `ratio`: its req/s over the same call's at the `small` size."""
    for row in rows:
        base = find(rows, small, row["rpc"], row["transport"])
        row["ratio"] = row["rps"] / base["rps"] if base and base["rps"] else None


def side_by_side(rows: list[Row]) -> list[Row]:
    """The rows grouped by call and transport, in the order each first appears, so that
    the services measured on one call stand next to each other."""
    groups: dict[tuple[str, str], list[Row]] = {}
    for row in rows:
        groups.setdefault((row["rpc"], row["transport"]), []).append(row)
    return [row for group in groups.values() for row in group]


@dataclass(frozen=True)
class Target:
    """One line of the spec: a value computed from the rows, compared with a bound."""

    name: str
    definition: str
    value: Rule
    bound: float
    at_least: bool  # True: value >= bound; False: value <= bound
    unit: str = ""

    def evaluate(self, rows: list[Row]) -> dict[str, Any]:
        value = self.value(rows)
        met = None
        if value is not None and not math.isnan(value):
            met = value >= self.bound if self.at_least else value <= self.bound
        return {
            "name": self.name,
            "definition": self.definition,
            "value": value,
            "bound": self.bound,
            "comparison": ">=" if self.at_least else "<=",
            "unit": self.unit,
            "met": met,
        }


def _rps_ratio(service: str, rpc: str, transport: str, baseline: str, base_transport: str) -> Rule:
    def value(rows: list[Row]) -> float | None:
        row, base = (
            find(rows, service, rpc, transport),
            find(rows, baseline, "GetContact", base_transport),
        )
        return row["rps"] / base["rps"] if row and base and base["rps"] else None

    return value


def _added_p50(baseline: str, via: str) -> Rule:
    """p50 over `via` minus p50 of direct gRPC, for the baseline's GetContact."""

    def value(rows: list[Row]) -> float | None:
        through, direct = (
            find(rows, baseline, "GetContact", via),
            find(rows, baseline, "GetContact", GRPC),
        )
        return through["p50_ms"] - direct["p50_ms"] if through and direct else None

    return value


def envoy_target(quiet: str) -> Target:
    """Envoy's own cost: the same client and protocol (h2load, gRPC) with and without
    Envoy in the path, at 1 request in flight so that no queue is measured."""
    return Target(
        "Envoy added p50",
        f"{quiet} GetContact p50: gRPC via Envoy - gRPC direct (h2load, 1 request in flight)",
        _added_p50(quiet, GRPC_ENVOY),
        0.3,
        at_least=False,
        unit=" ms",
    )


def targets(service: str, baseline: str) -> list[Target]:
    """The spec's performance targets for `service` measured against `baseline`."""
    return [
        Target(
            "GetContact gRPC",
            f"{service} GetContact gRPC req/s / {baseline} GetContact gRPC req/s",
            _rps_ratio(service, "GetContact", GRPC, baseline, GRPC),
            0.6,
            at_least=True,
        ),
        Target(
            "GetContact REST",
            f"{service} GetContact REST-via-Envoy req/s / {baseline} GetContact gRPC (direct) "
            "req/s",
            _rps_ratio(service, "GetContact", REST, baseline, GRPC),
            0.5,
            at_least=True,
        ),
        Target(
            "CreateContact gRPC",
            f"{service} CreateContact gRPC req/s / {baseline} GetContact gRPC req/s",
            _rps_ratio(service, "CreateContact", GRPC, baseline, GRPC),
            0.3,
            at_least=True,
        ),
    ]


def _slowdown(rpc: str, transport: str, small: str, large: str) -> Rule:
    def value(rows: list[Row]) -> float | None:
        fast, slow = find(rows, small, rpc, transport), find(rows, large, rpc, transport)
        return fast["rps"] / slow["rps"] if fast and slow and slow["rps"] else None

    return value


def scale_targets(small: str, large: str) -> list[Target]:
    """Reads by id and the first page cost about the same however many rows there are."""
    calls = [
        ("GetContact", GRPC),
        ("GetContact", REST),
        ("ListContacts", GRPC),
    ]
    return [
        Target(
            f"{rpc} {transport.split()[0]}",
            f"{small} {rpc} {transport} req/s / {large} {rpc} {transport} req/s "
            f"(times slower at {large})",
            _slowdown(rpc, transport, small, large),
            2.0,
            at_least=False,
            unit="x",
        )
        for rpc, transport in calls
    ]


# Printing


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def table(rows: list[Row], header: str, ratio: str = "vs baseline") -> str:
    """One line per row; `ratio` heads the column of each row's `ratio`."""
    columns = f"{'service':<11} {'rpc':<17} {'transport':<15} {'req/s':>9} {'p50 ms':>8} "
    columns += f"{'p99 ms':>8} {'errors':>7} {ratio:>11}  note"
    lines = [header, "", columns, "-" * (len(columns) + 20)]
    for row in rows:
        lines.append(
            f"{row['service']:<11} {row['rpc']:<17} {row['transport']:<15} "
            f"{_num(row['rps'], 1):>9} {_num(row['p50_ms'], 2):>8} {_num(row['p99_ms'], 2):>8} "
            f"{row['errors']:>7} {_num(row.get('ratio'), 2):>11}  {row.get('note', '')}".rstrip()
        )
    return "\n".join(lines)


def target_lines(results: list[dict[str, Any]], title: str = "targets:") -> str:
    lines = [title]
    for t in results:
        verdict = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
        value = _num(t["value"], 2) + t["unit"]
        bound = f"{t['comparison']} {t['bound']:.2f}{t['unit']}"
        lines.append(
            f"  {t['name']:<24} {value:>9}  (target {bound:>10})  {verdict:<7} {t['definition']}"
        )
    return "\n".join(lines)


def comparison_lines(rows: list[Row], service: str, other: str) -> list[str]:
    """`service` req/s over `other`'s, for each call and transport both were measured on."""
    lines = []
    for row in rows:
        if row["service"] != service:
            continue
        base = find(rows, other, row["rpc"], row["transport"])
        if base and base["rps"]:
            lines.append(
                f"  {row['rpc']:<17} {row['transport']:<15} {row['rps'] / base['rps']:5.2f}x  "
                f"({row['rps']:.1f} / {base['rps']:.1f} req/s; "
                f"p50 {row['p50_ms']:.2f} vs {base['p50_ms']:.2f} ms)"
            )
    return lines


def mib(kb: int | None) -> str:
    return "-" if kb is None else f"{kb / 1024:.1f} MiB"


def rss_line(name: str, rss: dict[str, int], processes: int = 1) -> str:
    """The memory readings of one server, each with its growth since the one before."""
    parts, previous = [], None
    for when, kb in rss.items():
        growth = "" if previous is None else f" ({(kb - previous) / 1024:+.1f})"
        parts.append(f"{when} {mib(kb)}{growth}")
        previous = kb
    who = f"{name} ({processes} processes, summed)" if processes > 1 else name
    return f"  {who:<34} " + ", ".join(parts)


def plan_lines(name: str, plan: dict[str, Any]) -> list[str]:
    """A query plan (`scale.QueryPlan.to_dict()`) and the time of the query, run once."""
    skip = plan["params"][2]
    lines = [f"  {name}: the page at skip={skip:,} (limit {plan['params'][1]}):"]
    lines += [f"    {step}" for step in plan["plan"]]
    lines.append(f"    run once in sqlite3: {plan['ms']:.1f} ms, {plan['rows']} rows")
    return lines
