"""The domain core alone (no Kafka, no Faust), then the two stages' shells in-process: where a worker's time goes.

    .venv/bin/python bench/core.py [EVENTS] [--scale 150]

Simulated traffic (``lively`` at ``--scale`` times its rate, seed 1; 150 is what ``bench/run.py`` sends)
grouped into 100-event messages by call bucket. Two measurements over the same messages:

1. core: each message is parsed, applied to its bucket, swept, and its facts applied to the KPI engine
   (through their JSON wire form, as between the two agents); events/s and the time of each stage;
2. shells: the worker's ``Sessionizer`` and ``Aggregator`` (app.sessionize, app.aggregate) process the
   messages as their agents would, over four partitions, with checkpoints, facts batching and counters,
   but with sends and changelog writes that complete at once: everything a worker does except Kafka and
   Faust.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.producing import message_key
from streams.events import call_bucket
from streams.facts import to_wire
from streams.kpi import KpiConfig, KpiEngine
from streams.sessions import BucketState, SessionConfig
from streams.simulator import ProfileSimulator, load_profile
from streams.validation import ValidationConfig, parse_message

START_MS = 1_767_258_000_000


def messages_of(n: int, scale: float) -> list[tuple[bytes, bytes]]:
    sim = ProfileSimulator(
        load_profile("lively"), random.Random(1), START_MS, hours=None, scale=scale, seed=1
    )
    buffers: dict[bytes, list[bytes]] = defaultdict(list)
    messages = []
    for e in itertools.islice(sim.run(), n):
        key = message_key(e)
        buffers[key].append(orjson.dumps(e))
        if len(buffers[key]) == 100:
            messages.append((key, b"[" + b",".join(buffers.pop(key)) + b"]"))
    messages.extend((key, b"[" + b",".join(items) + b"]") for key, items in buffers.items())
    return messages


def _bucket(session: SessionConfig) -> BucketState:
    bucket = BucketState(session)
    bucket.defer_agents = True  # as the shell does: an agent's inputs of one message, one walk
    return bucket


def _deliver(
    buckets: dict[bytes, BucketState],
    session: SessionConfig,
    updates: list[Any],
    owner: Callable[[Any], str],
    apply: Callable[[BucketState, Any], list],
    groups: dict[str, list],
) -> list[BucketState]:
    """Updates of one message to their owners' buckets, as the shell sends them at a flush.

    The latest per owner and call, one message per bucket; their facts go into ``groups``. Returns the buckets.
    """
    latest = {(owner(u), u.call_id): u for u in updates}
    by_bucket: dict[bytes, list] = defaultdict(list)
    for update in latest.values():
        by_bucket[call_bucket(owner(update)).encode()].append(update)
    targets = []
    for target_key, target_updates in by_bucket.items():
        target = buckets.get(target_key) or buckets.setdefault(target_key, _bucket(session))
        for update in target_updates:
            for fact in apply(target, update):
                groups[fact.key].append(fact)
        for fact in target.sweep():
            groups[fact.key].append(fact)
        targets.append(target)
    return targets


def core(messages: list[tuple[bytes, bytes]], n: int) -> None:
    validation = ValidationConfig(max_clock_skew_ms=10**13)
    session = SessionConfig()
    buckets: dict[bytes, BucketState] = {}
    engine = KpiEngine(KpiConfig())
    t_parse = t_session = t_aggregate = 0.0
    t = time.perf_counter()
    for offset, (key, value) in enumerate(messages):
        t0 = time.perf_counter()
        parsed, _ = parse_message(value, validation, START_MS)
        t1 = time.perf_counter()
        bucket = buckets.get(key) or buckets.setdefault(key, _bucket(session))
        groups: dict[str, list] = defaultdict(list)
        for event in parsed:
            for fact in bucket.apply(event).facts:
                groups[fact.key].append(fact)
        for fact in bucket.sweep():
            groups[fact.key].append(fact)
        # What the calls changed in their agents' work and did for their callers, applied in those buckets (the
        # shell sends both through calls.events)
        while bucket.outbox:
            updates = list(bucket.outbox)
            bucket.outbox.clear()
            for target in _deliver(
                buckets, session, updates, lambda u: u.agent, BucketState.apply_work, groups
            ):
                bucket.outbox.extend(target.outbox)
                target.outbox.clear()
        updates = list(bucket.caller_outbox)
        bucket.caller_outbox.clear()
        for target in _deliver(
            buckets, session, updates, lambda u: u.caller, BucketState.apply_caller, groups
        ):
            target.callbacks_out.clear()
        bucket.callbacks_out.clear()
        t2 = time.perf_counter()
        for fact_key, facts in groups.items():
            wire = [[key.decode(), offset, [to_wire(f) for f in facts]]]
            for src, src_offset, wire_facts in orjson.loads(orjson.dumps(wire)):
                engine.apply_wire(fact_key, src, src_offset, wire_facts, seq=offset)
        t3 = time.perf_counter()
        t_parse, t_session, t_aggregate = t_parse + t1 - t0, t_session + t2 - t1, t_aggregate + t3 - t2
    elapsed = time.perf_counter() - t
    print(
        f"core:   {n} events in {len(messages)} messages: {elapsed:.2f} s, {n / elapsed:,.0f} events/s "
        f"(parse {t_parse:.2f} s, sessionize {t_session:.2f} s, aggregate {t_aggregate:.2f} s)"
    )


class _Message:
    __slots__ = ("topic", "partition", "offset", "key", "value", "headers")

    def __init__(
        self, topic: str, partition: int, offset: int, key: bytes, value: bytes, headers: Any = None
    ) -> None:
        self.topic, self.partition, self.offset, self.key, self.value = topic, partition, offset, key, value
        self.headers = headers


class _Event:
    __slots__ = ("message",)

    def __init__(self, *fields: Any) -> None:
        self.message = _Message(*fields)


async def shells(messages: list[tuple[bytes, bytes]], n: int) -> None:
    from app.faust_app import build
    from app.settings import Settings

    settings = Settings.from_env(
        {"CALLPULSE_CALLER_KEY": "bench", "CALLPULSE_CLOCK": "event", "CALLPULSE_DATADIR": tempfile.mkdtemp()}
    )
    p = build(settings, embedded=False)
    p.app.loop = asyncio.get_running_loop()
    p.app.finalize()
    loop = asyncio.get_running_loop()

    def done() -> asyncio.Future:
        future = loop.create_future()
        future.set_result(None)
        return future

    sent: list[tuple[bytes, bytes]] = []

    class Topic:
        async def send(self, key: bytes | None = None, value: bytes = b"", **kwargs: Any) -> asyncio.Future:
            sent.append((key or b"", value))
            return done()

    work: list[tuple[bytes, bytes, Any]] = []

    class WorkTopic:
        async def send(
            self, key: bytes | None = None, value: bytes = b"", headers: Any = None, **kwargs: Any
        ) -> asyncio.Future:
            work.append((key or b"", value, headers))
            return done()

    class NullTopic:
        async def send(self, **kwargs: Any) -> asyncio.Future:
            return done()

    p.sessionizer.facts_topic = p.sessionizer.deadletter_topic = Topic()
    p.sessionizer.callbacks_topic = NullTopic()
    p.sessionizer.events_topic = WorkTopic()
    for table in (p.sessionizer.table, p.aggregator.table):
        table.send_changelog = lambda partition, key, value, value_serializer=None: done()

    async def ack(event: Any) -> None:
        return None

    async def run(stage: Any, topic: str, items: list[tuple[bytes, bytes]]) -> float:
        offsets: dict[int, int] = defaultdict(int)
        t = time.perf_counter()
        for key, value in items:
            partition = sum(key) % 4
            await stage.process(_Event(topic, partition, offsets[partition], key, value), ack)
            offsets[partition] += 1
        if stage is p.sessionizer:
            await stage.flush_facts()
            while work:  # work and caller updates, back through calls.events as the shell sends them
                key, value, headers = work.pop(0)
                partition = sum(key) % 4
                event = _Event(topic, partition, offsets[partition], key, value, headers)
                await stage.process(event, ack)
                offsets[partition] += 1
                await stage.flush_facts()
        await stage.wait_checkpoints()
        return time.perf_counter() - t

    with mock.patch("app.compat.event_context"):
        t_sessionizer = await run(p.sessionizer, "calls.events", messages)
        t_aggregator = await run(p.aggregator, "calls.facts", sent)
    total = t_sessionizer + t_aggregator
    print(
        f"shells: {n} events: {total:.2f} s, {n / total:,.0f} events/s (sessionizer {t_sessionizer:.2f} s, "
        f"aggregator {t_aggregator:.2f} s for {len(sent)} facts messages)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("events", type=int, nargs="?", default=200_000)
    parser.add_argument(
        "--scale", type=float, default=150.0, help="times the lively profile's rate (bench/run.py: 150)"
    )
    args = parser.parse_args()
    messages = messages_of(args.events, args.scale)
    core(messages, args.events)
    asyncio.run(shells(messages, args.events))


if __name__ == "__main__":
    main()
