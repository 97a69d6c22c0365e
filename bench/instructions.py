"""What metrics and the line per call cost, counted in instructions: the server serves
GetContact under valgrind's callgrind, once with them on and once off, and the count
per call of each is compared.

Req/s and CPU time on a shared machine move from run to run by more than the 5 %
this is bounded by; an instruction count hardly moves, whatever else the machine
does (the count with them off, in three runs here: 691k-695k a call). It counts
what the server's own process runs in user space (Python, grpc, SQLite), not the
kernel's share of a call nor what a cache miss costs: a floor beside the timed
rows, not a replacement for them.

The server runs in the process valgrind starts (`python -m bench.instructions serve`):
the app a worker runs (server.app), with the settings it would have, without the
supervisor. Only what runs between callgrind's zero and dump is counted: the calls,
and the writing of their lines (not start-up, nor a warm-up).
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from bench.calls import Call
from bench.load import h2load_requests

# Under callgrind the server runs ~50 times slower: written every 2.5 s, its batches of
# lines are as large as at full speed every 50 ms.
FLUSH_UNDER_VALGRIND = 2.5
SETTLE_SECONDS = FLUSH_UNDER_VALGRIND + 1
START_TIMEOUT = 120.0
WARMUP_CALLS = 300
CALLS = 1000


@dataclass(frozen=True)
class Count:
    on: float  # instructions per call with metrics and the line per call
    off: float
    # Where the "on" call's instructions run, per call, by what runs them (where()).
    split: dict[str, float] = field(default_factory=dict)

    @property
    def cost(self) -> float:
        return self.on / self.off - 1


def available() -> bool:
    return shutil.which("valgrind") is not None and shutil.which("callgrind_control") is not None


def count(
    on: dict[str, str], off: dict[str, str], call: Call, headers: dict[str, str], workdir: Path
) -> Count:
    """Instructions per `call` over gRPC with the settings of `on` (metrics written to
    files, as a worker's are) and of `off`."""
    body = workdir / "instructions.grpc"
    body.write_bytes(call.framed())
    counted_on = _per_call("on", on, call, body, headers, workdir)
    split = where(_dump(workdir, "on"))
    return Count(
        on=counted_on,
        off=_per_call("off", off, call, body, headers, workdir),
        split={part: total / CALLS for part, total in split.items()},
    )


# What runs a call's instructions, by the file they are in: the interpreter runs
# every line of Python (ours, grpc.aio's, grpc-interceptor's, peewee's); the
# others are C.
PARTS = (
    ("grpc core and its Cython (cygrpc)", "cygrpc"),
    ("protobuf (upb)", "_message"),
    ("SQLite", "sqlite"),
    ("uvloop and libuv", "uvloop"),
    ("the C library", "libc"),
    ("the Python interpreter (all Python code)", "python"),
)


def where(dump: Path) -> dict[str, float]:
    """Instructions of a callgrind dump by the object file that ran them (self cost)."""
    names: dict[str, str] = {}
    totals: dict[str, float] = {}
    current = ""
    after_call = False
    for line in dump.read_text(errors="replace").splitlines():
        if line.startswith(("ob=", "cob=")):  # a file's name is given at its first mention
            key, _, name = line.partition("=")[2].partition(" ")
            if name:
                names[key] = name
            if line.startswith("ob="):
                current = names.get(key, key)
        elif line.startswith("calls="):
            after_call = True
            continue
        elif line[:1].isdigit() or line[:1] in "+-*":
            if after_call:  # the inclusive cost of the call just named: not this one's
                after_call = False
                continue
            words = line.split()
            if len(words) < 2:  # a position alone: no cost
                continue
            part = next((label for label, key in PARTS if key in current), "other")
            totals[part] = totals.get(part, 0.0) + int(words[-1])
        after_call = False
    return totals


def _dump(workdir: Path, label: str) -> Path:
    dumps = [p for p in workdir.glob(f"callgrind-{label}.out.*") if p.suffix[1:].isdigit()]
    if len(dumps) != 1:
        raise RuntimeError(f"callgrind wrote {len(dumps)} dumps, not 1, in {workdir}")
    return dumps[0]


def _per_call(
    label: str,
    env: dict[str, str],
    call: Call,
    body: Path,
    headers: dict[str, str],
    workdir: Path,
) -> float:
    out = workdir / f"callgrind-{label}.out"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CONTACTS_")} | env
    environment |= {"CONTACTS_GRPC_PORT": "0", "CONTACTS_PROXY_PORT": "0"}
    if env.get("CONTACTS_METRICS_PORT") != "0":
        metrics_dir = workdir / f"metrics-{label}"
        metrics_dir.mkdir(exist_ok=True)
        environment["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    command = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        f"--log-file={workdir / f'valgrind-{label}.log'}",
        sys.executable,
        "-m",
        "bench.instructions",
        "serve",
    ]
    log = workdir / f"server-{label}.log"
    with open(log, "w") as stderr:
        server = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=stderr, env=environment, text=True
        )
    try:
        port = _port(server, log)
        url = f"http://127.0.0.1:{port}{call.grpc_path}"
        h2load_requests(url, body, headers, WARMUP_CALLS)
        _check(port, call, headers)
        time.sleep(SETTLE_SECONDS)  # the warm-up's lines and figures flushed before the zero
        _control("--zero", server.pid)
        h2load_requests(url, body, headers, CALLS)
        time.sleep(SETTLE_SECONDS)  # and the measured calls' flushed before the dump
        _control("--dump", server.pid)
        _check(port, call, headers)
    finally:
        # Killed: the count is dumped already, and a graceful stop under valgrind
        # sometimes took minutes.
        server.kill()
        server.wait()
        if server.stdout is not None:
            server.stdout.close()
    dump = _dump(workdir, label)
    for line in dump.read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1]) / CALLS
    raise RuntimeError(f"no instruction count in {dump}")


