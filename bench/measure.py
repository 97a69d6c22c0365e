"""Measuring one scenario: start a server behind Envoy, prepare it, drive each call, read
its memory.

`measure_service` is the whole of a scenario. A `Step` is one call and the
transports it is driven over (gRPC with h2load, REST through Envoy with wrk);
its rows carry req/s, latency, errors and a note saying what was unusual
about them (a lighter load, a page deep in the list, how the work was split
between worker processes). Memory is each server process's VmRSS, summed
over the workers of a multi-process server.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import procfs, report
from bench.api import Grpc, Rest, check_grpc, check_rest, count_contacts
from bench.loadgen import LoadShape, run_h2load, run_wrk
from bench.processes import ServerSpec, Stack
from bench.workload import Call, grpc_frame

Row = dict[str, Any]


@dataclass(frozen=True)
class Step:
    """One call to measure, over which transports, and at which load if not the run's."""

    call: Call
    shape: LoadShape | None = None
    transports: tuple[str, ...] = (report.GRPC, report.REST)


# prepare(rest) readies a freshly started server (seeds it, looks an id up)
# and returns the steps to measure.
Prepare = Callable[[Rest], list[Step]]


@dataclass
class Session:
    """A running stack, the clients that check its replies, and the run's load."""

    stack: Stack
    token: str
    shape: LoadShape
    rest: Rest
    grpc: Grpc

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"}

    def files(self, call: Call, suffix: str) -> Path:
        return self.stack.workdir / f"{call.name.replace(' ', '-')}.{suffix}"


def measure_service(
    spec: ServerSpec,
    prepare: Prepare,
    shape: LoadShape,
    token: str,
    workdir: Path,
    soak: LoadShape | None = None,
    seeds_at_start: bool = True,
) -> dict[str, Any]:
    """Starts `spec` behind Envoy, prepares it, measures each step's call over its transports.

    `soak` (requests > 0): before the steps, the first step's call is sent
    that many times over gRPC, twice, with the server's memory read after
    each round. `seeds_at_start`: prepare seeds the server, so its memory is
    read after that too.

    Returns {"service", "seconds", "rss_kb": {when: kB}, "rss_kb_by_process",
    "prepare_seconds", "rows": [...], "soak_rows": [...]}; the processes are
    stopped before it returns, whatever happens.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"== {spec.name}: starting", flush=True)
    began = time.monotonic()
    with Stack(spec, workdir) as stack:
        memory = Memory(stack.server.pid)
        memory.read("at start")
        session = Session(
            stack, token, shape, Rest(stack.http_port, token), Grpc(stack.grpc_port, token)
        )
        try:
            started = time.monotonic()
            steps = prepare(session.rest)
            prepared = time.monotonic() - started
            if seeds_at_start:
                memory.read("after seeding")
            soak_rows = soak_server(session, steps[0].call, soak, memory) if soak else []
            rows = [row for step in steps for row in measure_step(session, step)]
            memory.read("after the runs")
        finally:
            session.rest.close()
            session.grpc.close()
    for row in rows + soak_rows:
        row["service"] = spec.name
    seconds = time.monotonic() - began
    print(f"   {spec.name} done in {seconds:.0f} s", flush=True)
    return {
        "service": spec.name,
        "seconds": seconds,
        "rss_kb": memory.total,
        "rss_kb_by_process": memory.by_process,
        "prepare_seconds": prepared,
        "rows": rows,
        "soak_rows": soak_rows,
    }


class Memory:
    """The VmRSS of a server, read at named moments: each process's, and their sum."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.total: dict[str, int] = {}
        self.by_process: dict[str, dict[int, int]] = {}

    def read(self, when: str) -> None:
        sizes = procfs.rss_by_process(self.pid)
        self.by_process[when] = sizes
        self.total[when] = sum(sizes.values())


def soak_server(session: Session, call: Call, shape: LoadShape, memory: Memory) -> list[Row]:
    """Two rounds of `shape.requests` calls, the memory read after each: does the
    server's memory grow with the requests it has served, and does it level off?

    The calls are native gRPC through Envoy's port: the server answers Envoy's
    few multiplexed connections some 25% faster than h2load's own, which saves
    half a minute of the run, and it serves the very same calls.
    """
    rows = []
    for done in (shape.requests, 2 * shape.requests):
        row = measure_grpc_via_envoy(session, call, shape)
        row["note"] = shape.brief(row["tool"])
        rows.append(row)
        memory.read(f"after {done:,} {call.name}")
        print(f"   {_progress(row)}  ({done:,} so far)", flush=True)
        session.stack.check_alive()
    return rows


