"""The two agents under Faust's ``test_context()``: no broker; every outbound send is mocked (STYLE 6).

Expected values are worked out by hand from the event times in the comments.
"""

import asyncio
import re
from pathlib import Path
from unittest import mock

import orjson
import pytest
from prometheus_client import generate_latest

from app.faust_app import build
from app.settings import Settings

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z (epoch seconds)


def done(value=None):
    fut = asyncio.get_running_loop().create_future()
    fut.set_result(value)
    return fut


class Recorder:
    """Stands in for a Faust topic: records what is sent and returns an already confirmed future."""

    def __init__(self):
        self.sent = []

    async def send(self, key=None, value=None, headers=None, **kwargs):
        self.sent.append({"key": key, "value": value, "headers": dict(headers or [])})
        return done()


@pytest.fixture
async def pipeline(tmp_path):
    return make_pipeline(tmp_path)


def make_pipeline(tmp_path, **env):
    settings = Settings.from_env(
        {
            "CALLPULSE_CALLER_KEY": "k",
            "CALLPULSE_CHECKPOINT_INTERVAL": "0.01",
            "CALLPULSE_CLOCK": "event",
            "CALLPULSE_DATADIR": str(tmp_path),
            **env,
        }
    )
    p = build(settings, embedded=False)
    p.app.loop = asyncio.get_running_loop()
    p.app.finalize()
    p.app.flow_control.resume()
    p.sessionizer.facts_topic = Recorder()
    p.sessionizer.deadletter_topic = Recorder()
    p.sessionizer.events_topic = Recorder()
    changelog = []
    for table in (p.sessionizer.table, p.aggregator.table):

        def send_changelog(partition, key, value, value_serializer=None, _t=table.name):
            changelog.append((_t, partition, key, value))
            return done()

        table.send_changelog = send_changelog
    p.changelog = changelog
    return p


async def wait_for(stage, count):
    for _ in range(500):
        if stage.processed >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"processed {stage.processed} of {count}")


def events_of(call, queue, *steps):
    return [
        {
            "event_id": f"{call}-{i}",
            "type": t,
            "ts": T0 + sec,
            "call_id": call,
            **({"queue": queue} if t == "queue" else {}),
            **extra,
        }
        for i, (t, sec, extra) in enumerate(steps)
    ]


async def run_through(p, messages):
    """Feed (key, value) messages to sessionize, then every facts message it sent to aggregate."""
    async with p.sessionize_agent.test_context() as agent:
        for key, value in messages:
            await agent.put(value, key=key)
        await wait_for(p.sessionizer, len(messages))
        await p.sessionizer.flush_facts()  # facts go out in batches per queue
    facts = p.sessionizer.facts_topic.sent
    p.aggregator.interval_s = 3600  # one checkpoint, at the end
    async with p.aggregate_agent.test_context() as agent:
        for sent in facts:
            await agent.put(sent["value"], key=sent["key"])
        await wait_for(p.aggregator, len(facts))
        p.aggregator.interval_s = 0
        await p.aggregator.checkpoint_idle()  # counters are exported from durable checkpoints
        await p.aggregator.wait_checkpoints()
    return facts


class FakeEvent:
    """What the stages read of a Faust event, for calling ``process`` directly with chosen offsets."""

    def __init__(self, topic, partition, offset, key, value):
        self.message = type(
            "Message",
            (),
            {
                "topic": topic,
                "partition": partition,
                "offset": offset,
                "key": key,
                "value": value,
                "headers": None,
            },
        )()


def sample(p, name, **labels):
    return p.registry.get_sample_value(name, labels)


