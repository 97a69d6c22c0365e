"""The load generators: h2load (nghttp2) for gRPC, wrk for REST.

Both come from Debian (packages nghttp2-client and wrk) and are installed on
first use. Each run is timed (a warm-up, then a fixed duration) at a fixed
concurrency given by a `LoadShape`, and its output is parsed into a
`LoadResult`: requests per second, p50 and p99 latency, and how many replies
were not successes. h2load can instead send a fixed number of requests
(`LoadShape.requests`), for runs that must put a known load on a server.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# Debian package of each tool.
PACKAGES = {"h2load": "nghttp2-client", "wrk": "wrk"}


class LoadGenError(RuntimeError):
    """A load generator is missing, failed, or printed something we cannot read."""


@dataclass(frozen=True)
class LoadShape:
    """How hard and how long a row is driven."""

    h2_clients: int = 4  # h2load: HTTP/2 connections ...
    h2_streams: int = 8  # ... each with this many requests in flight
    wrk_connections: int = 32  # wrk: HTTP/1.1 connections, one request in flight each
    wrk_threads: int = 2
    duration: float = 10.0  # seconds measured
    warmup: float = 2.0  # seconds driven first and thrown away
    # h2load only: more than 0 sends exactly this many requests instead, all
    # measured (no warm-up), however long they take.
    requests: int = 0

    @property
    def in_flight(self) -> int:
        return self.h2_clients * self.h2_streams

    def describe(self) -> str:
        return (
            f"gRPC: h2load -c {self.h2_clients} -m {self.h2_streams} -t 1; "
            f"REST: wrk -c {self.wrk_connections} -t {self.wrk_threads}; {self._span()}"
        )

    def brief(self, tool: str) -> str:
        """The load `tool` (h2load or wrk) puts on, short: `h2load -c 1 -m 1, 4 s`."""
        if tool == "h2load":
            load = f"h2load -c {self.h2_clients} -m {self.h2_streams}"
        else:
            load = f"wrk -c {self.wrk_connections}"
        span = f"{self.requests:,} requests" if self.requests else f"{self.duration:g} s"
        return f"{load}, {span}"

    def _span(self) -> str:
        if self.requests:
            return f"{self.requests:,} requests, no warm-up"
        return f"{self.duration:g} s measured after {self.warmup:g} s warm-up"


@dataclass(frozen=True)
class LoadResult:
    """What one run measured."""

    tool: str
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int  # replies counted in the measured window
    errors: int  # of those, replies that were not 2xx, plus transport errors

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Installing


def ensure_tools() -> dict[str, str]:
    """The path of h2load and wrk, installing the Debian packages that are missing."""
    missing = [PACKAGES[tool] for tool in PACKAGES if shutil.which(tool) is None]
    if missing:
        print(f"installing {', '.join(missing)} with apt-get ...", flush=True)
        # The package lists may be absent or stale on a fresh machine: update
        # only when the first try fails, which keeps the common case fast.
        if not _apt_install(missing):
            _apt(["update"])
            if not _apt_install(missing):
                raise LoadGenError(
                    f"could not install {' '.join(missing)} with apt-get; install them by hand "
                    f"(apt-get install {' '.join(missing)}) and run again"
                )
    found = {tool: shutil.which(tool) for tool in PACKAGES}
    absent = [tool for tool, path in found.items() if path is None]
    if absent:
        raise LoadGenError(f"{', '.join(absent)} still not on PATH after installing")
    return {tool: str(path) for tool, path in found.items()}


def _apt(args: list[str]) -> bool:
    if shutil.which("apt-get") is None:
        raise LoadGenError(
            f"h2load and wrk are missing and there is no apt-get to install them: "
            f"install {' '.join(PACKAGES.values())} by hand"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    done = subprocess.run(["apt-get", "-q", *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        print(done.stdout[-2000:], done.stderr[-2000:], sep="\n", flush=True)
    return done.returncode == 0


def _apt_install(packages: list[str]) -> bool:
    return _apt(["install", "-y", *packages])


def versions() -> dict[str, str]:
    """The load generators' versions, for the record."""
    h2 = subprocess.run(["h2load", "--version"], capture_output=True, text=True).stdout.strip()
    # wrk has no --version; it names itself in the first line of its usage.
    usage = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    wrk = (usage.stdout or usage.stderr).strip().splitlines()[0]
    return {"h2load": h2, "wrk": wrk}


# h2load