def measure_step(session: Session, step: Step) -> list[Row]:
    """The step's call over each of its transports, one row each."""
    shape = step.shape or session.shape
    rows = []
    for transport in step.transports:
        workers = WorkerCpu(session.stack)
        row = MEASURES[transport](session, step.call, shape)
        notes = [step.call.note]
        if step.shape is not None:
            notes.append(shape.brief(row["tool"]))
        split = workers.split()
        if split:
            row["worker_cpu_share"] = split
            notes.append("worker CPU " + "/".join(f"{share:.0%}" for share in split))
        row["note"] = "; ".join(note for note in notes if note)
        rows.append(row)
        print(f"   {_progress(row)}", flush=True)
        session.stack.check_alive()
    return rows


class WorkerCpu:
    """How a run's work was shared among the worker processes of a multi-process server.

    With SO_REUSEPORT the kernel gives each new connection to one worker,
    by a hash of its addresses and ports: a few long-lived connections (h2load's
    clients, Envoy's upstream connections) may well land unevenly, and the
    CPU time each worker used says how unevenly.
    """

    def __init__(self, stack: Stack) -> None:
        self._pids = procfs.children(stack.server.pid) if stack.spec.workers > 1 else []
        self._before = {pid: procfs.cpu_seconds(pid) for pid in self._pids}

    def split(self) -> list[float]:
        """Each worker's share of the CPU time used since this was made; [] for one process."""
        used = [procfs.cpu_seconds(pid) - self._before[pid] for pid in self._pids]
        total = sum(used)
        return [round(u / total, 3) for u in used] if total > 0 else []


def measure_grpc(session: Session, call: Call, shape: LoadShape) -> Row:
    """h2load straight at the server's gRPC port."""
    return _h2load(session, call, shape, session.stack.grpc_port, report.GRPC)


def measure_grpc_via_envoy(session: Session, call: Call, shape: LoadShape) -> Row:
    """h2load at Envoy's port: native gRPC, which Envoy passes on to the server."""
    return _h2load(session, call, shape, session.stack.http_port, report.GRPC_ENVOY)


def _h2load(session: Session, call: Call, shape: LoadShape, port: int, transport: str) -> Row:
    # h2load takes any HTTP 200 as success: prove first that this very body
    # gets grpc-status 0 and the reply it should.
    check_grpc(session.grpc, call)
    body = session.files(call, "grpc")
    body.write_bytes(grpc_frame(call.grpc_request))
    before = count_contacts(session.rest, call.creates_in) if call.creates_in else None
    result = run_h2load(
        f"http://127.0.0.1:{port}{call.grpc_path}",
        body,
        session.headers,
        shape,
        session.files(call, "h2load.log"),
    ).to_dict()
    if before is not None and call.creates_in:
        # Every successful create adds a row, and the warm-up adds some more:
        # fewer new rows than measured replies means some calls failed.
        created = count_contacts(session.rest, call.creates_in) - before
        result["rows_created"] = created
        result["errors"] = max(result["errors"], result["requests"] - created)
    check_grpc(session.grpc, call)  # and the server still answers it after the load
    return {"rpc": call.name, "transport": transport, "load": shape.brief("h2load"), **result}


def measure_rest(session: Session, call: Call, shape: LoadShape) -> Row:
    """wrk at Envoy's port: JSON in, the transcoder, gRPC to the server, JSON out."""
    check_rest(session.rest, call)
    result = run_wrk(
        f"http://127.0.0.1:{session.stack.http_port}{call.rest_path}",
        call.rest_method,
        call.rest_body,
        session.headers,
        shape,
        session.files(call, "wrk.lua"),
    ).to_dict()
    return {"rpc": call.name, "transport": report.REST, "load": shape.brief("wrk"), **result}


MEASURES: dict[str, Callable[[Session, Call, LoadShape], Row]] = {
    report.GRPC: measure_grpc,
    report.GRPC_ENVOY: measure_grpc_via_envoy,
    report.REST: measure_rest,
}


def _progress(row: Row) -> str:
    return (
        f"{row['rpc']:<17} {row['transport']:<15} {row['rps']:9.1f} req/s  "
        f"p50 {row['p50_ms']:.2f} ms  p99 {row['p99_ms']:.2f} ms  errors {row['errors']}"
    )