async def test_events_become_counters_windows_and_dead_letters(pipeline):
    p = pipeline
    answered = events_of(
        "c1",
        "sales",
        ("ring", 0, {}),
        ("queue", 3, {}),
        ("answer", 28, {}),
        ("hangup", 148, {}),
        ("wrapup", 160, {}),
    )
    abandoned = events_of("c2", "sales", ("queue", 10, {}), ("hangup", 16, {}))
    late_answer = events_of("c3", "sales", ("queue", 20, {}), ("hangup", 90, {}))
    late_answer.append({"event_id": "c3-late", "type": "answer", "ts": T0 + 40, "call_id": "c3"})
    messages = [
        (b"1", orjson.dumps(answered)),  # a batch: one message
        (b"2", orjson.dumps(abandoned[0])),
        (b"2", orjson.dumps(abandoned[1])),  # single events
        (b"3", orjson.dumps(late_answer[:2])),
        (b"3", orjson.dumps(late_answer[2])),  # the answer comes after the hangup
        (b"2", orjson.dumps(abandoned[1])),  # a duplicate
        (b"9", b"\xff\xfe not utf-8"),
        (
            b"9",
            orjson.dumps([{"event_id": "x", "type": "queue", "ts": T0, "call_id": "c9"}]),
        ),  # no queue field
    ]
    await run_through(p, messages)

    dead = p.sessionizer.deadletter_topic.sent
    assert [(d["headers"]["reason"], d["headers"]["source_offset"]) for d in dead] == [
        (b"not_utf8", b"6"),
        (b"missing_field", b"7"),
    ]
    assert dead[0]["value"] == b"\xff\xfe not utf-8"
    assert (
        dead[1]["headers"]["source_topic"] == b"calls.events"
        and dead[1]["headers"]["source_partition"] == b"0"
    )
    assert orjson.loads(dead[1]["value"])["event_id"] == "x"
    assert b"queue" in dead[1]["headers"]["error"]

    # sales: entered 3 (c1, c2, c3); answered c1 (wait 25 s) and c3 (wait 20 s, after its correction);
    # abandoned c2 (wait 6 s, short); offered 3
    q = {"queue": "sales"}
    assert sample(p, "callpulse_calls_entered_total", **q) == 3
    assert sample(p, "callpulse_calls_answered_total", **q) == 2
    assert sample(p, "callpulse_calls_answered_within_sl_total", **q) == 1  # 20 s <= T; 25 s is not
    assert sample(p, "callpulse_calls_short_abandoned_total", **q) == 1
    assert sample(p, "callpulse_calls_offered_total", **q) == 3
    # c3's hangup first counted an abandon (wait 70 s); the answer retracted it before the checkpoint: only c2
    assert sample(p, "callpulse_calls_abandoned_total", **q) == 1
    # corrections: c3's abandon, and c1's completion moved to its wrap-up (live status changes are not counted)
    assert sample(p, "callpulse_facts_retracted_total") == 2
    assert sample(p, "callpulse_events_duplicate_total") == 1
    assert sample(p, "callpulse_events_total", type="queue") == 3  # c1, c2, c3; c9 failed validation
    assert sample(p, "callpulse_events_rejected_total", reason="not_utf8") == 1
    # Clock is event time: now = 160 s, the wrap-up. Window 15m holds all; abandon rate (1 - 1) / (3 - 1) = 0;
    # SL = 1 / (2 + 1 - 1) = 0.5; ASA = (25 + 20) / 2 = 22.5; AHT: c1 talk 120 + acw 12, c3 talk 50: 182 / 2 = 91
    w = {"queue": "sales", "window": "15m"}
    assert sample(p, "callpulse_abandonment_ratio", **w) == 0.0
    assert sample(p, "callpulse_service_level_ratio", **w) == 0.5
    assert sample(p, "callpulse_average_speed_of_answer_seconds", **w) == 22.5
    assert sample(p, "callpulse_average_handle_time_seconds", **w) == 91.0
    assert sample(p, "callpulse_longest_wait_seconds", **w) == 25.0
    assert sample(p, "callpulse_queue_wait_seconds_bucket", queue="sales", outcome="answered", le="20.0") == 1
    assert sample(p, "callpulse_queue_wait_seconds_bucket", queue="sales", outcome="answered", le="30.0") == 2
    text = generate_latest(p.registry).decode()
    assert "callpulse_faust_messages_received_total" in text


async def test_checkpoints_write_each_changed_key_once_and_restore_exactly(pipeline):
    p = pipeline
    p.sessionizer.interval_s = 3600  # no checkpoint until asked
    events = events_of("c1", "q", ("queue", 0, {}), ("answer", 5, {}), ("hangup", 65, {}))
    async with p.sessionize_agent.test_context() as agent:
        for e in events:
            await agent.put(orjson.dumps(e), key=b"7")
        await wait_for(p.sessionizer, 3)
        assert p.changelog == []
        with mock.patch.object(p.sessionizer, "interval_s", 0):
            await agent.put(
                orjson.dumps({"event_id": "c2-0", "type": "ring", "ts": T0 + 70, "call_id": "c2"}), key=b"7"
            )
            await wait_for(p.sessionizer, 4)
            await p.sessionizer.wait_checkpoints()
    # four messages of one bucket: one changelog write of that key, holding the last offset applied, then
    # the partition's resume point
    assert [(t, key) for t, _, key, _ in p.changelog] == [("sessions", b"7"), ("sessions", b"\x00next|0")]
    snapshot = orjson.loads(p.changelog[0][3])
    assert snapshot["hw"] == 3 and set(snapshot["calls"]) == {"c1", "c2"}
    assert orjson.loads(p.changelog[1][3]) == {"p": 0, "next": 4}


