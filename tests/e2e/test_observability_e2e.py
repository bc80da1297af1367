"""Dashboards and rules against a real Prometheus scraping a worker fed by the simulator.

A week of history is backfilled (``promtool tsdb create-blocks-from openmetrics``) so that ``offset 1w``
queries have data; then every query of every dashboard, with its template variables substituted, is run
through Prometheus' HTTP API: each must parse, and each on MUST_HAVE_DATA (every one but those listed in
NO_DATA_EXPECTED) must return data. Every metric name that rules, rule tests and dashboards use must appear
on the live scrape, so nothing can pass on invented series.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from tests.e2e.conftest import REPO, cli_command, cli_env, free_port, run_cli

pytestmark = pytest.mark.e2e

DASHBOARDS = sorted((REPO / "grafana" / "dashboards").glob("*.json"))
RULES = sorted((REPO / "deploy" / "prometheus" / "rules").glob("*.yml"))
RULE_TESTS = sorted((REPO / "deploy" / "prometheus" / "tests").glob("*.yml"))
# new_customers: the least patient callers of the bank data (median patience 165 s), so its windows hold abandons
VARIABLES = {"$queue": "new_customers", "$campaign": "renewals", "$__rate_interval": "1m"}
#: Queries that need something a healthy simulated run does not make: a firing alert.
NO_DATA_EXPECTED = {'ALERTS{alertstate="firing"}'}
NAME = re.compile(r"(?<![\w:])(callpulse_[a-z0-9_]+)(?![\w:])")


def dashboard_queries() -> list[tuple[str, str, str]]:
    out = []
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                out.append((path.name, panel["title"], target["expr"]))
    return out


def substitute(expr: str) -> str:
    for name, value in VARIABLES.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, expr
    return expr


def names_used() -> set[str]:
    text = "".join(p.read_text() for p in [*RULES, *RULE_TESTS, *DASHBOARDS])
    return set(NAME.findall(text))


class Prometheus:
    def __init__(self, tmp_path: Path, target: str) -> None:
        self.port = free_port()
        self.data = tmp_path / "tsdb"
        self.config = tmp_path / "prometheus.yml"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "2s", "evaluation_interval": "2s"},
                    "rule_files": [str(p) for p in RULES],
                    "scrape_configs": [{"job_name": "callpulse", "static_configs": [{"targets": [target]}]}],
                }
            )
        )
        self.proc: subprocess.Popen | None = None
        self.log = tmp_path / "prometheus.log"

    def start(self) -> None:
        binary = shutil.which("prometheus")
        assert binary, "prometheus is missing: .ci/run installs Debian's prometheus package"
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={self.config}",
                f"--storage.tsdb.path={self.data}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.2)
        raise AssertionError("prometheus did not start:\n" + self.log.read_text()[-3000:])

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(30)

    def query(self, expr: str) -> dict:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(url, timeout=30) as r:  # loopback
                return json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return json.loads(exc.read())

    def label_values(self, label: str, match: str) -> list[str]:
        url = f"http://127.0.0.1:{self.port}/api/v1/label/{label}/values?" + urllib.parse.urlencode(
            {"match[]": match}
        )
        with urllib.request.urlopen(url, timeout=30) as r:
            return json.loads(r.read())["data"]


def backfill(samples: dict, instance: str, path: Path, now: datetime) -> int:
    """A week of history of the call and event counters, as OpenMetrics: every 15 minutes for 8 days, and every
    minute around the same time last week and in the last two hours up to 3 minutes ago (so that 15-minute
    windows, now and a week ago, hold increasing samples whatever the live traffic did)."""
    start = now - timedelta(days=8)
    dense = [
        (now - timedelta(weeks=1, hours=2), now - timedelta(weeks=1) + timedelta(minutes=30)),
        (now - timedelta(hours=2), now - timedelta(minutes=3)),
    ]
    times = []
    t = start
    while t < now - timedelta(minutes=3):
        times.append(t)
        t += timedelta(minutes=1) if any(lo <= t < hi for lo, hi in dense) else timedelta(minutes=15)
    lines = []
    series = 0
    for (name, labels), value in samples.items():
        if not (
            name.startswith("callpulse_calls_") or name.startswith("callpulse_events")
        ) or not name.endswith("_total"):
            continue
        series += 1
        lines.append(f"# TYPE {name} gauge")
        rate = max(value, 1.0) / 3600  # per second: the live count spread over an hour
        label_text = ",".join(
            f'{k}="{v}"'
            for k, v in sorted({**dict(labels), "job": "callpulse", "instance": instance}.items())
        )
        for t in times:
            lines.append(
                f"{name}{{{label_text}}} {rate * (t - start).total_seconds():.3f} {int(t.timestamp())}"
            )
    lines.append("# EOF")
    path.write_text("\n".join(lines) + "\n")
    return series


def test_every_dashboard_query_and_every_rule_runs_against_prometheus(broker, worker_factory, tmp_path):
    # A long grace: the hand-made abandons below are minutes older than the simulated calls' latest events.
    w = worker_factory(CALLPULSE_GRACE="3600").start()
    now = datetime.now(UTC).replace(microsecond=0)
    start = (now - timedelta(minutes=30)).isoformat().replace("+00:00", "Z")
    result = run_cli(
        broker,
        "simulate",
        "--profile",
        "lively",
        "--scale",
        "20",
        "--hours",
        "0.5",
        "--seed",
        "3",
        "--start",
        start,
        "--speed",
        "0",
    )
    assert result.returncode == 0, result.stderr.decode()
    # The simulator makes abandons, but not surely inside one given 15-minute window: three calls that
    # abandon new_customers in the last five minutes make the abandon-wait panels' data certain.
    t = int(now.timestamp())
    abandons = tmp_path / "abandons.jsonl"
    abandons.write_text(
        "".join(
            json.dumps(
                {
                    "event_id": f"ab-{i}-{kind}",
                    "type": kind,
                    "ts": t - 300 + i + (60 if kind == "abandon" else 0),
                    "call_id": f"ab-{i}",
                    **({"queue": "new_customers"} if kind == "queue" else {}),
                }
            )
            + "\n"
            for i in range(3)
            for kind in ("queue", "abandon")
        )
    )
    assert run_cli(broker, "produce", str(abandons)).returncode == 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (
        w.value("callpulse_outbound_attempts_total", campaign="renewals") or 0
    ):
        time.sleep(0.5)
    # every name the rules, rule tests and dashboards use is a series this worker exports (Faust's committed
    # offsets appear after its first commit, a few seconds in, later on a loaded machine)
    deadline = time.monotonic() + 60
    while True:
        samples = w.metrics()
        scraped = {name for name, _ in samples}
        if not names_used() - scraped or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert sorted(names_used() - scraped) == []

    instance = f"127.0.0.1:{w.port}"
    prometheus = Prometheus(tmp_path, instance)
    om = tmp_path / "history.om"
    assert backfill(samples, instance, om, now) > 50
    created = subprocess.run(
        ["promtool", "tsdb", "create-blocks-from", "openmetrics", str(om), str(prometheus.data)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert created.returncode == 0, created.stderr
    # live traffic while Prometheus scrapes, so that 15-minute increases are not flat
    live = subprocess.Popen(
        [*cli_command(), "simulate", "--profile", "lively", "--scale", "20", "--seed", "4"],
        env=cli_env(broker),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    prometheus.start()
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            recorded = prometheus.query("queue:callpulse_service_level:ratio_rate15m")["data"]["result"]
            lag = prometheus.query("topic:callpulse_consumer_lag:sum")["data"]["result"]
            if recorded and lag:
                break
            time.sleep(1)
        time.sleep(6)  # a few more scrapes and evaluations
        queries = dashboard_queries()
        with_data, failures = 0, []
        for board, title, expr in queries:
            answer = prometheus.query(substitute(expr))
            if answer["status"] != "success":
                failures.append(f"{board} / {title}: {expr}: {answer.get('error')}")
            elif answer["data"]["result"]:
                with_data += 1
            elif expr not in NO_DATA_EXPECTED:
                failures.append(f"{board} / {title}: no data for {substitute(expr)}")
        assert failures == [], "\n".join(failures)
        assert with_data == len(queries) - len(NO_DATA_EXPECTED)
        # the template variables' queries (label_values) have values
        assert "new_customers" in prometheus.label_values("queue", "callpulse_calls_entered_total")
        assert "renewals" in prometheus.label_values("campaign", "callpulse_outbound_attempts_total")
        # every recording rule produced a series, last week's included (from the backfilled history)
        records = [
            r["record"]
            for path in RULES
            for g in yaml.safe_load(path.read_text())["groups"]
            for r in g["rules"]
            if "record" in r
        ]
        missing = [r for r in records if not prometheus.query(r)["data"]["result"]]
        assert missing == []
        (tmp_path / "summary.txt").write_text(
            f"{with_data} of {len(queries)} dashboard queries returned data\n"
        )
        print(
            f"{with_data} of {len(queries)} dashboard queries returned data; {len(records)} recording rules"
        )
    finally:
        prometheus.stop()
        live.terminate()
        live.wait(30)
