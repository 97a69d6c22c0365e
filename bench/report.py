"""The results as a table and as the spec's targets, each marked met or missed.

Ratios compare requests per second with the baseline's GetContact over the
same transport (gRPC rows with baseline gRPC, REST rows with the baseline
behind Envoy). The targets are made by `targets()` below, each saying exactly
which two numbers it divides or subtracts.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Row = dict[str, Any]
Rule = Callable[[list[Row]], float | None]  # computes a target's value from the rows

GRPC, REST = "gRPC", "REST via Envoy"


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


def _envoy_added_p50(baseline: str) -> Rule:
    def value(rows: list[Row]) -> float | None:
        rest, grpc = (
            find(rows, baseline, "GetContact", REST),
            find(rows, baseline, "GetContact", GRPC),
        )
        return rest["p50_ms"] - grpc["p50_ms"] if rest and grpc else None

    return value


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
        Target(
            "Envoy added p50",
            f"{baseline} GetContact p50: REST via Envoy (wrk) - gRPC direct (h2load), same load",
            _envoy_added_p50(baseline),
            0.3,
            at_least=False,
            unit=" ms",
        ),
    ]


# Printing


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def table(rows: list[Row], header: str) -> str:
    columns = f"{'service':<10} {'rpc':<14} {'transport':<15} {'req/s':>9} {'p50 ms':>8} "
    columns += f"{'p99 ms':>8} {'errors':>7} {'vs baseline':>11}"
    lines = [header, "", columns, "-" * len(columns)]
    for row in rows:
        lines.append(
            f"{row['service']:<10} {row['rpc']:<14} {row['transport']:<15} "
            f"{_num(row['rps'], 1):>9} {_num(row['p50_ms'], 2):>8} {_num(row['p99_ms'], 2):>8} "
            f"{row['errors']:>7} {_num(row.get('ratio'), 2):>11}"
        )
    return "\n".join(lines)


def target_lines(results: list[dict[str, Any]]) -> str:
    lines = ["targets:"]
    for t in results:
        verdict = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
        value = _num(t["value"], 2) + t["unit"]
        bound = f"{t['comparison']} {t['bound']:.2f}{t['unit']}"
        lines.append(
            f"  {t['name']:<20} {value:>9}  (target {bound:>10})  {verdict:<7} {t['definition']}"
        )
    return "\n".join(lines)


def rss_line(name: str, rss: dict[str, int | None]) -> str:
    def mib(kb: int | None) -> str:
        return "-" if kb is None else f"{kb / 1024:.1f} MiB"

    return f"{name} server RSS: " + ", ".join(f"{when} {mib(kb)}" for when, kb in rss.items())
