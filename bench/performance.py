"""docs/performance.md's numbers, rendered from bench/results.json: what `make bench`
printed, written between two markers of the page, so that no number there is typed
by hand. `make bench` renders it after every run; by hand:

    python -m bench.performance [--results bench/results.json] [--doc docs/performance.md]
                                [--check]

`--check` changes nothing and fails when the page is not what the results render to.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bench import identity, report
from bench.instructions import Count
from bench.load import Load

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results.json"
DOC = ROOT / "docs" / "performance.md"
BEGIN = "<!-- measured: rendered by `make bench` from bench/results.json; do not edit -->"
END = "<!-- /measured -->"


def section(results: dict[str, Any] | None) -> str:
    """The page's measured part: the run's conditions, then its table, targets and
    notes exactly as the bench printed them."""
    if results is None:
        body = "No run is recorded here yet: `make bench` writes one."
        return f"{BEGIN}\n\n{body}\n\n{END}"
    machine = results["machine"]
    rows = results["rows"]
    counted = Count(**results["instructions"]) if results.get("instructions") else None
    conditions = (
        f"The last run: {results['when']}, {results['seconds']:g} s in all, on "
        f"{machine['cpus']} CPUs ({machine['platform']}; {machine['cpu_busy']:.0f} % busy "
        f"as it began). {results['contacts']:,} contacts seeded in one company; auth on, "
        f"rate limits off; {Load(**results['load']).describe()}."
    )
    printed = [
        report.table(rows),
        *(f"!! {backend}: SKIPPED (no server)" for backend in results["skipped"]),
        "",
        report.target_lines(results["targets"]),
        report.info_lines(
            results["unloaded"], results["memory_mib"], results.get("ceiling", []), rows
        ),
        report.observability_lines(results["observability"], counted),
        *([report.compression_lines(results["compression"])] if results.get("compression") else []),
        *identity.lines(results.get("identity") or []),
        *([report.tracing_lines(results["tracing"])] if results.get("tracing") else []),
    ]
    return "\n".join([BEGIN, "", conditions, "", "```text", *printed, "```", "", END])


def rendered(doc: str, results: dict[str, Any] | None) -> str:
    """The page with its measured part rendered from `results` (None: no run yet)."""
    before, begin, rest = doc.partition(BEGIN)
    _, end, after = rest.partition(END)
    if not begin or not end:
        raise ValueError(f"the page has no {BEGIN!r} ... {END!r} part to render")
    return before + section(results) + after


def load(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def write(results: dict[str, Any] | None, doc: Path = DOC) -> None:
    doc.write_text(rendered(doc.read_text(), results))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.performance", description=__doc__)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--doc", type=Path, default=DOC)
    parser.add_argument("--check", action="store_true", help="fail if the page is stale")
    args = parser.parse_args(argv)
    results = load(args.results)
    if args.check:
        if rendered(args.doc.read_text(), results) != args.doc.read_text():
            print(f"{args.doc} is not what {args.results} renders to: run this without --check")
            return 1
        return 0
    write(results, args.doc)
    print(f"{args.doc}: rendered from {args.results if results else 'no results'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