def run_h2load(
    url: str, body: Path, headers: dict[str, str], shape: LoadShape, log_file: Path
) -> LoadResult:
    """Unary gRPC calls: POST of a pre-framed body, HTTP/2 without TLS.

    h2load counts a reply as succeeded on any HTTP status and knows nothing of
    grpc-status: the caller must check that the same request succeeds.
    """
    if shape.requests:
        span = [f"--requests={shape.requests}"]
        # However slow the server gets, a run gives up at 100 req/s or so.
        timeout = 60 + shape.requests / 100
    else:
        span = [f"--duration={shape.duration:g}", f"--warm-up-time={shape.warmup:g}"]
        timeout = shape.duration + shape.warmup + 60
    command = [
        "h2load",
        f"--clients={shape.h2_clients}",
        f"--max-concurrent-streams={shape.h2_streams}",
        "--threads=1",
        *span,
        f"--data={body}",
        f"--log-file={log_file}",
        "--header=content-type: application/grpc",
        "--header=te: trailers",
        *(f"--header={name}: {value}" for name, value in headers.items()),
        url,
    ]
    output = _run(command, timeout=timeout)
    rps = _search(r"finished in [\d.]+m?s, ([\d.]+) req/s", output, "h2load req/s")
    counts = re.search(
        r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored, (\d+) timeout",
        output,
    )
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", output)
    if counts is None or codes is None:
        raise LoadGenError(f"cannot read h2load's counts:\n{output}")
    done = int(counts[2])
    not_2xx = sum(int(n) for n in codes.groups()[1:])
    failed = sum(int(n) for n in counts.groups()[3:])
    # h2load prints only min/max/mean/sd; the per-request log (measured
    # window only: warm-up requests are not written) gives the percentiles.
    latencies = [int(line.split("\t")[2]) / 1000 for line in log_file.read_text().splitlines()]
    return LoadResult(
        tool="h2load",
        rps=rps,
        p50_ms=percentile(latencies, 50),
        p99_ms=percentile(latencies, 99),
        requests=done,
        errors=not_2xx + failed,
    )


# wrk

_WRK_SCRIPT = """\
-- Written by bench/loadgen.py: one fixed request, repeated.
wrk.method = "{method}"
{body}
{headers}
"""


def run_wrk(
    url: str,
    method: str,
    body: bytes | None,
    headers: dict[str, str],
    shape: LoadShape,
    script: Path,
) -> LoadResult:
    """REST calls over HTTP/1.1 keep-alive connections; a warm-up run is thrown away."""
    script.write_text(_wrk_script(method, body, headers))
    base = [
        "wrk",
        f"--connections={shape.wrk_connections}",
        f"--threads={shape.wrk_threads}",
        f"--script={script}",
    ]
    timeout = shape.duration + 60
    if shape.warmup > 0:
        # wrk has no warm-up option: a short run of its own, not read.
        _run([*base, f"--duration={_wrk_seconds(shape.warmup)}", url], timeout=timeout)
    output = _run([*base, "--latency", f"--duration={_wrk_seconds(shape.duration)}", url], timeout)
    requests = int(_search(r"(\d+) requests in", output, "wrk request count"))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    errors = (int(non_2xx[1]) if non_2xx else 0) + (
        sum(int(n) for n in sockets.groups()) if sockets else 0
    )
    return LoadResult(
        tool="wrk",
        rps=_search(r"Requests/sec:\s+([\d.]+)", output, "wrk req/s"),
        p50_ms=_wrk_latency(output, "50%"),
        p99_ms=_wrk_latency(output, "99%"),
        requests=requests,
        errors=errors,
    )


def _wrk_script(method: str, body: bytes | None, headers: dict[str, str]) -> str:
    def lua_string(text: str) -> str:
        # A double-quoted Lua string. (Not a long bracket: `t[[==[k]==]]`
        # would lex as the long string `[[...]]`, a silently broken header.)
        escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'

    lines = [f"wrk.headers[{lua_string(k)}] = {lua_string(v)}" for k, v in headers.items()]
    body_line = ""
    if body is not None:
        body_line = f"wrk.body = {lua_string(body.decode())}"
        lines.append('wrk.headers["Content-Type"] = "application/json"')
    return _WRK_SCRIPT.format(method=method, body=body_line, headers="\n".join(lines))


def _wrk_seconds(seconds: float) -> str:
    # wrk takes whole seconds only.
    return f"{max(1, round(seconds))}s"


_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def _wrk_latency(output: str, label: str) -> float:
    found = re.search(rf"^\s*{re.escape(label)}\s+([\d.]+)(us|ms|s|m|h)\s*$", output, re.M)
    if found is None:
        raise LoadGenError(f"no {label} latency in wrk's output:\n{output}")
    return float(found[1]) * _UNIT_MS[found[2]]


# Shared


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def _run(command: list[str], timeout: float) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise LoadGenError(
            f"{command[0]} exited with {done.returncode}:\n{done.stdout}\n{done.stderr}"
        )
    return done.stdout


def _search(pattern: str, output: str, what: str) -> float:
    found = re.search(pattern, output)
    if found is None:
        raise LoadGenError(f"cannot find {what} in the output:\n{output}")
    return float(found[1])
