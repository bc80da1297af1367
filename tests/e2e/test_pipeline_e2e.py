"""End to end: the embedded broker, real worker processes, ``callpulse produce`` and raw bytes.

Expectations are counted by hand from the events written below (comments show the arithmetic).
"""

from __future__ import annotations

import json
import time

import orjson
import pytest

from streams.events import call_bucket
from tests.e2e.conftest import consume_all, produce_raw, run_cli

pytestmark = pytest.mark.e2e

T0 = 1_767_258_000  # 2026-01-01T09:00:00Z


def ev(eid, etype, sec, call=None, **fields):
    out = {"event_id": eid, "type": etype, "ts": T0 + sec}
    if call:
        out["call_id"] = call
    out.update(fields)
    return out


SCENARIO = [
    # c1: waits 15 s, talks 120 s with a 30 s hold, 13 s of wrap-up, then a CSAT 5
    ev("c1-1", "ring", 0, "c1", caller="+15550101"),
    ev("c1-2", "queue", 2, "c1", queue="sales"),
    ev("c1-3", "answer", 17, "c1", agent="a1"),
    ev("c1-4", "hold", 40, "c1"),
    ev("c1-5", "unhold", 70, "c1"),
    ev("c1-6", "hangup", 137, "c1"),
    ev("c1-7", "wrapup", 150, "c1"),
    ev("c1-8", "survey", 200, "c1", scale="csat", score=5),
    # c2: abandons after 4 s (short); c3: hangs up after 30 s in queue
    ev("c2-1", "queue", 5, "c2", queue="sales"),
    ev("c2-2", "abandon", 9, "c2"),
    ev("c2-3", "hangup", 9, "c2"),
    ev("c3-1", "queue", 10, "c3", queue="sales"),
    ev("c3-2", "hangup", 40, "c3"),
    # c4: times out of sales after 60 s, overflow answers after 5 s, talks 60 s
    ev("c4-1", "queue", 20, "c4", queue="sales"),
    ev("c4-2", "exit", 80, "c4", reason="timeout"),
    ev("c4-3", "queue", 80, "c4", queue="overflow"),
    ev("c4-4", "answer", 85, "c4"),
    ev("c4-5", "hangup", 145, "c4"),
    # c5: answered after 25 s, transferred to overflow after 40 s of talk, answered there after 5 s, 60 s talk
    ev("c5-1", "queue", 30, "c5", queue="sales"),
    ev("c5-2", "answer", 55, "c5"),
    ev("c5-3", "transfer", 95, "c5", target="overflow"),
    ev("c5-4", "queue", 95, "c5", queue="overflow"),
    ev("c5-5", "answer", 100, "c5"),
    ev("c5-6", "hangup", 160, "c5"),
    # c6: refused (queue full)
    ev("c6-1", "refused", 50, "c6", queue="sales", reason="full"),
    ev("c6-2", "hangup", 51, "c6"),
    # outbound: d1 success; d2 no answer; d3 no disposition but 75 s of talk (>= 30 s: a contact)
    ev("d1-1", "dial", 0, "d1", campaign="renew"),
    ev("d1-2", "answer", 20, "d1", direction="outbound"),
    ev("d1-3", "hangup", 80, "d1", direction="outbound", disposition="success"),
    ev("d2-1", "dial", 10, "d2", campaign="renew"),
    ev("d2-2", "hangup", 40, "d2", direction="outbound", disposition="no_answer"),
    ev("d3-1", "dial", 15, "d3", campaign="renew"),
    ev("d3-2", "answer", 25, "d3", direction="outbound"),
    ev("d3-3", "hangup", 100, "d3", direction="outbound"),
    # agent a1 in sales: available 0-17, on a call 17-137 (sent as busy, on_call's earlier name), acw 137-150,
    # available since 150
    ev("a1-1", "agent_state", 0, agent="a1", state="available", queue="sales"),
    ev("a1-2", "agent_state", 17, agent="a1", state="busy"),
    ev("a1-3", "agent_state", 137, agent="a1", state="acw"),
    ev("a1-4", "agent_state", 150, agent="a1", state="available"),
]


