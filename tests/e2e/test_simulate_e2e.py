"""``callpulse simulate`` into Kafka: what a worker counts equals the events of the same seed written to a file."""

from collections import Counter

import orjson
import pytest

from tests.e2e.conftest import run_cli

pytestmark = pytest.mark.e2e


def test_a_simulated_day_to_kafka_counts_as_the_same_seed_on_file(broker, worker_factory, tmp_path):
    args = ["simulate", "--profile", "bank", "--hours", "3", "--seed", "4", "--start", "2026-01-05T08:00:00Z"]
    out = tmp_path / "sim.jsonl"
    assert run_cli(broker, *args, "--out", str(out)).returncode == 0
    events = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    entered = Counter(e["queue"] for e in events if e["type"] == "queue")
    dials = sum(1 for e in events if e["type"] == "dial")
    result = run_cli(broker, *args, "--speed", "0")
    assert result.returncode == 0, result.stderr.decode()
    assert f"produced {len(events)} events".encode() in result.stderr
    w = worker_factory(CALLPULSE_CLOCK="event").start()
    for queue, n in entered.items():
        w.wait_for("callpulse_calls_entered_total", n, timeout=90, queue=queue)
    w.wait_for("callpulse_outbound_attempts_total", dials, campaign="renewals")
    assert w.value("callpulse_events_duplicate_total") == 0
    assert all(
        w.value("callpulse_events_rejected_total", reason=r) == 0 for r in ("late", "too_old", "wrong_type")
    )