async def test_counters_are_exported_only_once_their_checkpoint_is_durable(pipeline):
    p = pipeline
    a = p.aggregator
    a.interval_s = 3600
    acks = []

    async def ack(event):
        acks.append(event.message.offset)

    facts = [["b1", 0, [["entered", T0 * 1000, 1]]]]
    await a.process(FakeEvent("calls.facts", 2, 0, b"q:q", orjson.dumps(facts)), ack)
    assert p.engine.keys["q:q"].totals == {"entered": 1}
    assert sample(p, "callpulse_calls_entered_total", queue="q") == 0  # applied, not yet durable
    a.interval_s = 0
    with mock.patch("app.compat.event_context"):
        await a.checkpoint_idle()
        await a.wait_checkpoints()
    assert acks == [0]
    assert sample(p, "callpulse_calls_entered_total", queue="q") == 1
    from app import compat

    assert compat.CHECKPOINTED[("calls.facts", 2)] == 1  # the commit offset follows the durable checkpoint


async def test_a_replayed_message_is_not_applied_twice(pipeline):
    p = pipeline
    s = p.sessionizer
    acks = []

    async def ack(event):
        acks.append(event.message.offset)

    def Ev(offset, value):
        return FakeEvent("calls.events", 0, offset, b"5", value)

    value = orjson.dumps(events_of("c1", "q", ("queue", 0, {})))
    s.interval_s = 0
    await s.process(Ev(0, value), ack)
    await s.wait_checkpoints()
    assert len(s.facts_topic.sent) == 1 and acks == [0]
    # a restart: the working state is gone, the checkpointed store has it; the same offset comes again
    s.reset()
    await s.process(Ev(0, value), ack)
    await s.wait_checkpoints()
    assert len(s.facts_topic.sent) == 1  # skipped: offset 0 <= the bucket's persisted hw
    assert acks == [0, 0]
    # the aggregator counts a re-emitted batch once
    sent = s.facts_topic.sent[0]
    a = p.aggregator
    a.interval_s = 0
    await a.process(FakeEvent("calls.facts", 0, 0, sent["key"], sent["value"]), ack)
    await a.process(FakeEvent("calls.facts", 0, 1, sent["key"], sent["value"]), ack)
    await a.wait_checkpoints()
    assert p.engine.keys["q:q"].totals == {"entered": 1}


async def test_a_send_the_broker_refused_stops_the_worker_and_acks_nothing(pipeline):
    s = pipeline.sessionizer
    s.interval_s = 0
    fatal, acks = [], []

    async def on_fatal(exc):
        fatal.append(exc)

    async def ack(event):
        acks.append(event)

    async def failing_send(**kwargs):
        fut = asyncio.get_running_loop().create_future()
        fut.set_exception(RuntimeError("broker gone"))
        return fut

    s.on_fatal = on_fatal
    s.facts_topic.send = failing_send
    await s.process(
        FakeEvent("calls.events", 0, 0, b"5", orjson.dumps(events_of("c1", "q", ("queue", 0, {})))), ack
    )
    with pytest.raises(RuntimeError, match="broker gone"):
        await s.wait_checkpoints()
    assert [str(e) for e in fatal] == ["broker gone"] and acks == []
    assert pipeline.changelog == []


def revoke_during_sends(stage, topic_attr):
    """Make ``stage.<topic_attr>`` revoke the partition (a rebalance) while it sends; return the recorder."""
    recorder = getattr(stage, topic_attr)

    async def send_then_rebalance(**kwargs):
        stage.reset()
        return await recorder.send(**kwargs)

    setattr(stage, topic_attr, type("T", (), {"send": staticmethod(send_then_rebalance)})())
    return recorder