def topic_partitions(broker):
    import asyncio

    from aiokafka.admin import AIOKafkaAdminClient

    async def describe():
        admin = AIOKafkaAdminClient(bootstrap_servers=f"127.0.0.1:{broker.port}")
        await admin.start()
        try:
            topics = await admin.describe_topics(["calls.events", "calls.facts", "calls.deadletter"])
        finally:
            await admin.close()
        return {t["topic"]: len(t["partitions"]) for t in topics}

    return asyncio.run(describe())


def write_jsonl(path, events, extra_lines=()):
    path.write_bytes(b"\n".join([orjson.dumps(e) for e in events] + list(extra_lines)) + b"\n")
    return path


def test_events_to_exact_counters_windows_api_and_dead_letters(broker, worker_factory, tmp_path):
    events = SCENARIO + [ev("c2-2", "abandon", 9, "c2")]  # a duplicate of c2's abandon
    result = run_cli(
        broker, "produce", str(write_jsonl(tmp_path / "in.jsonl", events, [b"this is not json"]))
    )
    assert result.returncode == 0, result.stderr.decode()
    assert b"1 lines were not JSON" in result.stderr
    produce_raw(
        broker,
        [
            (b"7", b'{"event_id": "broken"'),  # invalid_json
            (b"7", b"\xff\xfe\x00"),  # not_utf8
            (
                b"7",
                b'[{"event_id": "t1", "type": "queue", "ts": "noon", "call_id": "x", "queue": "sales"}, 5]',
            ),
            # late: c1's bucket has seen t = 200 s; an unseen event of c1 at -1000 s is beyond the 120 s grace
            (call_bucket("c1").encode(), orjson.dumps(ev("c1-late", "hold", -1000, "c1"))),
        ],
    )
    w = worker_factory(CALLPULSE_CLOCK="event").start()
    # `produce` created the topics, before any worker, with CALLPULSE_PARTITIONS (4) partitions
    assert topic_partitions(broker) == {"calls.events": 4, "calls.facts": 4, "calls.deadletter": 4}

    s, o, r = {"queue": "sales"}, {"queue": "overflow"}, {"campaign": "renew"}
    w.wait_for("callpulse_survey_responses_total", 1, queue="sales", scale="csat", band="positive")
    w.wait_for("callpulse_outbound_attempts_total", 3, **r)
    w.wait_for("callpulse_events_rejected_total", 1, reason="late")
    m = w.metrics()

    def v(name, **labels):
        return m.get((name, tuple(sorted(labels.items()))))

    # sales: entered c1..c5 = 5; answered c1 (15 s), c5 (25 s); within T = 20 s: c1 only
    assert v("callpulse_calls_entered_total", **s) == 5
    assert v("callpulse_calls_answered_total", **s) == 2
    assert v("callpulse_calls_answered_within_sl_total", **s) == 1
    # abandoned c2 (4 s, short, within T) and c3 (30 s); the duplicate abandon counts nothing
    assert v("callpulse_calls_abandoned_total", **s) == 2
    assert v("callpulse_calls_short_abandoned_total", **s) == 1
    assert v("callpulse_calls_abandoned_within_sl_total", **s) == 1
    assert v("callpulse_calls_exited_total", queue="sales", reason="timeout") == 1
    assert v("callpulse_calls_offered_total", **s) == 5  # 2 + 2 + 1
    assert v("callpulse_calls_refused_total", queue="sales", reason="full") == 1
    assert v("callpulse_calls_completed_total", **s) == 2  # c1 and c5 (transferred)
    assert v("callpulse_calls_transferred_total", **s) == 1
    assert v("callpulse_holds_total", **s) == 1
    assert v("callpulse_calls_entered_total", **o) == 2  # c4, c5
    assert v("callpulse_calls_answered_within_sl_total", **o) == 2  # 5 s each
    assert v("callpulse_calls_exited_total", queue="overflow", reason="timeout") == 0
    assert (
        v("callpulse_outbound_connected_total", **r),
        v("callpulse_outbound_contacts_total", **r),
        v("callpulse_outbound_conversions_total", **r),
    ) == (2, 2, 1)
    assert v("callpulse_queue_wait_seconds_count", queue="sales", outcome="answered") == 2
    assert v("callpulse_queue_wait_seconds_sum", queue="sales", outcome="answered") == 40.0  # 15 + 25
    assert v("callpulse_talk_seconds_sum", **s) == 160.0  # 120 + 40
    assert v("callpulse_handle_seconds_sum", **s) == 173.0  # + 13 s wrap-up

    # windows, clock = stream time = 200 s (the survey); 15m holds everything
    wl = {"queue": "sales", "window": "15m"}
    assert v("callpulse_abandonment_ratio", **wl) == 0.25  # (2 - 1) / (5 - 1)
    assert v("callpulse_service_level_ratio", **wl) == pytest.approx(1 / 3)  # 1 / (2 + 2 - 1)
    assert v("callpulse_average_speed_of_answer_seconds", **wl) == 20.0  # (15 + 25) / 2
    assert v("callpulse_average_abandon_wait_seconds", **wl) == 17.0  # (4 + 30) / 2
    assert v("callpulse_longest_wait_seconds", **wl) == 60.0  # c4's exit
    assert v("callpulse_average_handle_time_seconds", **wl) == 86.5  # (120 + 13 + 40) / 2
    assert v("callpulse_average_hold_seconds", **wl) == 15.0  # 30 / 2
    assert v("callpulse_transfer_ratio", **wl) == 0.5
    assert v("callpulse_csat_ratio", **wl) == 1.0
    assert v("callpulse_offered_calls", **wl) == 5.0
    # a1: on a call 120 + acw 13 over available 17 + 120 + 13 + open available 150..200 = 50: 133 / 200
    assert v("callpulse_occupancy_ratio", **wl) == 0.665
    assert v("callpulse_connection_ratio", campaign="renew", window="15m") == pytest.approx(2 / 3)
    assert v("callpulse_contact_ratio", campaign="renew", window="15m") == pytest.approx(2 / 3)
    assert v("callpulse_conversion_ratio", campaign="renew", window="15m") == pytest.approx(1 / 3)
    assert v("callpulse_nps_score", **wl) is None  # no NPS response: no sample
    assert v("callpulse_agents", queue="sales", state="available") == 1
    assert v("callpulse_calls_waiting", **s) == 0
    assert v("callpulse_sl_threshold_seconds", **s) == 20.0

    # pipeline counters: 3 raw messages + 1 bad line + 1 bad element + 1 late
    assert (
        v("callpulse_events_rejected_total", reason="invalid_json") == 2
    )  # the raw one and the produced line
    assert v("callpulse_events_rejected_total", reason="not_utf8") == 1
    assert v("callpulse_events_rejected_total", reason="bad_timestamp") == 1
    assert v("callpulse_events_rejected_total", reason="not_an_object") == 1
    assert v("callpulse_events_duplicate_total") == 1
    assert v("callpulse_events_late_total") == 1

    # the JSON API agrees
    sales = json.loads(w.get("/api/v1/queues/sales"))
    assert sales["windows"]["15m"]["counts"]["answered"] == 2
    # the window's counters under the names a person reads, durations in seconds (a1 on a call 120 s, acw 13 s)
    counts = sales["windows"]["15m"]["counts"]
    assert (counts["agent_seconds.on_call"], counts["agent_seconds.acw"]) == (120.0, 13.0)
    assert not [name for name in counts if ":" in name or name.endswith("_ms")]
    assert sales["windows"]["15m"]["kpis"]["service_level_ratio"] == pytest.approx(1 / 3)
    assert sales["live"]["agents"]["available"] == 1
    listing = json.loads(w.get("/api/v1/queues"))
    assert [q["queue"] for q in listing["queues"]] == ["overflow", "sales"]
    assert [c["campaign"] for c in listing["campaigns"]] == ["renew"]
    assert listing["now"] == "2026-01-01T09:03:20Z"

    # dead letters: the original bytes (or the element) and the headers
    dead = consume_all(broker, "calls.deadletter", 6)
    by_reason = {dict(r.headers)["reason"]: r for r in dead}
    assert sorted(by_reason) == [b"bad_timestamp", b"invalid_json", b"late", b"not_an_object", b"not_utf8"]
    assert by_reason[b"not_utf8"].value == b"\xff\xfe\x00"
    assert by_reason[b"not_an_object"].value == b"5"
    late = dict(by_reason[b"late"].headers)
    assert (
        late["source_topic"] == b"calls.events"
        and orjson.loads(by_reason[b"late"].value)["event_id"] == "c1-late"
    )
    assert int(late["source_partition"]) in range(4) and int(late["source_offset"]) >= 0
    assert b"grace" in late["error"]
    assert len(dead) == 6


