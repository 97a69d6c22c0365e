"""The service's log: every record, each call's line included, as one line of text or one
JSON object naming the request id of the call it is about, written by a thread of its own
(stdlib logging's QueueHandler and QueueListener). grpc's tracebacks about clients that
went away are kept out: a client could write them at will."""

from __future__ import annotations

import atexit
import json
import logging
import queue
import re
import sys
import time
from logging.handlers import QueueHandler, QueueListener
from typing import Any, TextIO

from server.call import current as current_call

_make_record = logging.getLogRecordFactory()


def _record_with_request_id(*args: Any, **kwargs: Any) -> logging.LogRecord:
    """Every record made while a call is served names its request id, whoever logs it
    (the one place the log learns it)."""
    record = _make_record(*args, **kwargs)
    call = current_call()
    record.request_id = None if call is None else call.request_id
    return record


logging.setLogRecordFactory(_record_with_request_id)

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

FLUSH_EVERY = 0.05  # seconds a line may wait, so that busy times write in batches
PIPE_BUF = 4096  # a write to a pipe up to this size is never split by another writer's

# Printable ASCII but space, '"', '=' and backslash: written bare, anything else quoted.
_BARE = re.compile(r"[!#-<>-\[\]-~]+").fullmatch
_BARE_WORDS = re.compile(r"(?: [!#-<>-\[\]-~]+=[!#-<>-\[\]-~]+)*").fullmatch  # ` key=value`s
_MILLIS = tuple(f".{ms:03d}Z" for ms in range(1000))
_NO_FILE = "(unknown file)"  # what a record names when logging looks up no caller
# Made once: json.dumps with options makes an encoder per call.
_json = json.JSONEncoder(ensure_ascii=False, default=str).encode


def _printable(text: str) -> str:
    """`text` with every character that is not printable written as a JSON escape: a
    control character, a line separator (U+2028) or a bidirectional override from
    whatever a client sent must not end a line, forge another, or hide text."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def _escape(c: str) -> str:
    code = ord(c)
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    code -= 0x10000  # as JSON writes it: a surrogate pair
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def _logfmt(value: Any) -> str:
    """A value as logfmt writes it: bare when it is one word, else a JSON string."""
    text = value if isinstance(value, str) else str(value)
    return text if _BARE(text) else _json(text)


class LineFormatter(logging.Formatter):
    """`2025-01-31T12:00:00.123Z INFO server.calls call method=... code=OK ...` (logfmt
    after the message, a traceback on the lines that follow), or the same as one JSON
    object with the traceback as its "traceback". A record's fields are its
    `extra={"fields": {...}}` and the request id of the call it was logged in."""

    def __init__(self, log_format: str = "text") -> None:
        super().__init__()
        self.json = log_format == "json"
        self._second, self._prefix = -1, ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """UTC with milliseconds. Formatting a time costs more than the rest of a line: the
        part up to the second is made once a second, the rest taken from a table."""
        second = int(record.created)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return self._prefix + _MILLIS[int(record.msecs)]

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = record.__dict__.get("fields") or {}
        rid = record.__dict__.get("request_id")
        if rid is not None and "request_id" not in fields:
            fields = {**fields, "request_id": rid}
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        trace = record.exc_text
        stamp, message = self.formatTime(record), record.getMessage()
        if self.json:
            entry = {"time": stamp, "level": record.levelname, "logger": record.name}
            entry |= {"message": message, **fields}
            if trace:
                entry["traceback"] = trace
            return _printable(_json(entry))
        # Each field as ` key=value`, checked at once, the common case: with no space or
        # '=' but those, no value can pass for another field. Else quoted one by one.
        words = "".join([f" {key}={value}" for key, value in fields.items()])
        if words.count(" ") != len(fields) or not _BARE_WORDS(words):
            words = "".join([f" {key}={_logfmt(value)}" for key, value in fields.items()])
        line = _printable(f"{stamp} {record.levelname} {record.name} {message}{words}")
        if not trace:
            return line
        return f"{line}\n" + "\n".join(_printable(part) for part in trace.split("\n"))


class CallLines:
    """The line of each call of one method: a record of the "call" message on `logger`,
    its fields in `record.fields`, for any handler to see.

    A line made this way costs about 60,000 instructions (callgrind: the record, its
    way through the loggers and the queue, its text), 9 % of a GetContact; lines made
    by hand, bypassing logging, would be kept only past 10 %.
    """

    def __init__(self, logger: logging.Logger, method: str) -> None:
        self.logger = logger
        self.method = method

    def write(
        self,
        level: int,
        code: str,
        seconds: float,
        client: str,
        request_id: str,
        cause: str | None = None,
        trace_id: str | None = None,
    ) -> None:
        """The line of a call that ended with `code` after `seconds`, at `level`, which
        the caller has checked the logger logs at."""
        # Milliseconds to the microsecond (round() to 3 places costs a float's repr).
        milliseconds = round(seconds * 1_000_000) / 1000
        fields = {
            "method": self.method,
            "code": code,
            "duration_ms": milliseconds,
            "client": client,
            "request_id": request_id,
        }
        if trace_id is not None:
            fields["trace_id"] = trace_id
        if cause is not None:
            fields["cause"] = cause
        logger = self.logger  # what Logger.log() does once it has checked the level
        logger.handle(
            logger.makeRecord(
                logger.name, level, _NO_FILE, 0, "call", (), None, None, {"fields": fields}
            )
        )


class _Enqueue(QueueHandler):
    def handle(self, record: logging.LogRecord) -> bool:
        """Puts the record on the queue (thread-safe: no lock is taken). The queue stays
        in this process, so the record itself goes (a copy per line would cost more than
        making it), its message merged with its arguments now: they may change before the
        thread formats it. Other handlers see the same text."""
        if self.filters and not self.filter(record):
            return False
        try:
            if record.args:
                record.msg, record.args = record.getMessage(), None
            self.queue.put_nowait(record)
        except Exception:
            self.handleError(record)
        return True


class _WholeLines(logging.StreamHandler):  # type: ignore[type-arg]
    """Formatted records, written several at a time in whole lines of at most PIPE_BUF
    bytes a write, so that workers sharing stderr never split each other's lines."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self.lines: list[str] = []
        self.size = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.formatter.format(record) + "\n"  # type: ignore[union-attr]
        except Exception:  # as logging does: a record that cannot be written is no crash
            self.handleError(record)
            return
        size = len(line) if line.isascii() else len(line.encode())
        if self.size + size > PIPE_BUF:
            self.flush()
        self.lines.append(line)
        self.size += size

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            text, self.lines, self.size = "".join(self.lines), [], 0
            if not text:
                return
            try:
                self.stream.write(text)
                self.stream.flush()
            except Exception:
                self.handleError(logging.makeLogRecord({"msg": text}))


