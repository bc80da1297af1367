"""``callpulse ingest asterisk-queue-log`` on the real fixtures, through the broker and a worker.

Expected numbers are counted by hand from the log lines (awk/grep commands in the comments), per queue:
queue "support" (asterisk20-local-smoke), "sipq" (asterisk20-sip-smoke) and "IT" (pbxware-2018 export).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from tests.e2e.conftest import REPO, consume_all, run_cli

pytestmark = pytest.mark.e2e

FIXTURES = REPO.parent / "shared" / "fixtures" / "asterisk"
PBX = FIXTURES / "pbxware-2018.queue_log.csv"
LOCAL = FIXTURES / "asterisk20-local-smoke.queue_log"
SIP = FIXTURES / "asterisk20-sip-smoke.queue_log"


def ingest_all(broker):
    # the 2018 export first: the 2026 logs must not push the buckets' stream time past it
    for path in (PBX, LOCAL, SIP):
        result = run_cli(broker, "ingest", "asterisk-queue-log", str(path))
        assert result.returncode == 0, result.stderr.decode()
    return result


@pytest.mark.parametrize("short_abandon", [1000, 0])
def test_fixtures_give_the_hand_counted_numbers(broker, worker_factory, short_abandon):
    result = run_cli(broker, "ingest", "asterisk-queue-log", str(PBX))
    assert result.returncode == 0, result.stderr.decode()
    # wc -l: 1,001 lines (a header and 1,000 rows); events 108 queue + 170 answer + 217 hangup + 360 agent_missed
    # + 128 dial + 3 transfer + 12 abandon + 1 exit + 60 agent_state = 1,059 (per verb: test_asterisk.py);
    # QUEUESTART 7 and CONFIGRELOAD 11 are counted and skipped
    assert b"1001 lines, 1059 events; skipped CONFIGRELOAD 11, QUEUESTART 7" in result.stderr
    for path in (LOCAL, SIP):
        assert run_cli(broker, "ingest", "asterisk-queue-log", str(path)).returncode == 0
    w = worker_factory(CALLPULSE_CLOCK="event", CALLPULSE_SHORT_ABANDON=str(short_abandon)).start()
    w.wait_for("callpulse_calls_entered_total", 108, timeout=90, queue="IT")
    w.wait_for("callpulse_calls_entered_total", 4, queue="support")
    w.wait_for("callpulse_calls_entered_total", 4, queue="sipq")
    w.wait_for("callpulse_outbound_attempts_total", 128, campaign="default")
    w.wait_for("callpulse_agent_missed_total", 360, queue="IT")
    time.sleep(1.5)  # counters come from durable checkpoints
    m = w.metrics()

    def v(name, **labels):
        return m.get((name, tuple(sorted(labels.items()))))

    # support (asterisk20-local-smoke): ENTERQUEUE 4; CONNECT 3 with holdtime 0, 0, 5; ABANDON 1 after 3 s
    # sipq (asterisk20-sip-smoke): ENTERQUEUE 4; CONNECT 1 (holdtime 0); ABANDON 3 after 3, 4, 3 s;
    #   RINGCANCELED 2 (the callers hung up while the agent's phone rang: rings abandoned, no agent misses)
    # IT (pbxware, awk -F, '$4=="IT"{c[$6]++}'): ENTERQUEUE 108, CONNECT 93 (39 with htime <= 20),
    #   ABANDON 12 (1 with htime <= 20, longest 201 s), EXITWITHTIMEOUT 1 (300 s), RINGNOANSWER 360,
    #   BLINDTRANSFER 1 + ATTENDEDTRANSFER 1; sums of htime: CONNECT 3599, ABANDON 1141
    hand = {
        "support": dict(
            entered=4,
            answered=3,
            abandoned=1,
            exit_timeout=0,
            missed=0,
            ring_abandoned=0,
            answered_wait=5.0,
            abandon_wait=3.0,
            within=3,
            transferred=0,
        ),
        "sipq": dict(
            entered=4,
            answered=1,
            abandoned=3,
            exit_timeout=0,
            missed=0,
            ring_abandoned=2,
            answered_wait=0.0,
            abandon_wait=10.0,
            within=1,
            transferred=0,
        ),
        "IT": dict(
            entered=108,
            answered=93,
            abandoned=12,
            exit_timeout=1,
            missed=360,
            ring_abandoned=0,
            answered_wait=3599.0,
            abandon_wait=1141.0,
            within=39,
            transferred=2,
        ),
    }
    for queue, h in hand.items():
        q = {"queue": queue}
        assert v("callpulse_calls_entered_total", **q) == h["entered"], queue
        assert v("callpulse_calls_answered_total", **q) == h["answered"], queue
        assert v("callpulse_calls_abandoned_total", **q) == h["abandoned"], queue
        assert v("callpulse_calls_exited_total", queue=queue, reason="timeout") == h["exit_timeout"], queue
        assert (
            v("callpulse_calls_offered_total", **q) == h["answered"] + h["abandoned"] + h["exit_timeout"]
        ), queue
        assert v("callpulse_agent_missed_total", **q) == h["missed"], queue
        assert v("callpulse_ring_abandoned_total", **q) == h["ring_abandoned"], queue
        assert v("callpulse_queue_wait_seconds_sum", queue=queue, outcome="answered") == h["answered_wait"], (
            queue
        )
        assert v("callpulse_queue_wait_seconds_sum", queue=queue, outcome="abandoned") == h["abandon_wait"], (
            queue
        )
        assert v("callpulse_calls_answered_within_sl_total", **q) == h["within"], queue
        assert v("callpulse_calls_transferred_total", **q) == h["transferred"], queue
        # every abandon in these logs is shorter than 1,000 s and none is shorter than 0 s
        assert v("callpulse_calls_short_abandoned_total", **q) == (h["abandoned"] if short_abandon else 0), (
            queue
        )
    assert v("callpulse_queue_wait_seconds_sum", queue="IT", outcome="exited") == 300.0
    # outbound (campaign default): OUTDIAL 128; OUTANSWER 77; OUTANSWER with ttime >= 30 s: 42
    c = {"campaign": "default"}
    assert (
        v("callpulse_outbound_attempts_total", **c),
        v("callpulse_outbound_connected_total", **c),
        v("callpulse_outbound_contacts_total", **c),
    ) == (128, 77, 42)
    # abandonment over "today" of the SIP log (all in one day): S = 1000: (3 - 3) / (4 - 3) = 0; S = 0: 3 / 4
    today = v("callpulse_abandonment_ratio", queue="sipq", window="today")
    assert today == (0.0 if short_abandon else 0.75)


def test_bad_lines_are_reported_and_dead_lettered(broker, tmp_path):
    log = tmp_path / "queue_log"
    log.write_text(
        "1795490107|c.1|support|NONE|ENTERQUEUE||555|1\nthis is not a queue_log line\n"
        "1795490108|c.1|support|NONE|ABANDON|1|1|1\n"
    )
    result = run_cli(broker, "ingest", "asterisk-queue-log", str(log))
    assert result.returncode == 0
    assert b"line 2: 1 fields, a queue_log line has at least 5" in result.stderr
    assert b"3 lines, 2 events; 1 bad lines" in result.stderr
    (record,) = consume_all(broker, "calls.deadletter", 1)
    headers = dict(record.headers)
    assert record.value == b"this is not a queue_log line"
    assert (headers["reason"], headers["source_topic"], headers["source_offset"]) == (
        b"bad_line",
        str(log).encode(),
        b"2",
    )


def ids_in(broker, expected):
    return [
        e["event_id"]
        for r in consume_all(broker, "calls.events", expected, timeout=20)
        for e in (orjson.loads(r.value) if r.value.startswith(b"[") else [orjson.loads(r.value)])
    ]


def line_of(state: Path) -> int:
    """The line a follower's state file says it has read up to (-1 before it wrote one)."""
    try:
        return orjson.loads(state.read_bytes())["line"]
    except FileNotFoundError:
        return -1