def load_calls(n):
    """n calls over queues a, b, c (call i in queue i % 3), shaped by i % 4:
    0: abandons after 7 s (short); 1: answered after 12 s; 2: answered after 30 s; 3: exits after 50 s (timeout)."""
    events = []
    for i in range(n):
        call, t, q = f"k{i}", 2 * i, "abc"[i % 3]
        events.append(ev(f"{call}-q", "queue", t, call, queue=q))
        kind = i % 4
        if kind == 0:
            events.append(ev(f"{call}-h", "hangup", t + 7, call))
        elif kind in (1, 2):
            wait = 12 if kind == 1 else 30
            events.append(ev(f"{call}-a", "answer", t + wait, call))
            events.append(ev(f"{call}-h", "hangup", t + wait + 60, call))
        else:
            events.append(ev(f"{call}-x", "exit", t + 50, call, reason="timeout"))
            events.append(ev(f"{call}-h", "hangup", t + 51, call))
    return events


def test_a_worker_killed_mid_stream_and_restarted_counts_exactly(broker, worker_factory, tmp_path):
    # 3,000 calls: each queue gets 1,000 calls, i % 12 covering each shape i % 4 equally: 250 of each.
    events = load_calls(3000)
    result = run_cli(broker, "produce", "--batch", "1", str(write_jsonl(tmp_path / "load.jsonl", events)))
    assert result.returncode == 0, result.stderr.decode()
    w = worker_factory(CALLPULSE_CLOCK="event").start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        entered = sum(w.value("callpulse_calls_entered_total", queue=q) or 0 for q in "abc")
        if entered > 0:
            break
        time.sleep(0.05)
    w.kill()  # SIGKILL in the middle of the stream
    assert 0 < entered < 3000, f"not mid-stream: {entered}"
    w.start()
    expected = {
        "entered": 1000,
        "offered": 1000,
        "answered": 500,
        "answered_within_sl": 250,
        "abandoned": 250,
        "short_abandoned": 250,
        "abandoned_within_sl": 250,
    }
    for q in "abc":
        w.wait_for("callpulse_calls_entered_total", 1000, timeout=120, queue=q)
        w.wait_for("callpulse_calls_offered_total", 1000, timeout=60, queue=q)
    time.sleep(2)  # anything counted twice would show now
    for q in "abc":
        for name, value in expected.items():
            assert w.value(f"callpulse_calls_{name}_total", queue=q) == value, (q, name)
        assert w.value("callpulse_calls_exited_total", queue=q, reason="timeout") == 250
    before = {k: v for k, v in w.metrics().items() if k[0].startswith("callpulse_calls_")}

    # and once more, idle: kill -9 and restart recovers the same tables
    w.kill()
    w.start()
    w.wait_for("callpulse_calls_entered_total", 1000, timeout=60, queue="a")
    after = {k: v for k, v in w.metrics().items() if k[0].startswith("callpulse_calls_")}
    assert after == before


