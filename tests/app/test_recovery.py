"""A crash at any point of the checkpoint protocol loses nothing and counts nothing twice.

A worker killed with SIGKILL leaves behind a prefix of what it sent, in the order it sent it: facts, changelog
writes, and the offsets it committed (a commit follows the changelog writes it covers). For every prefix of a
recorded run, a restarted stage restores its state from the changelog prefix, replays its input from the
committed offset, and must end with the counts worked out by hand below, and with the state of a run that
never crashed.

16 calls, call i queues at 20 i seconds in queue ``q`` (i even) or ``r`` (i odd), shaped by (i // 2) % 4:
0: abandons after 7 s; 1: answered after 12 s, talks 60 s; 2: answered after 30 s, talks 60 s;
3: exits after 50 s (timeout) and hangs up 1 s later. Each queue gets two calls of each shape.
"""

from __future__ import annotations

import asyncio
from unittest import mock

import orjson
import pytest

from app import compat
from app.faust_app import build
from app.settings import Settings
from tests.app.test_agents import FakeEvent, done

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z, a tombstone-chunk boundary

# Per queue, from the shapes above (SL threshold 20 s, short abandon 10 s, the defaults):
EXPECTED = {
    "entered": 8,
    "answered": 4,
    "answered_within_sl": 2,  # 12 s <= 20 s; 30 s is not
    "wait_answered_ms": 2 * (12_000 + 30_000),
    "abandoned": 2,
    "short_abandoned": 2,
    "abandoned_within_sl": 2,
    "wait_abandoned_ms": 2 * 7_000,
    "exited": 2,
    "exited:timeout": 2,
    "wait_exited_ms": 2 * 50_000,
    "completed": 4,
    "talk_ms": 4 * 60_000,
}