def wait_until(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met")


class Follower:
    def __init__(self, broker, path: Path, tmp_path: Path):
        self.broker, self.path, self.tmp_path = broker, path, tmp_path
        self.proc = None

    def start(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("CALLPULSE_")}
        env.update(CALLPULSE_BROKER=self.broker.url, CALLPULSE_PARTITIONS="4", CALLPULSE_CALLER_KEY="e2e")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app", "ingest", "asterisk-queue-log", "--follow", str(self.path)],
            env=env,
            cwd=REPO,
            stderr=subprocess.PIPE,
        )
        return self

    def stop(self, sig=signal.SIGTERM):
        self.proc.send_signal(sig)
        self.proc.wait(30)
        return self.proc.stderr.read().decode()


def lines(start, n, verb="ENTERQUEUE"):
    return "".join(
        f"{1795490000 + i}|f.{i}|followq|NONE|{verb}||5550{i}|1\n" for i in range(start, start + n)
    )


def test_follow_survives_rotation_truncation_and_restart_without_loss_or_repeat(broker, tmp_path):
    log = tmp_path / "queue_log"
    state = tmp_path / "queue_log.callpulse-state"
    log.write_text(lines(0, 3))
    f = Follower(broker, log, tmp_path).start()
    wait_until(lambda: line_of(state) == 3)
    with log.open("a") as out:  # the file grows, a line arriving in two writes
        out.write(lines(3, 2))
        out.write("1795490005|f.5|followq|NONE|ENTER")
        out.flush()
        time.sleep(0.5)
        out.write("QUEUE||55505|1\n")
    wait_until(lambda: line_of(state) == 6)
    log.rename(tmp_path / "queue_log.1")  # rotation: a new file under the same name
    (tmp_path / "queue_log.1").open("a").write(lines(6, 1))  # written to the old file before the switch
    log.write_text(lines(7, 2))
    wait_until(lambda: line_of(state) == 2)
    f.stop()  # a clean stop keeps the position
    with log.open("a") as out:
        out.write(lines(9, 2))  # written while nobody follows
    f.start()
    wait_until(lambda: line_of(state) == 4)
    with log.open("w") as out:  # truncation: the file starts over with other lines
        out.write(lines(11, 1))
    wait_until(lambda: line_of(state) == 1)
    f.stop()
    ids = ids_in(broker, 12)
    # lines 0..11, each sent exactly once: nothing lost, nothing repeated
    assert len(ids) == 12 and len(set(ids)) == 12
    parsed = [orjson.loads(r.value) for r in consume_all(broker, "calls.events", 12)]
    calls = sorted({e["call_id"] for m in parsed for e in (m if isinstance(m, list) else [m])})
    assert calls == sorted(f"f.{i}" for i in range(12))