async def test_a_rebalance_during_a_message_leaves_nothing_half_applied(pipeline):
    s = pipeline.sessionizer
    s.interval_s = 3600
    recorder = revoke_during_sends(s, "deadletter_topic")  # revoked while the dead letter is being sent

    async def ack(event):
        raise AssertionError("nothing may be acknowledged")

    message = events_of("c1", "q", ("queue", 0, {})) + [{"event_id": "bad", "type": "nonsense"}]
    await s.process(FakeEvent("calls.events", 0, 0, b"5", orjson.dumps(message)), ack)
    assert s.dirty == {} and s.unacked == {} and s.processed == 0 and s.facts_buffer == {}
    s.deadletter_topic = recorder
    s.interval_s = 0
    s.ack = ack
    await s.checkpoint_idle()  # nothing to checkpoint, no KeyError
    await s.wait_checkpoints()
    assert pipeline.changelog == []


async def test_a_rebalance_during_a_facts_flush_stops_it_cleanly(pipeline):
    # Two queues, so the flush sends two messages; the partition is revoked during the first send.
    s = pipeline.sessionizer
    s.interval_s = 3600
    recorder = revoke_during_sends(s, "facts_topic")

    async def ack(event):
        return None

    message = events_of("c1", "q", ("queue", 0, {})) + events_of("c2", "r", ("queue", 0, {}))
    await s.process(FakeEvent("calls.events", 0, 0, b"5", orjson.dumps(message)), ack)
    await s.flush_facts()  # before: RuntimeError, the buffer changed size during iteration
    assert [sent["key"] for sent in recorder.sent] == [b"q:q"] and s.facts_buffer == {} and s.buffered == 0


async def test_a_rebalance_during_a_checkpoints_flush_abandons_the_checkpoint(pipeline):
    s = pipeline.sessionizer
    s.interval_s = 3600

    async def ack(event):
        raise AssertionError("nothing may be acknowledged")

    await s.process(
        FakeEvent("calls.events", 0, 0, b"5", orjson.dumps(events_of("c1", "q", ("queue", 0, {})))), ack
    )
    revoke_during_sends(s, "facts_topic")
    async with s.lock:
        await s.checkpoint(0, ack)  # before: KeyError, the partition's expected offset was forgotten
    await s.wait_checkpoints()
    assert pipeline.changelog == []


async def test_an_event_that_does_not_fit_its_call_is_counted_and_changes_nothing(pipeline):
    p = pipeline
    # c1 waits in sales and is put on hold before any agent answered it: no transition admits that hold.
    # c2 abandons, then its channel hangs up: expected, not counted.
    calls = events_of("c1", "sales", ("queue", 0, {}), ("hold", 5, {})) + events_of(
        "c2", "sales", ("queue", 1, {}), ("abandon", 9, {}), ("hangup", 9, {})
    )
    await run_through(p, [(b"1", orjson.dumps(calls))])
    assert sample(p, "callpulse_events_unexpected_total", type="hold", state="queued") == 1
    assert sample(p, "callpulse_events_unexpected_total", type="unhold", state="queued") == 0  # pre-created
    assert (
        sample(p, "callpulse_events_unexpected_total", type="hangup", state="ended") is None
    )  # admitted there
    assert sample(p, "callpulse_calls_entered_total", queue="sales") == 2
    assert sample(p, "callpulse_calls_abandoned_total", queue="sales") == 1
    # c1 still waits (the hold changed nothing): one caller waiting
    assert sample(p, "callpulse_calls_waiting", queue="sales") == 1


async def test_every_metric_of_a_worker_is_documented(pipeline):
    # docs/metrics.md, and the windowed gauges in the KPI table of docs/kpis.md
    docs = "".join(
        (Path(__file__).resolve().parents[2] / "docs" / page).read_text()
        for page in ("metrics.md", "kpis.md")
    )
    names = {family.name for family in pipeline.registry.collect()}
    missing = sorted(
        n
        for n in names
        if n.startswith("callpulse_")
        and not n.startswith("callpulse_faust_")
        and not re.search(rf"`{n}(_total)?[`{{]", docs)
    )
    assert not missing
    assert len(names) > 40  # the families of a worker with no data yet


