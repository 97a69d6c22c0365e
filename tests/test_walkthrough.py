"""README.md's walk-through, run as written: every ```sh block, in order, in one
`bash -euo pipefail` from the repository root, against `python -m server run`
(what `make run` starts) on ports of its own, with the README's default ports
swapped for them. So the README cannot rot; nor can the parts of docs/ that other
files decide (the settings the code reads, the module tree, the bench's numbers)."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import performance
from tests.conftest import BACKEND, POSTGRES_DSN
from tests.harness import Stack, empty_database

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
# The README's addresses, and the stack's attribute that holds the port for each.
DOORS = {"localhost:8080": "http_port", "localhost:50051": "port"}
# Lines the last blocks print: seen only if every block before them ran.
LAST_LINES = ('"status": "SERVING"', '{"detail":"Contact not found"}')
# Shell variables that would send curl or grpcurl through a proxy.
PROXIES = {"http_proxy", "https_proxy", "all_proxy", "grpc_proxy", "no_proxy"}
_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<info>\S*)")


def sh_blocks(markdown: str) -> list[str]:
    """The bodies of the ```sh blocks, in order (an indented one, in a list, too);
    the other fenced blocks (```console, ```text ...) are left out."""
    blocks: list[str] = []
    fence: re.Match[str] | None = None  # the opening fence of the block we are in
    lines: list[str] = []
    for line in markdown.splitlines():
        if fence is None:
            fence = _FENCE.match(line)
            lines = []
        elif line.strip() == "```":
            if fence["info"] == "sh":
                blocks.append("\n".join(lines))
            fence = None
        else:
            lines.append(line.removeprefix(fence["indent"]))
    return blocks


def test_sh_blocks_are_found_in_order_and_others_left_alone() -> None:
    markdown = "\n".join(
        [
            "```console",
            "make run",
            "```",
            "```sh",
            "echo one",
            "```",
            "- item",
            "  ```sh",
            "  echo two",
            "  ```",
            "```text",
            "not run",
            "```",
        ]
    )
    assert sh_blocks(markdown) == ["echo one", "echo two"]


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[Stack, str]]:
    """`python -m server run` on a new database, rate limits as they come by default."""
    secret = secrets.token_urlsafe(48)
    with empty_database(tmp_path, BACKEND, POSTGRES_DSN) as url:
        env = {"CONTACTS_DATABASE_URL": url, "CONTACTS_JWT_SECRET": secret}
        started = Stack(env, tmp_path)
        try:
            yield started, secret
        finally:
            started.stop()


def test_the_readme_walk_through_runs_as_written(stack: tuple[Stack, str]) -> None:
    running, secret = stack
    blocks = sh_blocks(README.read_text())
    assert len(blocks) >= 1, "README.md has no ```sh block"
    script = "\n".join(blocks)
    for address, attribute in DOORS.items():
        assert address in script, f"the walk-through never uses {address}"
        host, _, port = address.partition(":")
        rest = script.replace(address, "")
        assert not re.search(rf"\b{port}\b", rest), f"port {port} is used as something else"
        script = script.replace(address, f"{host}:{getattr(running, attribute)}")
    # Only what a reader's shell would have, plus the stack's secret (a reader's
    # `make run` keeps it in data/jwt-secret, which this stack does not use).
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("CONTACTS_") and name.lower() not in PROXIES
    }
    env["CONTACTS_JWT_SECRET"] = secret
    trap = "trap 'echo \"walk-through: exit $? at: $BASH_COMMAND\" >&2' ERR\n"
    run = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", trap + script],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=180,
    )
    shown = (
        f"{len(blocks)} blocks, exit {run.returncode}\n--- stdout\n{run.stdout[-8000:]}"
        f"\n--- stderr\n{run.stderr[-4000:]}\n--- the stack's log\n{running.log_tail()}"
    )
    assert run.returncode == 0, shown
    for line in LAST_LINES:
        assert line in run.stdout, shown


def test_every_setting_read_anywhere_is_in_the_operators_doc() -> None:
    read = {
        name
        for folder in ("server", "tests", "bench")
        for source in (ROOT / folder).rglob("*.py")
        for name in re.findall(r"\bCONTACTS_[A-Z][A-Z_]*[A-Z]\b", source.read_text())
    }
    documented = set(re.findall(r"`(CONTACTS_[A-Z_]+)`", (ROOT / "docs/operating.md").read_text()))
    assert "CONTACTS_GRPC_PORT" in read  # the search finds what it should
    assert sorted(read - documented) == []


def test_the_performance_page_holds_what_the_bench_results_render_to() -> None:
    page = performance.DOC.read_text()
    results = performance.load(performance.RESULTS)
    assert performance.rendered(page, results) == page, (
        "docs/performance.md's measured part was edited by hand, or bench/results.json "
        "changed without it: run `python -m bench.performance`"
    )


def documented_tree(markdown: str, top: str = "server/") -> set[str]:
    """The files under `top` that a ```text tree of the page lists (two spaces a level)."""
    found: set[str] = set()
    folders: list[str] = []
    inside = False
    for line in markdown.splitlines():
        name = line.strip().split(" ", 1)[0]
        depth = (len(line) - len(line.lstrip(" "))) // 2
        if depth == 0:
            inside = name == top
            folders = [top] if inside else []
            continue
        if not inside or not name:
            continue
        del folders[depth:]
        if name.endswith("/"):
            folders.append(name)
        else:
            found.add("".join(folders) + name)
    return found


def test_the_module_tree_in_the_architecture_doc_is_the_tree() -> None:
    documented = documented_tree((ROOT / "docs/architecture.md").read_text())
    modules = {
        str(path.relative_to(ROOT))
        for path in (ROOT / "server").rglob("*.py")
        if path.name != "__init__.py"
    }
    assert "server/settings.py" in documented  # the tree is where the test looks
    assert sorted(modules - documented) == [], "modules missing from docs/architecture.md"
    assert sorted(documented - modules) == [], "docs/architecture.md lists modules that are gone"