def test_a_follower_killed_hard_repeats_lines_with_the_same_ids(broker, tmp_path):
    log = tmp_path / "queue_log"
    state = tmp_path / "queue_log.callpulse-state"
    log.write_text(lines(0, 4))
    f = Follower(broker, log, tmp_path).start()
    wait_until(lambda: line_of(state) == 4)
    f.stop(signal.SIGKILL)
    state.unlink()  # as if it had been killed after sending, before it could save its position
    f.start()
    wait_until(lambda: line_of(state) == 4)
    f.stop()
    ids = ids_in(broker, 8)
    # every line sent twice, under the same deterministic ids: the sessionizer counts them once
    assert len(ids) == 8 and len(set(ids)) == 4


def test_speed_replays_at_a_multiple_of_real_time(broker, tmp_path):
    log = tmp_path / "queue_log"
    # 10 s of event time at 10x: about 1 s
    log.write_text("".join(f"{1795490000 + 2 * i}|s.{i}|q|NONE|ENTERQUEUE||1|1\n" for i in range(6)))
    t = time.monotonic()
    result = run_cli(broker, "ingest", "asterisk-queue-log", "--speed", "10", str(log))
    elapsed = time.monotonic() - t
    assert result.returncode == 0
    startup = 0.5  # the command's own start (imports, connecting) is part of `elapsed`
    assert 1.0 <= elapsed < 1.0 + startup + 3.0, elapsed