async def test_an_answered_call_sends_the_agent_s_work_to_its_bucket_and_it_comes_back_as_agent_facts(
    pipeline,
):
    from streams.events import call_bucket

    p = pipeline
    s = p.sessionizer
    s.interval_s = 3600

    async def ack(event):
        return None

    call = events_of("c1", "sales", ("queue", 0, {}), ("answer", 10, {"agent": "ann"}), ("hangup", 70, {}))
    await s.process(FakeEvent("calls.events", 0, 0, b"5", orjson.dumps(call)), ack)
    await s.flush_facts()
    [work] = s.events_topic.sent
    # ann answered at 10 and the call ended at 70 (queue sales; no wrap-up event: -1; no hold, no transfer)
    assert work["key"] == call_bucket("ann").encode()
    assert work["headers"] == {"callpulse-internal": b"work"}
    assert orjson.loads(work["value"]) == [
        ["ann", "c1", [["sales", (T0 + 10) * 1000, (T0 + 70) * 1000, -1, 0, 0]]]
    ]
    # back in calls.events, under ann's bucket: ann was on the call in sales 10-70; she is no member of sales
    # (no event said she joined it, the queues file names no members): nothing after the call
    s.facts_topic.sent.clear()
    message = FakeEvent("calls.events", 1, 0, work["key"], work["value"])
    message.message.headers = [("callpulse-internal", b"work")]
    await s.process(message, ack)
    await s.flush_facts()
    assert s.deadletter_topic.sent == []
    facts = sorted(
        (sent["key"].decode(), *f)
        for sent in s.facts_topic.sent
        for _src, _off, fs in orjson.loads(sent["value"])
        for f in fs
    )
    ms = lambda sec: (T0 + sec) * 1000  # noqa: E731
    assert facts == [
        # ann's own figures: her overall state (on the call from sales), one call answered, completed with
        # 60 s of talk, no hold, no wrap-up, not transferred
        ("a:ann", "agent_time", ms(70), 1, "ann", "on_call", ms(10), "sales"),
        ("a:ann", "answered", ms(10), 1, 0, "c1"),
        ("a:ann", "completed", ms(70), 1, 60_000, 0, 0, 0, 0),
        ("q:sales", "agent_time", ms(70), 1, "ann", "on_call", ms(10), ""),
    ]
    # a message with the header that is no work update changes nothing and is dead-lettered
    bad = FakeEvent("calls.events", 1, 1, work["key"], b'[["ann"]]')
    bad.message.headers = [("callpulse-internal", b"work")]
    await s.process(bad, ack)
    [dead] = s.deadletter_topic.sent
    assert dead["headers"]["reason"] == b"invalid_json" and dead["value"] == b'[["ann"]]'


@pytest.mark.parametrize("on", [True, False])
async def test_per_agent_series_only_when_asked_for(tmp_path, on):
    p = make_pipeline(tmp_path, CALLPULSE_AGENT_METRICS="true" if on else "false")
    s = p.sessionizer

    async def ack(event):
        return None

    # ann answers at 10 and hangs up at 70 (60 s of talk); bob's phone rang to the timeout at 5
    call = events_of(
        "c1",
        "sales",
        ("queue", 0, {}),
        ("agent_missed", 5, {"agent": "bob"}),
        ("answer", 10, {"agent": "ann"}),
        ("hangup", 70, {}),
    )
    await s.process(FakeEvent("calls.events", 0, 0, b"5", orjson.dumps(call)), ack)
    await s.flush_facts()
    [work] = s.events_topic.sent
    message = FakeEvent("calls.events", 1, 0, work["key"], work["value"])
    message.message.headers = [("callpulse-internal", b"work")]
    await s.process(message, ack)
    await s.flush_facts()
    a = p.aggregator
    a.interval_s = 0
    for i, sent in enumerate(s.facts_topic.sent):
        await a.process(FakeEvent("calls.facts", 0, i, sent["key"], sent["value"]), ack)
    await a.wait_checkpoints()
    names = {family.name for family in p.registry.collect()}
    if not on:
        queue_level = {"callpulse_agent_missed", "callpulse_agent_work_late"}  # per queue, and the pipeline's
        assert not [n for n in names if n.startswith("callpulse_agent_") and n not in queue_level]
        return
    for agent, answered, missed, talk in (("ann", 1, 0, 60.0), ("bob", 0, 1, 0.0)):
        assert sample(p, "callpulse_agent_calls_answered_total", agent=agent) == answered
        assert sample(p, "callpulse_agent_rings_missed_total", agent=agent) == missed
        assert sample(p, "callpulse_agent_talk_seconds_total", agent=agent) == talk
    docs = (Path(__file__).resolve().parents[2] / "docs" / "metrics.md").read_text()
    per_agent = sorted(n for n in names if n.startswith("callpulse_agent_"))
    assert len(per_agent) == 8 and not [n for n in per_agent if not re.search(rf"`{n}(_total)?[`{{]", docs)]
    # ann was on the call from sales (not a member of it: nothing after the call): logged off now
    assert [sample(p, "callpulse_agent_state", agent="ann", state=st) for st in ("available", "on_call")] == [
        0,
        0,
    ]