def _port(server: subprocess.Popen[str], log: Path) -> int:
    """The gRPC port the server prints once it serves (start-up under valgrind: ~10 s)."""
    assert server.stdout is not None
    ready, _, _ = select.select([server.stdout], [], [], START_TIMEOUT)
    line = server.stdout.readline() if ready else ""
    if not line.strip().isdigit():
        raise RuntimeError(f"the server under valgrind did not start: see {log}")
    return int(line)


def _check(port: int, call: Call, headers: dict[str, str]) -> None:
    """The call succeeds (h2load counts any HTTP 200, and gRPC errors are 200s too)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        channel.unary_unary(call.grpc_path)(call.request, metadata=tuple(headers.items()))


def _control(option: str, pid: int) -> None:
    subprocess.run(["callgrind_control", option, str(pid)], check=True, capture_output=True)


def serve() -> None:
    """The app a worker runs, until SIGTERM; prints its gRPC port when it serves."""
    from server.data.store import Store
    from server.observability import logs
    from server.rpc.app import App
    from server.settings import Settings

    logs.FLUSH_EVERY = FLUSH_UNDER_VALGRIND
    settings = Settings.from_env()
    logs.configure(settings.log_format, settings.log_level)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    store = Store.open(settings.database_url, max_connections=settings.threads)
    # The database probe (every second) would be counted too, the more of it the
    # longer a state's calls take under valgrind: once an hour, it is not.
    app = App(settings, store, probe_interval=3600)
    app.start()
    print(app.port, flush=True)
    stopped.wait()
    app.stop(1)
    store.close()


# Alone (`python -m bench.instructions count`): each switched off in turn.
STATES = {
    "on": {},
    "lines-off": {"CONTACTS_LOG_LEVEL": "warning"},
    "metrics-off": {"CONTACTS_METRICS_PORT": "0"},
    "off": {"CONTACTS_LOG_LEVEL": "warning", "CONTACTS_METRICS_PORT": "0"},
}


def count_alone(states: list[str], log_format: str, workdir: Path) -> dict[str, float]:
    """Instructions per GetContact (over gRPC, with a token, as the bench sends it) on a
    SQLite database of its own in `workdir`, for each of `states`."""
    import secrets
    import uuid

    from bench.calls import get_contact
    from server.auth.tokens import Tokens
    from server.data.pages import ContactPage
    from server.data.store import Store

    url = f"sqlite:///{workdir / 'contacts.db'}"
    store = Store.open(url, max_connections=1)
    company = uuid.UUID(store.create_company("Counted", owner_id="bench").id)
    store.seed_contacts(company, 10)
    contact = store.list_contacts(ContactPage(company, limit=10))[5].id
    store.close()
    secret = secrets.token_urlsafe(48)
    headers = {"authorization": f"Bearer {Tokens(secret).issue('bench')}"}
    env = {
        "CONTACTS_DATABASE_URL": url,
        "CONTACTS_JWT_SECRET": secret,
        "CONTACTS_RATE_LIMIT_CREATE": "0",
        "CONTACTS_RATE_LIMIT_DEFAULT": "0",
        "CONTACTS_LOG_FORMAT": log_format,
    }
    call = get_contact(str(contact))
    body = workdir / "instructions.grpc"
    body.write_bytes(call.framed())
    return {
        state: _per_call(state, env | STATES[state], call, body, headers, workdir)
        for state in states
    }


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="the server valgrind runs (started by count)")
    counting = commands.add_parser("count", help="instructions per GetContact, alone")
    counting.add_argument("--states", default="on,off", help=f"of {', '.join(STATES)}")
    counting.add_argument("--log-format", default="text", choices=("text", "json"))
    counting.add_argument(
        "--keep",
        type=Path,
        help="a new directory to keep callgrind's files in (callgrind_annotate)",
    )
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve()
        return 0
    if not available():
        sys.exit("valgrind (callgrind) is not installed")
    states = args.states.split(",")
    with contextlib.ExitStack() as cleanup:
        if args.keep is None:
            workdir = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="counted-")))
        else:
            workdir = args.keep
            workdir.mkdir(parents=True)
        for state, per_call in count_alone(states, args.log_format, workdir).items():
            print(f"{state:<12} {per_call:10,.0f} instructions per GetContact", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
