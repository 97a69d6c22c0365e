"""The load generators: h2load for gRPC, wrk for REST; run at a fixed concurrency for a
warm-up and then a measured span, their output read into a `Result`.

Both are installed by `make bench` (Debian packages nghttp2-client and wrk).
"""

from __future__ import annotations

import math
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path


class LoadError(RuntimeError):
    """A load generator failed or printed something we cannot read."""


@dataclass(frozen=True)
class Load:
    """How hard and how long a row is driven."""

    connections: int = 16  # h2load: HTTP/2 connections ...
    streams: int = 2  # ... each with this many requests in flight
    wrk_connections: int = 32  # wrk: HTTP/1.1, one request in flight each
    duration: float = 5.0  # seconds measured
    warmup: float = 1.0  # seconds driven first, not measured

    def describe(self) -> str:
        return (
            f"gRPC: h2load -c {self.connections} -m {self.streams} -t 1; "
            f"REST: wrk -c {self.wrk_connections} -t 2; "
            f"{self.duration:g} s measured after {self.warmup:g} s of warm-up"
        )


@dataclass(frozen=True)
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int  # replies in the measured span
    errors: int  # of those, not 2xx, plus transport errors


def h2load(url: str, body: Path, headers: dict[str, str], load: Load, log: Path) -> Result:
    """Unary gRPC calls: POSTs of a framed body over HTTP/2 without TLS.

    h2load takes any HTTP 200 for a success and knows nothing of grpc-status:
    the caller checks that this very request succeeds.
    """
    command = [
        "h2load",
        f"--clients={load.connections}",
        f"--max-concurrent-streams={load.streams}",
        "--threads=1",
        f"--duration={load.duration:g}",
        f"--warm-up-time={load.warmup:g}",
        f"--log-file={log}",
        *_grpc_options(url, body, headers),
    ]
    log.unlink(missing_ok=True)  # h2load appends
    output = _run(command, load.duration + load.warmup + 60)
    counts, codes = _h2load_counts(output)
    # h2load prints no percentiles; its per-request log of the measured span
    # (start, status, microseconds) gives them.
    latencies = sorted(int(line.split("\t")[2]) / 1000 for line in log.read_text().splitlines())
    return Result(
        rps=float(_find(r"finished in [\d.]+m?s, ([\d.]+) req/s", output)[0]),
        p50_ms=percentile(latencies, 50),
        p99_ms=percentile(latencies, 99),
        requests=int(counts[0]),
        errors=sum(int(n) for n in counts[1:] + codes),
    )


def h2load_requests(url: str, body: Path, headers: dict[str, str], requests: int) -> None:
    """Exactly `requests` unary gRPC calls, 16 in flight; LoadError if one was not a 200."""
    command = ["h2load", f"--requests={requests}", "--clients=4", "--max-concurrent-streams=4"]
    output = _run([*command, *_grpc_options(url, body, headers)], 600)
    counts, codes = _h2load_counts(output)
    if int(counts[0]) != requests or any(int(n) for n in counts[1:] + codes):
        raise LoadError(f"not every request of {requests} succeeded:\n{output}")


def _grpc_options(url: str, body: Path, headers: dict[str, str]) -> list[str]:
    return [
        f"--data={body}",
        "--header=content-type: application/grpc",
        "--header=te: trailers",
        *(f"--header={name}: {value}" for name, value in headers.items()),
        url,
    ]


def _h2load_counts(output: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(done, failed, errored, timeout) and the (3xx, 4xx, 5xx) status counts."""
    counts = _find(
        r"requests: \d+ total, \d+ started, (\d+) done, \d+ succeeded, (\d+) failed, "
        r"(\d+) errored, (\d+) timeout",
        output,
    )
    codes = _find(r"status codes: \d+ 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", output)
    return counts, codes


def wrk(
    url: str, method: str, body: bytes | None, headers: dict[str, str], load: Load, script: Path
) -> Result:
    """REST over HTTP/1.1 keep-alive connections; wrk has no warm-up, so a short run first."""
    lines = [f"wrk.method = {_lua(method)}"]
    if body is not None:
        lines.append(f"wrk.body = {_lua(body.decode())}")
        headers = {**headers, "Content-Type": "application/json"}
    lines += [f"wrk.headers[{_lua(k)}] = {_lua(v)}" for k, v in headers.items()]
    script.write_text("\n".join(lines) + "\n")
    base = ["wrk", f"--connections={load.wrk_connections}", "--threads=2", f"--script={script}"]
    _run([*base, f"--duration={max(1, round(load.warmup))}s", url], load.warmup + 60)
    output = _run(
        [*base, "--latency", f"--duration={max(1, round(load.duration))}s", url], load.duration + 60
    )
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    return Result(
        rps=float(_find(r"Requests/sec:\s+([\d.]+)", output)[0]),
        p50_ms=_wrk_latency(output, "50%"),
        p99_ms=_wrk_latency(output, "99%"),
        requests=int(_find(r"(\d+) requests in", output)[0]),
        errors=(int(non_2xx[1]) if non_2xx else 0)
        + (sum(int(n) for n in sockets.groups()) if sockets else 0),
    )


def _lua(text: str) -> str:
    """A double-quoted Lua string (a long bracket would end early on `]]`)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _wrk_latency(output: str, label: str) -> float:
    value, unit = _find(rf"^\s*{re.escape(label)}\s+([\d.]+)(us|ms|s|m)\s*$", output, re.M)
    return float(value) * _UNIT_MS[unit]


def percentile(ordered: list[float], pct: float) -> float:
    """Nearest rank of sorted values; NaN for none."""
    if not ordered:
        return math.nan
    return ordered[max(1, math.ceil(pct / 100 * len(ordered))) - 1]


def _run(command: list[str], timeout: float) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise LoadError(f"{command[0]} exited with {done.returncode}:\n{done.stdout}{done.stderr}")
    return done.stdout


def _find(pattern: str, output: str, flags: int = 0) -> tuple[str, ...]:
    found = re.search(pattern, output, flags)
    if found is None:
        raise LoadError(f"no /{pattern}/ in the output:\n{output}")
    return found.groups()
