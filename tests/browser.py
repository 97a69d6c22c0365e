"""A headless Chromium for the tests, driven over the DevTools protocol on a pipe.

It records every request a page makes and reads the rendered page. Nothing the
browser does leaves the machine: every host but loopback resolves to nothing,
and every request to one goes to `Refuser`, a local proxy that answers 403.
(Chromium's own background calls, update checks and the like, end there too.)
"""

from __future__ import annotations

import json
import os
import select
import shutil
import socketserver
import subprocess
import threading
import time
from pathlib import Path
from typing import Any


def chromium_binary() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Refuser:
    """Stands for the world outside: records the first line of each request, refuses it."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        seen = self.seen

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                seen.append(self.rfile.readline(65537).decode("latin-1").strip())
                self.wfile.write(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Browser:
    """One headless Chromium; `open` loads a page in a new tab and records its requests."""

    def __init__(self, binary: str, profile: Path, proxy_port: int, timeout: float = 30) -> None:
        self.timeout = timeout
        command_read, self._commands = os.pipe()
        self._replies, reply_write = os.pipe()
        arguments = [
            binary,
            "--headless",
            "--no-sandbox",  # root in CI
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            f"--user-data-dir={profile}",
            f"--proxy-server=http://127.0.0.1:{proxy_port}",  # loopback bypasses it
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--remote-debugging-pipe",  # reads commands on fd 3, writes replies on fd 4
            "about:blank",
        ]
        self.log = (profile / "chromium.log").open("wb")
        # bash, not sh: dash cannot redirect descriptors above 9.
        self.process = subprocess.Popen(
            ["bash", "-c", f'exec "$0" "$@" 3<&{command_read} 4>&{reply_write}', *arguments],
            pass_fds=(command_read, reply_write),
            stdout=subprocess.DEVNULL,
            stderr=self.log,
            start_new_session=True,
        )
        os.close(command_read)
        os.close(reply_write)
        self._buffer = b""
        self._last_id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, params: dict[str, Any] | None = None, session: str = "") -> Any:
        self._last_id += 1
        message: dict[str, Any] = {"id": self._last_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") != self._last_id:
                self.events.append(reply)
            elif "error" in reply:
                raise RuntimeError(f"{method}: {reply['error']}")
            else:
                return reply["result"]

    def _read(self) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._replies], [], [], deadline - time.monotonic())
            chunk = os.read(self._replies, 65536) if ready else b""
            if not chunk:
                raise TimeoutError("chromium stopped answering")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return dict(json.loads(message))

    def open(self, url: str) -> Page:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})
        page = Page(self, session["sessionId"])
        self.send("Network.enable", session=page.session)
        self.send("Page.navigate", {"url": url}, session=page.session)
        return page

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (OSError, RuntimeError, TimeoutError):
            pass
        finally:
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            os.close(self._commands)
            os.close(self._replies)
            self.log.close()


class Page:
    def __init__(self, browser: Browser, session: str) -> None:
        self.browser = browser
        self.session = session

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page."""
        found = self.browser.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
            session=self.session,
        )
        if "exceptionDetails" in found:
            raise RuntimeError(f"{expression}: {found['exceptionDetails']}")
        return found["result"].get("value")

    def wait_for(self, expression: str) -> Any:
        """The expression's value once it is true (it may throw until the page is there)."""
        deadline = time.monotonic() + self.browser.timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                value = self.evaluate(expression)
                if value:
                    return value
            except RuntimeError as error:
                last = error
            time.sleep(0.1)
        raise TimeoutError(f"the page never made {expression!r} true: {last}")

    def requested(self) -> list[str]:
        """Every URL the page asked for so far."""
        return [
            event["params"]["request"]["url"]
            for event in self.browser.events
            if event.get("sessionId") == self.session
            and event.get("method") == "Network.requestWillBeSent"
        ]