class _Writer(QueueListener):
    """The thread that formats and writes. Once the queue is empty it writes what it has
    and waits for a record; then, unless that is a warning or worse (written at once),
    FLUSH_EVERY more: in busy times, a wake-up and a write per batch, not per line."""

    def __init__(self, records: queue.SimpleQueue[Any], lines: _WholeLines) -> None:
        super().__init__(records, lines)
        self.records = records
        self.lines = lines

    def handle(self, record: logging.LogRecord) -> None:
        self.lines.emit(record)  # straight to its one handler: no filter, no other thread

    def dequeue(self, block: bool) -> Any:
        try:
            return self.records.get_nowait()
        except queue.Empty:
            self.lines.flush()
            record = self.records.get()
            if isinstance(record, logging.LogRecord) and record.levelno < logging.WARNING:
                time.sleep(FLUSH_EVERY)
            return record

    def stop(self) -> None:
        super().stop()  # handles every record queued before it
        self.lines.flush()


_writer: _Writer | None = None


@atexit.register
def stop() -> None:
    """Writes every line still queued and stops the thread (at exit, if not before)."""
    global _writer
    writer, _writer = _writer, None
    if writer is not None:
        writer.stop()


# grpc.aio logs an ERROR with a traceback when a client resets a stream while the
# server writes to it: anyone can do that at will. grpc exports no public type for
# that error (it lives in the private grpc._cython.cygrpc), so it is known by the
# logger grpc.aio logs with and the exception's class name; importing grpc here
# would load it into the supervisor, which serves no calls.
GRPC_AIO_LOGGER = "grpc._cython.cygrpc"
CLIENT_WENT_AWAY = "ExecuteBatchError"


def _client_went_away(record: logging.LogRecord) -> bool:
    """The call's own line already says CANCELLED: such a record becomes a one-line DEBUG."""
    error = record.exc_info[1] if record.exc_info else None
    if type(error).__name__ != CLIENT_WENT_AWAY:
        return True
    record.msg, record.args = f"{record.getMessage()}: the client went away", None
    record.levelno, record.levelname = logging.DEBUG, "DEBUG"
    record.exc_info = record.exc_text = None
    return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def configure(log_format: str = "text", level: str = "info", stream: TextIO | None = None) -> None:
    """Sends every logger's records to stderr in `log_format` ("text" or "json") from `level`
    up, through a queue that a thread of its own writes from.

    Records skip what no line shows: the caller's file and line (a stack walk),
    the thread, the process.
    """
    global _writer
    logging._srcfile = None  # type: ignore[attr-defined]  # documented in logging's "Optimization"
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    lines = _WholeLines(stream or sys.stderr)
    lines.setFormatter(LineFormatter(log_format))
    records: queue.SimpleQueue[Any] = queue.SimpleQueue()
    earlier, _writer = _writer, _Writer(records, lines)
    _writer.start()
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(_Enqueue(records))
    root.setLevel(LEVELS[level])
    if earlier is not None:  # it writes what it had
        earlier.stop()
    grpc_aio = logging.getLogger(GRPC_AIO_LOGGER)
    if _client_went_away not in grpc_aio.filters:
        grpc_aio.addFilter(_client_went_away)