def test_fetch_range_reads_exactly_the_asked_offsets_of_one_partition(broker):
    # what a stage reads when the consumer skipped messages: 10 messages on partition 0, offsets 3 to 6 asked
    import asyncio

    from aiokafka import AIOKafkaProducer

    from app.kafka import fetch_range
    from app.settings import Settings

    async def run():
        producer = AIOKafkaProducer(bootstrap_servers=f"127.0.0.1:{broker.port}", max_batch_size=1)
        await producer.start()
        try:
            for i in range(10):
                await producer.send_and_wait("ranged", value=b"m%d" % i, partition=0)
        finally:
            await producer.stop()
        settings = Settings.from_env({"CALLPULSE_BROKER": broker.url, "CALLPULSE_CALLER_KEY": "e2e"})
        return [(r.offset, r.value) async for r in fetch_range(settings, "ranged", 0, 3, 7)]

    assert asyncio.run(run()) == [(3, b"m3"), (4, b"m4"), (5, b"m5"), (6, b"m6")]


def business_counters(worker):
    return {
        k: v
        for k, v in worker.metrics().items()
        if k[0].startswith(("callpulse_calls_", "callpulse_outbound_"))
    }


def test_the_rocksdb_store_recovers_after_sigkill(broker, worker_factory, tmp_path):
    result = run_cli(broker, "produce", str(write_jsonl(tmp_path / "in.jsonl", SCENARIO)))
    assert result.returncode == 0, result.stderr.decode()
    w = worker_factory(CALLPULSE_CLOCK="event", CALLPULSE_STORE="rocksdb://").start()
    w.wait_for("callpulse_survey_responses_total", 1, queue="sales", scale="csat", band="positive")
    w.wait_for("callpulse_outbound_attempts_total", 3, campaign="renew")
    assert w.value("callpulse_calls_entered_total", queue="sales") == 5  # as counted by hand above
    time.sleep(1)  # idle checkpoints
    before = business_counters(w)
    assert list((tmp_path / "data").rglob("*.db")), "no RocksDB files written"
    w.kill()
    w.start()
    w.wait_for("callpulse_calls_entered_total", 5, queue="sales")
    assert business_counters(w) == before


