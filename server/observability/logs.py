"""The service's log: every line in one format, readable text or one JSON object per line,
naming the request id of the call it is about; grpc's tracebacks about clients that went
away are kept out (a client could write them at will)."""

from __future__ import annotations

import asyncio
import atexit
import functools
import json
import logging
import re
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from grpc._cython.cygrpc import ExecuteBatchError

from server.call import current as current_call

_make_record = logging.getLogRecordFactory()


def _record_with_request_id(*args: Any, **kwargs: Any) -> logging.LogRecord:
    record = _make_record(*args, **kwargs)
    call = current_call()  # every line logged while serving a call names its id
    record.request_id = None if call is None else call.request_id
    return record


logging.setLogRecordFactory(_record_with_request_id)

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


_LEVEL_NAMES = {level: logging.getLevelName(level) for level in LEVELS.values()}

# A stamp's ends, made once (the last for a fraction a hair under 1 that rounds up to 1000).
_MILLIS = tuple(f".{min(ms, 999):03d}Z" for ms in range(1001))


class _Clock:
    """UTC timestamps with milliseconds; the part up to the second is made once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def stamp(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return self._prefix + _MILLIS[int((created - second) * 1000)]


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    """A record's structured fields (`extra={"fields": {...}}`), with the call's request id."""
    fields: dict[str, Any] = record.__dict__.get("fields") or {}
    rid = record.__dict__.get("request_id")
    if rid is not None and "request_id" not in fields:
        fields = {**fields, "request_id": rid}
    return fields


# Printable ASCII but space, '"', '=' and backslash: written bare, anything else quoted.
_BARE = re.compile(r"[!#-<>-\[\]-~]+").fullmatch


_NUMBERS = (int, float)


def _plain(value: Any) -> str:
    """A value as logfmt writes it: bare when it is one word, else a JSON string."""
    text = value if type(value) is str else str(value)
    return text if _BARE(text) else json.dumps(text, ensure_ascii=False)


def text_line(stamp: str, level: str, logger: str, message: str, fields: dict[str, Any]) -> str:
    """`2025-01-31T12:00:00.123Z INFO server.calls call method=... code=OK ...` (logfmt after
    the message)."""
    line = f"{stamp} {level} {logger} {message}"
    if not fields:
        return line
    words = [  # _plain, inlined for the common cases: it runs for every field of every call
        f"{key}={value}"
        if (type(value) is str and _BARE(value)) or type(value) in _NUMBERS
        else f"{key}={_plain(value)}"
        for key, value in fields.items()
    ]
    return f"{line} {' '.join(words)}"


def json_line(stamp: str, level: str, logger: str, message: str, fields: dict[str, Any]) -> str:
    entry = {"time": stamp, "level": level, "logger": logger, "message": message, **fields}
    return json.dumps(entry, ensure_ascii=False, default=str)


Line = Callable[[str, str, str, str, dict[str, Any]], str]
LINES: dict[str, Line] = {"text": text_line, "json": json_line}


class LineFormatter(logging.Formatter):
    """Formats a record as a text or JSON line (a traceback follows a text line, or is
    the JSON object's "traceback")."""

    def __init__(self, log_format: str) -> None:
        super().__init__()
        self.line = LINES[log_format]
        self.json = log_format == "json"
        self.clock = _Clock()

    def format(self, record: logging.LogRecord) -> str:
        fields = fields_of(record)
        trace = self.formatException(record.exc_info) if record.exc_info else None
        if trace and self.json:
            fields = {**fields, "traceback": trace}
        stamp = self.clock.stamp(record.created)
        line = self.line(stamp, record.levelname, record.name, record.getMessage(), fields)
        return f"{line}\n{trace}" if trace and not self.json else line


class _ClientWentAway(logging.Filter):
    """grpc.aio logs an ERROR with a traceback when a client resets a stream while the
    server writes to it (ExecuteBatchError): anyone can do that at will. The call's own
    line already says CANCELLED; this becomes a one-line DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, ExecuteBatchError):
            return True
        record.msg, record.args = f"{record.getMessage()}: the client went away", None
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        record.exc_info = record.exc_text = None
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


GRPC_AIO_LOGGER = "grpc._cython.cygrpc"


FLUSH_EVERY = 0.05  # seconds a call line may wait, so that busy times write in batches
PIPE_BUF = 4096  # a write to a pipe up to this size is never split by another writer's


# A call's line as the call leaves it, made into text at the flush (CallLines.line):
# (CallLines, time.time(), level, code, seconds, client, request_id, cause).
Pending = tuple[Any, ...]


class _Sink:
    """Where configure() sends lines: the handler (its stream, lock and formatter), and
    the call lines waiting to be made and written together (at most FLUSH_EVERY later:
    a write per line would cost a system call and a hand-over of the GIL per call)."""

    def __init__(self, handler: logging.StreamHandler[TextIO], formatter: LineFormatter) -> None:
        self.handler = handler
        self.formatter = formatter
        self.pending: list[Pending] = []

    def add(self, entry: Pending) -> None:
        if self.pending:  # a flush is due already (get_running_loop calls getpid())
            self.pending.append(entry)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on an event loop: at once
            self.write([entry[0].line(self.formatter, entry)])
            return
        loop.call_later(FLUSH_EVERY, self.flush)
        self.pending.append(entry)

    def flush(self) -> None:
        entries, self.pending = self.pending, []
        formatter = self.formatter
        self.write([entry[0].line(formatter, entry) for entry in entries])

    def write(self, lines: list[str]) -> None:
        # In writes of whole lines of at most PIPE_BUF bytes each (when lines are
        # that short), so that workers sharing stderr never split each other's.
        chunks: list[str] = []
        size = 0
        for line in lines:
            length = len(line) if line.isascii() else len(line.encode())  # in bytes
            if size + length >= PIPE_BUF and chunks:
                self._write("".join(chunks))
                chunks, size = [], 0
            chunks.append(line + "\n")
            size += length + 1
        if chunks:
            self._write("".join(chunks))

    def _write(self, text: str) -> None:
        handler = self.handler
        with handler.lock:  # type: ignore[union-attr]
            try:
                handler.stream.write(text)
                handler.stream.flush()
            except Exception:  # as logging does: a log that cannot be written is no crash
                handler.handleError(logging.makeLogRecord({"msg": text}))


_sink: _Sink | None = None


def flush() -> None:
    """Writes the call lines still waiting (a server that stopped: no flush is due on
    its loop any more, and later lines would wait for exit)."""
    if _sink is not None:
        _sink.flush()


def _quoted(text: str) -> str:
    """A JSON string (the common case, a plain token, without json.dumps)."""
    return f'"{text}"' if _BARE(text) else json.dumps(text, ensure_ascii=False)


# Text and JSON forms of client keys, which repeat: a cache hit is a quarter of the
# pattern match that tells whether a word needs quoting.
_word = functools.lru_cache(maxsize=4096)(_plain)
_json_word = functools.lru_cache(maxsize=4096)(_quoted)


class CallLines:
    """Writes the line of each call of one method.

    There is one per call, and a LogRecord alone costs more than a cheap call's
    whole line should (a call is ~40 µs of Python): so once configure() has set
    up the stream, the line is made here, in the same format the formatter
    gives (what never changes for the method made once).

    A call only leaves its fields; the lines are made at the flush, together,
    at most FLUSH_EVERY after their calls ended. Measured in one worker under
    load, its lines switched on and off by turns (4-5 runs of 8 rounds): made
    at each call, a REST GetContact's line cost 12-21 µs of CPU (mean 17);
    made together, -2 to 14 µs (mean 5); gRPC's was even (means 9.5 and 9).
    callgrind counts about as many instructions either way (17,000 and
    19,500): most likely, run back to back, the code finds the CPU's caches
    warm. Each part of a line is the cheapest form callgrind counted: a line
    costs about 12,000 instructions where the plain way cost 22,000.
    """

    def __init__(self, logger: logging.Logger, method: str) -> None:
        self.logger = logger
        self.method = method
        self._text = f"{logger.name} call method={_plain(method)} code="
        self._json = (
            f'"logger": {_quoted(logger.name)}, "message": "call", '
            f'"method": {_quoted(method)}, "code": '
        )

    def write(
        self,
        level: int,
        code: str,
        seconds: float,
        client: str,
        request_id: str,
        cause: str | None = None,
    ) -> None:
        """The line of a call that ended with `code` after `seconds`, at `level`, which
        the caller has checked the logger logs at. `request_id` is a plain token: letters,
        digits and `_.:/+-` (server.calls accepts no other), bare in either format."""
        sink = _sink
        if sink is None:  # logging set up by someone else (pytest, say)
            fields = {"method": self.method, "code": code, "duration_ms": round(seconds * 1000, 3)}
            fields |= {"client": client, "request_id": request_id}
            if cause is not None:
                fields["cause"] = cause
            self.logger.log(level, "call", extra={"fields": fields})
            return
        entry = (self, time.time(), level, code, seconds, client, request_id, cause)
        if sink.pending:  # add()'s first branch, without a call
            sink.pending.append(entry)
        else:
            sink.add(entry)

    def line(self, formatter: LineFormatter, entry: Pending) -> str:
        """The text of a line write() left (`entry`), in `formatter`'s format."""
        _, created, level, code, seconds, client, request_id, cause = entry
        stamp = formatter.clock.stamp(created)
        name = _LEVEL_NAMES.get(level) or logging.getLevelName(level)
        duration = f"{seconds * 1000:.3f}"
        if formatter.json:
            return (
                f'{{"time": "{stamp}", "level": "{name}", {self._json}"{code}", '
                f'"duration_ms": {duration}, "client": {_json_word(client)}, '
                f'"request_id": "{request_id}"'
                + ("}" if cause is None else f', "cause": {_quoted(cause)}}}')
            )
        return (
            f"{stamp} {name} {self._text}{code} duration_ms={duration} "
            f"client={_word(client)} request_id={request_id}"
            + ("" if cause is None else f" cause={_plain(cause)}")
        )


def configure(log_format: str = "text", level: str = "info", stream: TextIO | None = None) -> None:
    """Sends every logger's lines to stderr in `log_format` ("text" or "json") from `level` up.

    Records skip what no line shows: the caller's file and line (a stack walk),
    the thread, the process.
    """
    global _sink
    logging._srcfile = None  # type: ignore[attr-defined]  # documented in logging's "Optimization"
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(stream or sys.stderr)
    formatter = LineFormatter(log_format)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(LEVELS[level])
    _sink = _Sink(handler, formatter)
    atexit.register(_sink.flush)  # lines of the last turn of the loop, if it never came
    grpc_aio = logging.getLogger(GRPC_AIO_LOGGER)
    if not any(isinstance(f, _ClientWentAway) for f in grpc_aio.filters):
        grpc_aio.addFilter(_ClientWentAway())
