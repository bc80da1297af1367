"""Deployment files: rules pass promtool, dashboards are valid and generated, every setting named exists."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from app.settings import SPECS
from tests.test_docs import heading_anchors

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
GRAFANA = REPO / "grafana"
RULES = sorted((DEPLOY / "prometheus" / "rules").glob("*.yml"))
PROMTOOL = shutil.which("promtool")


def promtool(*args):
    assert PROMTOOL, "promtool is missing: .ci/run installs Debian's prometheus package"
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=300, cwd=REPO)


def test_promtool_checks_the_rules():
    result = promtool("check", "rules", *map(str, RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 40 rules found" in result.stdout and "SUCCESS: 10 rules found" in result.stdout


def test_promtool_unit_tests_of_every_alert_pass():
    tests = sorted((DEPLOY / "prometheus" / "tests").glob("*.test.yml"))
    result = promtool("test", "rules", *map(str, tests))
    assert result.returncode == 0, result.stdout + result.stderr
    alerts = {
        r["alert"]
        for path in RULES
        for g in yaml.safe_load(path.read_text())["groups"]
        for r in g["rules"]
        if "alert" in r
    }
    tested = set(re.findall(r"alertname: (\w+)", "".join(t.read_text() for t in tests)))
    assert alerts == tested, alerts ^ tested  # every alert has unit tests, and no test names a missing alert


def test_every_alert_has_a_summary_a_description_and_a_runbook_section():
    anchors = heading_anchors((REPO / "docs" / "alerts.md").read_text())
    for path in RULES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    notes = rule["annotations"]
                    assert notes["summary"] and notes["description"], rule["alert"]
                    page, anchor = notes["runbook_url"].split("#")
                    assert page == "docs/alerts.md" and anchor in anchors, (rule["alert"], anchor)


def test_dashboards_are_valid_json_with_unique_panel_ids_and_our_datasource():
    datasource = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    boards = sorted((GRAFANA / "dashboards").glob("*.json"))
    assert [b.name for b in boards] == ["oncall.json", "outbound.json", "queue-detail.json", "wallboard.json"]
    uids = set()
    for path in boards:
        board = json.loads(path.read_text())
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), path.name
        assert board["uid"] not in uids
        uids.add(board["uid"])
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                assert target["datasource"]["uid"] == uid and target["expr"].strip(), (
                    path.name,
                    panel["title"],
                )


def test_dashboards_are_what_the_generator_writes():
    sys.path.insert(0, str(GRAFANA))
    try:
        import build_dashboards
    finally:
        sys.path.remove(str(GRAFANA))
    for name, text in build_dashboards.render().items():
        assert (GRAFANA / "dashboards" / name).read_text() == text, (
            f"run python grafana/build_dashboards.py ({name})"
        )


def test_the_kubernetes_prometheusrule_holds_the_same_rules():
    sys.path.insert(0, str(DEPLOY / "k8s"))
    try:
        import build_prometheusrule
    finally:
        sys.path.remove(str(DEPLOY / "k8s"))
    assert (DEPLOY / "k8s" / "prometheusrule.yaml").read_text() == build_prometheusrule.render()
    rule = yaml.safe_load((DEPLOY / "k8s" / "prometheusrule.yaml").read_text())
    groups = [g for path in RULES for g in yaml.safe_load(path.read_text())["groups"]]
    assert sorted(rule["spec"]["groups"], key=lambda g: g["name"]) == sorted(groups, key=lambda g: g["name"])


YAML_FILES = sorted([*DEPLOY.rglob("*.yml"), *DEPLOY.rglob("*.yaml"), *GRAFANA.rglob("*.yml")])


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_yaml_files_parse(path):
    documents = list(yaml.safe_load_all(path.read_text()))
    assert documents and all(d is not None for d in documents)


def test_every_callpulse_setting_named_in_deploy_files_exists():
    named = set()
    for path in [*YAML_FILES, DEPLOY / "Dockerfile"]:
        named |= set(re.findall(r"CALLPULSE_[A-Z_]+", path.read_text()))
    assert named, "no setting found at all"
    assert sorted(n for n in named if n[len("CALLPULSE_") :] not in SPECS) == []


def test_workers_run_without_service_links_and_scrape_as_job_callpulse():
    statefulset = yaml.safe_load((DEPLOY / "k8s" / "statefulset.yaml").read_text())
    assert statefulset["kind"] == "StatefulSet"
    assert statefulset["spec"]["template"]["spec"]["enableServiceLinks"] is False
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert [j["job_name"] for j in prometheus["scrape_configs"]] == ["callpulse"]
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    assert {"kafka", "worker-1", "worker-2", "simulator", "prometheus", "alertmanager", "grafana"} <= set(
        compose["services"]
    )
    assert compose["services"]["worker-1"]["environment"]["CALLPULSE_BROKER"] == "kafka://kafka:9092"


def test_alertmanager_config_is_valid():
    amtool = shutil.which("amtool")
    assert amtool, "amtool is missing: .ci/run installs Debian's prometheus-alertmanager package"
    result = subprocess.run(
        [amtool, "check-config", str(DEPLOY / "alertmanager" / "alertmanager.yml")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Found:" in result.stdout and "- 1 receivers" in result.stdout
