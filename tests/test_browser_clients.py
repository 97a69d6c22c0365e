"""A real browser calls the service from a page of another origin: REST with fetch
(a token, PATCH with If-Match, ETag and x-request-id read from the replies) and
gRPC-Web with @connectrpc/connect-web, then writes what it got into the page,
which the test reads. The same page from an origin not listed is refused."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from server.auth.tokens import Tokens
from server.rpc.app import App
from server.settings import PROJECT_ROOT
from tests.browser import Browser, Refuser, chromium_binary
from tests.conftest import Rest, database_independent
from tests.harness import Envoy, free_port

pytestmark = database_independent

WEB = Path(__file__).with_name("web")
ESBUILD = PROJECT_ROOT / "node_modules" / ".bin" / "esbuild"


class Origin:
    """A static web server on a port of its own: one browser origin."""

    def __init__(self, directory: Path) -> None:
        class Quiet(SimpleHTTPRequestHandler):
            def log_message(self, *_: Any) -> None:
                pass

        handler = functools.partial(Quiet, directory=str(directory))
        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Origin, Origin]]:
    """The page (bundled by esbuild) on two origins: one listed, one not."""
    root = tmp_path_factory.mktemp("site")
    shutil.copy(WEB / "index.html", root / "index.html")
    shutil.copy(PROJECT_ROOT / "gen" / "contacts.pb", root / "contacts.pb")
    subprocess.run(
        [
            str(ESBUILD),
            str(WEB / "page.js"),
            "--bundle",
            "--format=iife",
            "--log-level=warning",
            f"--outfile={root / 'page.js'}",
        ],
        check=True,
        cwd=PROJECT_ROOT,
        timeout=60,
    )
    listed, other = Origin(root), Origin(root)
    yield listed, other
    listed.close()
    other.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    binary = chromium_binary()
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed (.ci/run installs it)")
        pytest.skip("chromium is not installed: apt-get install chromium")
    outside = Refuser()
    opened = Browser(binary, tmp_path_factory.mktemp("chromium"), outside.port)
    yield opened
    opened.close()
    outside.close()


@pytest.fixture(scope="module")
def cors_envoy(
    app: App, site: tuple[Origin, Origin], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Envoy]:
    proxy = Envoy(
        app.proxy_port, tmp_path_factory.mktemp("envoy-cors"), cors_origins=(site[0].url,)
    )
    proxy.wait_upstream()
    yield proxy
    proxy.stop()


def run_page(browser: Browser, origin: Origin, api: str, token: str) -> dict[str, Any]:
    config = quote(json.dumps({"api": api, "token": token}))
    page = browser.open(f"{origin.url}/index.html#{config}")
    page.wait_for("document.title === 'done'")
    return dict(json.loads(page.evaluate("document.getElementById('result').textContent")))


def test_a_page_of_a_listed_origin_calls_rest_and_grpc_web(
    browser: Browser,
    site: tuple[Origin, Origin],
    cors_envoy: Envoy,
    tokens: Tokens,
    capsys: pytest.CaptureFixture[str],
) -> None:
    token = tokens.issue("browser-user")
    made = Rest(cors_envoy.url).post("/companies", token=token, json={"name": "Browser Co"})
    assert made.status_code == 201
    seen = run_page(browser, site[0], cors_envoy.url, token)
    assert "error" not in seen, seen
    assert seen["created"]["status"] == 201
    assert seen["created"]["location"].startswith("/contacts/")
    assert seen["read"]["status"] == 200
    assert seen["read"]["etag"] == '"1"'
    assert seen["read"]["requestId"]
    assert seen["patched"]["status"] == 200
    assert seen["patched"]["etag"] == '"2"'
    assert seen["patched"]["body"]["designation"] == "Browser"
    assert "phone" not in seen["patched"]["body"]
    assert seen["stale"] == {"status": 412, "body": {"detail": seen["stale"]["body"]["detail"]}}
    assert seen["companies"]["status"] == 200
    assert seen["grpcWeb"] == {"firstName": "Web", "designation": "Browser", "etag": '"2"'}
    assert seen["grpcWebMissing"] == {"code": 5, "message": "Contact not found"}
    assert seen["grpcWebAnonymous"] == {"code": 16}
    assert seen["grpcWebCompanies"] == ["Browser Co"]
    with capsys.disabled():
        print(f"\nchromium, from {site[0].url}: {sorted(seen)}")


def test_the_same_page_from_an_origin_not_listed_is_refused(
    browser: Browser, site: tuple[Origin, Origin], cors_envoy: Envoy, tokens: Tokens
) -> None:
    seen = run_page(browser, site[1], cors_envoy.url, tokens.issue("elsewhere"))
    # The browser refuses to give the page the first reply: fetch fails.
    assert seen == {"error": "TypeError: Failed to fetch"}
