"""deploy/prometheus/: the rules load and pass their unit tests (promtool), the
names they and the Grafana dashboard use are the ones a live server's /metrics
serves, and that scrape passes `promtool check metrics`."""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from collections.abc import Iterator

import grpc
import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from contacts.v1 import contacts_pb2 as pb
from contacts.v1 import contacts_pb2_grpc
from server.settings import PROJECT_ROOT
from tests.conftest import database_independent
from tests.harness import Server, tool
from tests.test_observability import server_env

pytestmark = database_independent

PROMETHEUS = PROJECT_ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS / "rules.yaml"
# Served once change events exist (CONTRACT.md, "Change events"), by servers
# that publish them; this scrape's server has none.
NOT_HERE = {"contacts_events_outbox_oldest_seconds"}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("promtool"), *args], capture_output=True, text=True, cwd=PROMETHEUS, timeout=60
    )


@pytest.fixture(scope="module")
def scrape(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A live server's /metrics, after calls that end OK, NOT_FOUND and INVALID_ARGUMENT."""
    server = Server(server_env(database_url), tmp_path_factory.mktemp("scraped"))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            contacts = contacts_pb2_grpc.ContactsServiceStub(channel)
            made = contacts.CreateContact(
                pb.CreateContactRequest(first_name="Ann", email="ann@example.com"), timeout=5
            )
            contacts.GetContact(pb.GetContactRequest(contact_id=made.id), timeout=5)
            for contact_id in (str(uuid.uuid4()), "not-a-uuid"):
                with pytest.raises(grpc.RpcError):
                    contacts.GetContact(pb.GetContactRequest(contact_id=contact_id), timeout=5)
        yield requests.get(server.metrics_url, timeout=5).text
    finally:
        server.stop()


def test_the_rules_load() -> None:
    result = promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_rules_pass_their_unit_tests() -> None:
    result = promtool("test", "rules", "rules.test.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_live_scrape_passes_promtool_check_metrics(scrape: str) -> None:
    result = subprocess.run(
        [tool("promtool"), "check", "metrics"], input=scrape, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def expressions() -> list[str]:
    rules = [
        rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]
    ]
    found = [rule["expr"] for rule in rules]
    dashboard = json.loads((PROMETHEUS / "dashboard.json").read_text())
    found += [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    return found


def recorded() -> set[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["record"] for group in groups for rule in group["rules"] if "record" in rule}


def test_rules_and_dashboard_use_only_names_the_servers_serve(scrape: str) -> None:
    served = set()
    for family in text_string_to_metric_families(scrape):
        served |= {sample.name for sample in family.samples}
    names = set()
    for expr in expressions():
        without_strings = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
        names |= set(
            re.findall(r"\b(?:grpc_server_\w+|contacts_\w+|\w+:\w+:\w+)\b", without_strings)
        )
    assert names, "the search finds the names"
    unknown = names - served - recorded() - NOT_HERE
    assert sorted(unknown) == []
    # Labels the rules select on, with the values the server writes.
    assert (
        'grpc_code="NOT_FOUND"' in scrape and 'grpc_service="contacts.v1.ContactsService"' in scrape
    )


def test_the_dashboard_shows_every_recording_rule() -> None:
    shown = " ".join(
        target["expr"]
        for panel in json.loads((PROMETHEUS / "dashboard.json").read_text())["panels"]
        for target in panel["targets"]
    )
    assert sorted(name for name in recorded() if name not in shown) == []


def test_every_alert_has_a_runbook_line() -> None:
    alerts = [
        rule
        for group in yaml.safe_load(RULES.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]
    runbook = (PROJECT_ROOT / "docs" / "alerts.md").read_text()
    for alert in alerts:
        page, _, anchor = alert["annotations"]["runbook"].partition("#")
        assert (PROJECT_ROOT / page).exists()
        assert anchor == alert["alert"].lower()
        assert re.search(rf"^#+ {alert['alert']}$", runbook, re.MULTILINE), alert["alert"]