def call_events() -> list[tuple[bytes, bytes]]:
    """(message key, value): one event per message, in time order; calls spread over two bucket keys."""
    timed = []
    for i in range(16):
        call, t, queue, shape = f"c{i}", 20 * i, "qr"[i % 2], (i // 2) % 4
        steps = [("queue", t, {"queue": queue})]
        if shape == 0:
            steps.append(("hangup", t + 7, {}))
        elif shape in (1, 2):
            wait = 12 if shape == 1 else 30
            steps += [("answer", t + wait, {}), ("hangup", t + wait + 60, {})]
        else:
            steps += [("exit", t + 50, {"reason": "timeout"}), ("hangup", t + 51, {})]
        key = b"1" if i % 3 else b"2"
        for n, (etype, sec, extra) in enumerate(steps):
            event = {"event_id": f"{call}-{n}", "type": etype, "ts": T0 + sec, "call_id": call, **extra}
            timed.append((sec, i, key, orjson.dumps(event)))
    return [(key, value) for _, _, key, value in sorted(timed)]


class Log:
    """What a worker sent, in order: ("facts", key, value), ("changelog", table, key, value), ("commit", topic, offset)."""

    def __init__(self) -> None:
        self.ops: list[tuple] = []

    async def send(self, key=None, value=None, headers=None, **kwargs):
        self.ops.append(("facts", key, value))
        return done()


@pytest.fixture
async def stages(tmp_path, monkeypatch):
    settings = Settings.from_env(
        {
            "CALLPULSE_CALLER_KEY": "k",
            "CALLPULSE_CLOCK": "event",
            "CALLPULSE_DATADIR": str(tmp_path),
            "CALLPULSE_CHECKPOINT_INTERVAL": "60",
        }
    )
    p = build(settings, embedded=False)
    p.app.loop = asyncio.get_running_loop()
    p.app.finalize()
    log = Log()
    p.sessionizer.facts_topic = p.sessionizer.deadletter_topic = log
    for table in (p.sessionizer.table, p.aggregator.table):

        def send_changelog(partition, key, value, value_serializer=None, _t=table.name):
            log.ops.append(("changelog", _t, key, value))
            return done()

        table.send_changelog = send_changelog
    original = compat.checkpointed

    def checkpointed(topic, partition, next_offset):
        log.ops.append(("commit", topic, next_offset))
        original(topic, partition, next_offset)

    monkeypatch.setattr(compat, "checkpointed", checkpointed)
    monkeypatch.setattr("app.checkpoint.CHECKPOINT_MAX_MESSAGES", 3)  # a checkpoint every 3 messages
    monkeypatch.setattr(
        "app.sessionize.FLUSH_S", 3600
    )  # facts go out at checkpoints only: a deterministic log
    with mock.patch("app.compat.event_context"):
        yield p, log


async def _ack(event):
    return None


async def deliver(stage, topic, messages, offsets):
    """Deliver the messages at ``offsets`` (an offset is a message's index), in that order, like a consumer."""
    for offset in offsets:
        key, value = messages[offset]
        await stage.process(FakeEvent(topic, 0, offset, key, value), _ack)
    async with stage.lock:
        if stage.unacked.get(0):
            await stage.checkpoint(0, _ack)
    await stage.wait_checkpoints()


def restart(stage, ops, table):
    """Kill -9 and restart: the table holds what the changelog prefix holds; return the committed offset."""
    stage.reset()
    data = stage.table.data
    for key in list(data):
        del data[key]
    committed = 0
    for op in ops:
        if op[0] == "changelog" and op[1] == table:
            if op[3] is None:
                data.pop(op[2], None)
            else:
                data[op[2]] = op[3]
        elif op[0] == "commit":
            committed = op[2]
    return committed


def bucket_states(sessionizer):
    """Every bucket (restored from the store where no message came since the restart), slots aside."""
    return {
        key: (b.snapshot()["calls"], b.snapshot()["agents"], b.hw, b.tombstones.by_call)
        for key, b in ((key, sessionizer.bucket(key)) for key in (b"1", b"2"))
    }


def counts_of(totals):
    """The totals but the expected-wait scores (those are compared with the run without a crash)."""
    return {name: n for name, n in totals.items() if not name.startswith("ewt_")}


def key_states(engine):
    return {
        key: (
            s.totals,
            s.hist,
            s.live,
            s.agents,
            s.told,
            s.answers,
            s.stints,
            {m: (v["c"], v["w"]) for m, v in s.minutes.items()},
        )
        for key, s in engine.keys.items()
    }


async def aggregate_all(p, facts):
    a = p.aggregator
    a.reset()
    for key in list(a.table.data):
        del a.table.data[key]
    await deliver(a, "calls.facts", facts, range(len(facts)))


async def test_the_sessionizer_recovers_exactly_from_a_crash_anywhere(stages):
    p, log = stages
    s = p.sessionizer
    events = call_events()
    await deliver(s, "calls.events", events, range(len(events)))
    run = list(log.ops)
    final = bucket_states(s)
    facts = [(op[1], op[2]) for op in run if op[0] == "facts"]
    await aggregate_all(p, facts)
    for queue in "qr":
        assert counts_of(p.engine.keys[f"q:{queue}"].totals) == EXPECTED
    reference = key_states(p.engine)
    assert (
        len(events) == 44 and sum(1 for op in run if op[0] == "commit") == 15
    )  # a checkpoint every 3 messages
    for cut in range(len(run) + 1):
        log.ops = run[:cut]
        committed = restart(s, log.ops, "sessions")
        await deliver(s, "calls.events", events, range(committed, len(events)))
        assert bucket_states(s) == final, cut
        # the aggregator reads the facts of both lives, in order
        await aggregate_all(p, [(op[1], op[2]) for op in log.ops if op[0] == "facts"])
        assert key_states(p.engine) == reference, cut


async def test_the_aggregator_recovers_exactly_from_a_crash_anywhere(stages):
    p, log = stages
    await deliver(p.sessionizer, "calls.events", call_events(), range(44))
    facts = [(op[1], op[2]) for op in log.ops if op[0] == "facts"]
    a = p.aggregator
    log.ops = []
    await aggregate_all(p, facts)
    run = list(log.ops)
    reference = key_states(p.engine)
    for queue in "qr":
        assert counts_of(p.engine.keys[f"q:{queue}"].totals) == EXPECTED
    assert sum(1 for op in run if op[0] == "commit") >= 5
    for cut in range(len(run) + 1):
        log.ops = run[:cut]
        committed = restart(a, log.ops, "aggregates")
        a.load({0})
        await deliver(a, "calls.facts", facts, range(committed, len(facts)))
        assert key_states(p.engine) == reference, cut


class Broker:
    """Stands in for reading a range of the topic from the broker: records each read."""

    def __init__(self, topic, messages, missing=()) -> None:
        self.topic, self.messages, self.missing = topic, messages, set(missing)
        self.reads: list[tuple[int, int, int]] = []

    async def __call__(self, partition, start, end):
        self.reads.append((partition, start, end))
        for offset in range(start, end):
            if offset not in self.missing:
                key, value = self.messages[offset]
                yield FakeEvent(self.topic, 0, offset, key, value).message


async def sessionize_then_aggregate(p, log, deliveries):
    s = p.sessionizer
    events = call_events()
    for offsets in deliveries:
        await deliver(s, "calls.events", events, offsets)
    await aggregate_all(p, [(op[1], op[2]) for op in log.ops if op[0] == "facts"])
    return {queue: counts_of(p.engine.keys[f"q:{queue}"].totals) for queue in "qr"}


async def test_messages_the_consumer_skipped_are_read_from_the_broker_and_applied_first(stages):
    # The consumer delivers 0-10, then 15 onwards: it skipped 11-14 (as Faust does when it clears its
    # buffers after recovery). At 15 the stage reads 11-14 itself and applies them before 15.
    p, log = stages
    broker = p.sessionizer.fetch_range = Broker("calls.events", call_events())
    totals = await sessionize_then_aggregate(p, log, [[*range(11), *range(15, 44)]])
    assert totals == {"q": EXPECTED, "r": EXPECTED}
    assert broker.reads == [(0, 11, 15)]
    assert p.sessionizer.processed == 44


async def test_offsets_that_do_not_exist_are_passed(stages):
    # Offsets 11-14 hold nothing (say, transaction markers): the read yields nothing and 15 follows 10.
    p, log = stages
    broker = p.sessionizer.fetch_range = Broker("calls.events", call_events(), missing=range(11, 15))
    await sessionize_then_aggregate(p, log, [[*range(11), *range(15, 44)]])
    assert broker.reads == [(0, 11, 15)]
    assert p.sessionizer.processed == 11 + 29 and p.sessionizer.expected[0] == 44


async def test_after_a_restart_the_first_offset_is_checked_against_the_resume_point(stages):
    # 0-19 are checkpointed (resume point 20); after a restart the consumer's first message is 25.
    p, log = stages
    s = p.sessionizer
    broker = s.fetch_range = Broker("calls.events", call_events())
    await deliver(s, "calls.events", call_events(), range(20))
    s.reset()
    totals = await sessionize_then_aggregate(p, log, [range(25, 44)])
    assert totals == {"q": EXPECTED, "r": EXPECTED}
    assert broker.reads == [(0, 20, 25)]


async def test_skipped_messages_that_cannot_be_read_stop_the_worker(stages):
    p, log = stages
    s = p.sessionizer
    fatal = []

    async def unreadable(partition, start, end):
        raise TimeoutError("broker gone")
        yield

    async def on_fatal(exc):
        fatal.append(exc)

    s.fetch_range, s.on_fatal = unreadable, on_fatal
    events = call_events()
    for offset in [*range(11), 15]:
        await s.process(FakeEvent("calls.events", 0, offset, *events[offset]), _ack)
    assert [str(e) for e in fatal] == ["broker gone"]
    assert s.processed == 11 and [e.message.offset for e in s.unacked[0]][-1] == 10  # 15 not applied


async def test_an_undecodable_batch_is_dead_lettered_and_is_no_gap(stages):
    # The consumer skipped offsets 11-14 as one undecodable batch and reported it: at 15 the stage
    # dead-letters the batch (once, though the range reader reports it as well) and reads nothing.
    from app.batches import Undecodable

    p, log = stages
    s = p.sessionizer
    dead = []

    class DeadLetters:
        async def send(self, key=None, value=None, headers=None):
            dead.append((value, dict(headers)))
            return done()

    s.deadletter_topic = DeadLetters()
    broker = s.fetch_range = Broker("calls.events", call_events())
    batch = Undecodable("calls.events", 0, 11, 15, b"raw batch", "DecompressionError: snappy: corrupt input")
    events = call_events()
    await deliver(s, "calls.events", events, range(11))
    s.undecodable.extend([batch, batch])
    await deliver(s, "calls.events", events, range(15, 44))
    assert broker.reads == []
    assert s.expected[0] == 44 and s.processed == 11 + 29
    assert dead == [
        (
            b"raw batch",
            {
                "reason": b"undecodable_batch",
                "source_topic": b"calls.events",
                "source_partition": b"0",
                "source_offset": b"11",
                "source_last_offset": b"14",
                "error": b"DecompressionError: snappy: corrupt input",
            },
        )
    ]
    assert (
        p.registry.get_sample_value("callpulse_events_rejected_total", {"reason": "undecodable_batch"}) == 1
    )