def summed(workers, name, **labels):
    return sum(w.value(name, **labels) or 0 for w in workers)


def test_two_workers_split_the_queues_and_keep_totals_exact(broker, worker_factory, tmp_path):
    result = run_cli(broker, "produce", str(write_jsonl(tmp_path / "in.jsonl", SCENARIO)))
    assert result.returncode == 0, result.stderr.decode()
    a = worker_factory(CALLPULSE_CLOCK="event", CALLPULSE_DATADIR=str(tmp_path / "a")).start()
    b = worker_factory(CALLPULSE_CLOCK="event", CALLPULSE_DATADIR=str(tmp_path / "b")).start()
    both = [a, b]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        exporters = [w for w in both if w.value("callpulse_calls_entered_total", queue="sales") is not None]
        if (
            summed(both, "callpulse_calls_entered_total", queue="sales") == 5
            and summed(both, "callpulse_outbound_attempts_total", campaign="renew") == 3
            and summed(both, "callpulse_calls_entered_total", queue="overflow") == 2
            and len(exporters) == 1
        ):
            break
        time.sleep(0.5)
    # each queue is exported by exactly one worker (the owner of its partition), so sums are the hand counts
    for name, labels, expected in [
        ("callpulse_calls_entered_total", {"queue": "sales"}, 5),
        ("callpulse_calls_answered_total", {"queue": "sales"}, 2),
        ("callpulse_calls_abandoned_total", {"queue": "sales"}, 2),
        ("callpulse_calls_entered_total", {"queue": "overflow"}, 2),
        ("callpulse_outbound_contacts_total", {"campaign": "renew"}, 2),
    ]:
        assert summed(both, name, **labels) == expected, name
        assert sum(1 for w in both if w.value(name, **labels) is not None) == 1, name
    # the API merges both workers' queues, and forwards one queue to its owner
    for w in both:
        listing = json.loads(w.get("/api/v1/queues"))
        assert [q["queue"] for q in listing["queues"]] == ["overflow", "sales"]
        assert json.loads(w.get("/api/v1/queues/sales"))["windows"]["15m"]["counts"]["entered"] == 5
    # one worker dies: the other takes all partitions over with the same totals
    b.kill()
    a.wait_for("callpulse_calls_entered_total", 5, timeout=120, queue="sales")
    a.wait_for("callpulse_calls_entered_total", 2, timeout=60, queue="overflow")
    a.wait_for("callpulse_outbound_conversions_total", 1, timeout=60, campaign="renew")
    assert a.value("callpulse_calls_abandoned_total", queue="sales") == 2
