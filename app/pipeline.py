"""The two stateful stages as thin shells around the domain core, with checkpointed state.

Both stages keep their working state in memory and persist it by *checkpoints*, per partition: every
``CALLPULSE_CHECKPOINT_INTERVAL`` seconds (or 5,000 messages) of a partition,

1. every send made so far (facts, dead letters) is awaited until the broker confirmed it;
2. the keys the partition changed are written to the table's store and changelog (partition = the source
   partition) and those writes are awaited;
3. only then are the partition's messages acknowledged, so Faust commits their offsets.

A crash therefore loses nothing: messages after the last checkpoint are delivered again and re-applied to
the last checkpointed state. Nothing counts twice either: every persisted key remembers the offset of the
last message applied to it (``hw``) and skips what it already holds, and the aggregator remembers, per
sessionizer bucket, the last source offset whose facts it applied, so re-emitted facts count once.
A message costs no table write of its own: a checkpoint writes each changed key once, and last the
partition's resume point. Every offset of a partition is applied, in order: a stage that is handed a later
offset than it expects first reads the skipped messages from the broker itself (``admit``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson

from app import compat
from app.batches import Undecodable
from app.kafka import dead_letter_headers
from app.store import (
    bucket_key,
    chunk_key,
    minute_key,
    parse_aggregate_key,
    resume_key,
    resume_offset,
    resume_value,
    state_key,
)
from streams.calls import BucketState, SessionConfig
from streams.facts import LIVE_KINDS, Fact, to_wire
from streams.kpi import KeyState, KpiEngine
from streams.validation import ValidationConfig, parse_message

log = logging.getLogger(__name__)

#: Acknowledge a Faust event (the noack stream's ``ack``).
Ack = Callable[[Any], Awaitable[Any]]
#: Checkpoint at the latest after this many messages of a partition.
CHECKPOINT_MAX_MESSAGES = 5000
#: Facts are sent in batches per queue/campaign: when this many are buffered, or the oldest waited FLUSH_S.
FLUSH_FACTS = 2000
FLUSH_S = 0.02


async def _no_fatal_handler(exc: BaseException) -> None:
    return None


#: ``fetch_range(partition, start, end)``: the messages of the stage's topic partition with offsets in
#: [start, end), in order, read from the broker (the Faust shell supplies it; app.kafka.fetch_range).
FetchRange = Callable[[int, int, int], AsyncIterator[Any]]


async def _no_fetch(partition: int, start: int, end: int) -> AsyncIterator[Any]:
    msg = f"no fetch_range: cannot read offsets {start} to {end - 1} of partition {partition}"
    raise RuntimeError(msg)
    yield  # an async generator  # pragma: no cover


class _CheckpointedStage:
    """Per-partition bookkeeping shared by both stages: unacknowledged events, unconfirmed sends, timing.

    ``lock`` serialises message processing and checkpoints (the agent and the idle-checkpoint timer).
    """

    def __init__(self, table: Any, interval_s: float) -> None:
        self.table = table
        self.interval_s = interval_s
        self.lock = asyncio.Lock()
        self.ack: Ack | None = None
        #: Called with the exception when a checkpoint fails (the Faust shell passes ``app.crash``).
        self.on_fatal: Callable[[BaseException], Awaitable[Any]] = _no_fatal_handler
        self.unacked: dict[int, list[Any]] = defaultdict(list)
        self.pending: list[Awaitable[Any]] = []
        self.last_checkpoint: dict[int, float] = {}
        #: Bumped by every rebalance: work started under an older generation is abandoned.
        self.generation = 0
        #: Messages processed since start (tests wait on it).
        self.processed = 0
        #: partition -> the checkpoint being persisted in the background
        self.inflight: dict[int, asyncio.Future] = {}
        self.failed: BaseException | None = None
        #: Reads messages the consumer skipped (see ``admit``).
        self.fetch_range: FetchRange = _no_fetch
        #: partition -> the next offset to apply: every offset is applied, in order (see ``admit``)
        self.expected: dict[int, int] = {}
        #: Batches of the stage's topic that the consumer could not decode and skipped (app.batches); any
        #: thread appends, the stage dead-letters them (``set_aside``).
        self.undecodable: collections.deque[Undecodable] = collections.deque()
        #: partition -> {end: start} of the undecodable batches dead-lettered and not yet passed
        self.skipped: dict[int, dict[int, int]] = {}
        #: Where rejected input goes (the Faust shell sets both): a topic with ``send``, and
        #: callpulse_events_rejected_total.
        self.deadletter_topic: Any = None
        self.rejected: Any = None

    def reset(self) -> None:
        """Forget everything not checkpointed (after a rebalance it is replayed from the committed offsets)."""
        compat.forget_checkpoints()
        self.generation += 1
        self.unacked.clear()
        self.pending.clear()
        self.last_checkpoint.clear()
        self.expected.clear()
        # Their dead letters may not be confirmed: the replay reports and dead-letters them again.
        self.undecodable.clear()
        self.skipped.clear()

    async def process(self, event: Any, ack: Ack) -> None:
        """Apply one message unless its key already holds it; checkpoint the partition when due."""
        self.ack = ack
        async with self.lock:
            generation = self.generation
            message = event.message
            partition = message.partition
            if not await self.admit(message.topic, partition, message.offset):
                return  # revoked, or the worker is stopping: the message is replayed from the committed offset
            self.unacked[partition].append(event)
            await self._apply_message(event.message)
            if generation != self.generation:  # a rebalance came in between: the message is replayed
                return
            self.processed += 1
            if self.due(partition):
                await self.checkpoint(partition, ack)

    async def admit(self, topic: str, partition: int, offset: int) -> bool:
        """Whether to apply the message at ``offset`` now: every offset of a partition is applied, in order.

        An offset below the expected one is a redelivery: each key's replay guard skips what it already
        holds. An offset beyond it means the consumer skipped messages: faust-streaming 0.15.3 drops those
        it buffered between the seek to the committed offsets and the end of its recovery, when it clears
        the stream buffers (seen: 75 and 310 messages of a partition after a restart, never delivered
        again). The stage then reads the skipped offsets from the broker itself and applies them first;
        offsets that do not exist (compaction, transaction markers, retention) simply yield nothing. If they
        cannot be read, the worker stops: a restart replays from the last checkpoint.
        """
        expected = self.expected.get(partition)
        if expected is None:
            expected = self.expected[partition] = self.resume_offset(partition)
        if offset < expected:
            return True
        if offset > expected:
            if self.undecodable:
                await self.set_aside()
            expected = self.past_skipped(partition, expected)
        if offset > expected:
            generation = self.generation
            applied = 0
            try:
                async for message in self.fetch_range(partition, expected, offset):
                    await self._apply_message(message)
                    if generation != self.generation:
                        return False
                    applied += 1
            except Exception as exc:
                log.critical("%s[%d]: offsets %d to %d were skipped by the consumer and cannot be read, stopping "
                             "the worker: %r", topic, partition, expected, offset - 1, exc)
                self.failed = exc
                await self.on_fatal(exc)
                return False
            log.warning("%s[%d]: the consumer skipped offsets %d to %d; read %d messages of them from the broker "
                        "and applied them first", topic, partition, expected, offset - 1, applied)
            self.processed += applied
            if self.undecodable:  # the range reader met an undecodable batch
                await self.set_aside()
        self.expected[partition] = offset + 1
        return True

    async def set_aside(self) -> None:
        """Dead-letter the undecodable batches reported so far (lock held), and remember the offsets each
        covered: they are no gap for ``admit`` to read again."""
        while self.undecodable:
            batch = self.undecodable.popleft()
            ranges = self.skipped.setdefault(batch.partition, {})
            if batch.end in ranges:  # reported by both Faust's consumer and the stage's range reader
                ranges[batch.end] = min(ranges[batch.end], batch.start)
                continue
            ranges[batch.end] = batch.start
            await self.dead_letter(batch.raw, "undecodable_batch", batch.error, batch.topic, batch.partition,
                                   batch.start, (("source_last_offset", str(batch.end - 1).encode()),))

    def past_skipped(self, partition: int, expected: int) -> int:
        """``expected`` moved past the undecodable batches that begin at it."""
        ranges = self.skipped.get(partition)
        moved = True
        while ranges and moved:
            moved = False
            for end, start in list(ranges.items()):
                if end <= expected:
                    del ranges[end]  # passed
                elif start <= expected:
                    expected, moved = end, True
        return expected

    async def dead_letter(self, value: bytes, reason: str, error: str, topic: str, partition: int, offset: int,
                          extra: tuple[tuple[str, bytes], ...] = ()) -> None:
        """Send ``value`` to calls.deadletter with the reason and where it came from (confirmed at the
        next checkpoint, like the facts)."""
        self.rejected.labels(reason).inc()
        headers = dead_letter_headers(reason, error, topic, partition, offset, extra)
        self.pending.append(await self.deadletter_topic.send(value=value, headers=headers))

    def resume_offset(self, partition: int) -> int:
        """The next offset to apply, as of the partition's last durable checkpoint (0 before the first)."""
        return resume_offset(self.table.data.get(resume_key(partition)))

    async def _apply_message(self, message: Any) -> None:
        raise NotImplementedError

    def due(self, partition: int) -> bool:
        last = self.last_checkpoint.setdefault(partition, time.monotonic())
        return time.monotonic() - last >= self.interval_s or len(self.unacked[partition]) >= CHECKPOINT_MAX_MESSAGES

    async def checkpoint_idle(self) -> None:
        """Checkpoint partitions whose last messages wait for a checkpoint that no new message will trigger;
        dead-letter undecodable batches that no later message of their partition brought up."""
        if self.undecodable:
            async with self.lock:
                await self.set_aside()
        if self.ack is None:
            return
        async with self.lock:
            for partition in [p for p, events in self.unacked.items() if events and self.due(p)]:
                await self.checkpoint(partition, self.ack)

    def _write(self, partition: int, items: list[tuple[bytes, bytes | None]]) -> list[Awaitable[Any]]:
        data = self.table.data
        futures = []
        for key, value in items:
            if value is None:
                if key in data:
                    del data[key]
                futures.append(self.table.send_changelog(partition, key, None, value_serializer="raw"))
            else:
                data[key] = value
                futures.append(self.table.send_changelog(partition, key, value))
        return futures

    async def checkpoint(self, partition: int, ack: Ack) -> None:
        """Snapshot the partition now (lock held) and persist it in the background.

        The snapshot takes the sends made so far, the changed keys (as bytes) and the messages to
        acknowledge. The background task, chained after the partition's previous one, confirms the sends,
        then writes and confirms the keys, and only then acknowledges the messages: the order that makes a
        crash lose nothing. Processing goes on meanwhile.
        """
        generation = self.generation
        await self.before_checkpoint()
        if generation != self.generation:  # revoked while the buffered facts went out: nothing to checkpoint
            return
        pending, self.pending = self.pending, []
        items, staged = self.dirty_items(partition)
        # Last, so that a checkpoint cut short leaves the resume point of the one before.
        items.append((resume_key(partition), resume_value(partition, self.expected[partition])))
        events = self.unacked.pop(partition, [])
        self.last_checkpoint[partition] = time.monotonic()
        previous = self.inflight.get(partition)
        self.inflight[partition] = asyncio.ensure_future(
            self._persist(partition, previous, pending, items, staged, events, ack, self.generation))

    async def _persist(self, partition: int, previous: asyncio.Future | None, pending: list[Awaitable[Any]],
                       items: list[tuple[bytes, bytes | None]], staged: Any, events: list[Any], ack: Ack,
                       generation: int) -> None:
        if previous is not None:
            await previous
        try:
            if pending:
                await asyncio.gather(*pending)
            if generation != self.generation:
                return
            with compat.event_context(events[-1]) if events else contextlib.nullcontext():
                futures = self._write(partition, items)
            if futures:
                await asyncio.gather(*futures)
        except Exception as exc:
            # A send the broker did not take (after the producer's retries): what it carried can only be
            # recovered by replaying from the last checkpoint, which a restart does. Stop the worker.
            log.critical("checkpoint of partition %d failed, stopping the worker: %r", partition, exc)
            self.failed = exc
            await self.on_fatal(exc)
            return
        if generation != self.generation:
            return
        self.confirmed(staged)
        for event in events:
            await ack(event)
        if events:
            last = events[-1].message
            compat.checkpointed(last.topic, partition, last.offset + 1)

    async def wait_checkpoints(self) -> None:
        """Wait for the checkpoints under way (tests, shutdown); raise if one failed."""
        while self.inflight:
            tasks = list(self.inflight.values())
            self.inflight = {}
            await asyncio.gather(*tasks)
        if self.failed is not None:
            raise self.failed

    async def before_checkpoint(self) -> None:
        """Send what is buffered: a checkpoint confirms every send made before it."""

    def dirty_items(self, partition: int) -> tuple[list[tuple[bytes, bytes | None]], Any]:
        raise NotImplementedError

    def confirmed(self, staged: Any) -> None:
        """A checkpoint is durable (``staged``: what ``dirty_items`` handed over)."""


class PipelineCounters:
    """What the stages count about themselves (plain Prometheus counters, see app.metrics)."""

    def __init__(self, events: Any, rejected: Any, duplicate: Any, late: Any, retracted: Any) -> None:
        self.events = events
        self.rejected = rejected
        self.duplicate = duplicate
        self.late = late
        self.retracted = retracted


class Sessionizer(_CheckpointedStage):
    """calls.events -> calls.facts (+ calls.deadletter). State: one ``BucketState`` per message key."""

    def __init__(self, table: Any, facts_topic: Any, deadletter_topic: Any, session: SessionConfig,
                 validation: ValidationConfig, counters: PipelineCounters, interval_s: float,
                 wall_ms: Callable[[], int] = lambda: int(time.time() * 1000)) -> None:
        super().__init__(table, interval_s)
        self.facts_topic = facts_topic
        self.deadletter_topic = deadletter_topic
        self.rejected = counters.rejected
        self.session = session
        self.validation = validation
        self.counters = counters
        self.wall_ms = wall_ms
        self.buckets: dict[bytes, BucketState] = {}
        self.dirty: dict[int, set[bytes]] = defaultdict(set)
        #: fact key -> groups [source key, source offset, facts] not yet sent; one message per key at a flush
        self.facts_buffer: dict[str, list[list]] = {}
        self.buffered = 0
        self.buffered_since = 0.0
        #: callpulse_events_total's child per event type (a labels() look-up costs a lock and a dict)
        self.events_by_type: dict[str, Any] = {}

    def reset(self) -> None:
        super().reset()
        self.buckets.clear()
        self.dirty.clear()
        self.facts_buffer.clear()
        self.buffered = 0

    def bucket(self, key: bytes) -> BucketState:
        bucket = self.buckets.get(key)
        if bucket is None:
            data = self.table.data
            raw = data.get(key)

            def load_chunk(chunk: int, slot: int) -> dict | None:
                value = data.get(chunk_key(key, chunk, slot))
                return orjson.loads(value) if value else None

            bucket = BucketState.restore(orjson.loads(raw), self.session, load_chunk) if raw else BucketState(self.session)
            self.buckets[key] = bucket
        return bucket

    def dirty_items(self, partition: int) -> tuple[list[tuple[bytes, bytes | None]], Any]:
        items: list[tuple[bytes, bytes | None]] = []
        for key in self.dirty.pop(partition, ()):
            bucket = self.buckets[key]
            # New chunk versions, the bucket naming them, then the old versions' deletion: a checkpoint cut
            # short leaves a prefix of these, and every prefix restores a consistent bucket.
            writes, deletes = bucket.checkpoint_chunks()
            for chunk, slot, tombstones in writes:
                items.append((chunk_key(key, chunk, slot), orjson.dumps(tombstones)))
            snapshot = bucket.snapshot()
            snapshot["p"] = partition
            items.append((key, orjson.dumps(snapshot)))
            for chunk, slot in deletes:
                items.append((chunk_key(key, chunk, slot), None))
        return items, None

    async def before_checkpoint(self) -> None:
        await self.flush_facts()

    async def flush_facts(self) -> None:
        """Send the buffered facts: one message per fact key, holding its groups in order."""
        buffer, self.facts_buffer, self.buffered = self.facts_buffer, {}, 0
        generation = self.generation
        for fact_key, groups in buffer.items():
            if generation != self.generation:  # revoked meanwhile: the new owner replays these messages
                return
            self.pending.append(await self.facts_topic.send(key=fact_key.encode("utf-8"), value=orjson.dumps(groups)))

    def flush_due(self) -> bool:
        """Whether buffered facts have waited FLUSH_S."""
        return bool(self.buffered) and time.monotonic() - self.buffered_since >= FLUSH_S

    async def flush_idle(self) -> None:
        """Timer: send facts buffered longer than FLUSH_S when no message came to send them."""
        if self.flush_due():
            async with self.lock:
                await self.flush_facts()

    async def _apply_message(self, message: Any) -> None:
        partition, offset = message.partition, message.offset
        key = bucket_key(message.key, partition)
        bucket = self.bucket(key)
        if offset > bucket.hw:
            generation = self.generation
            await self._apply(bucket, key, message)
            if generation != self.generation:
                return
            bucket.hw = offset
            self.dirty[partition].add(key)

    async def _apply(self, bucket: BucketState, key: bytes, message: Any) -> None:
        """Apply one message to its bucket and buffer the facts; stops if a rebalance comes in meanwhile."""
        generation = self.generation
        counters = self.counters
        events, rejections = parse_message(message.value, self.validation, self.wall_ms())
        for rejection in rejections:
            await self._dead_letter(message, rejection.reason, rejection.error, rejection.raw)
        groups: dict[str, list[Fact]] = defaultdict(list)
        types: dict[str, int] = {}
        for ev in events:
            types[ev.type] = types.get(ev.type, 0) + 1
        by_type = self.events_by_type
        for etype, n in types.items():
            child = by_type.get(etype)
            if child is None:
                child = by_type[etype] = counters.events.labels(etype)
            child.inc(n)
        for ev in events:
            applied = bucket.apply(ev)
            if applied.status == "ok":
                for fact in applied.facts:
                    groups[fact.key].append(fact)
            elif applied.status == "duplicate":
                counters.duplicate.inc()
            else:  # late, too_old
                counters.late.inc()
                await self._dead_letter(message, applied.status, applied.error, _element_bytes(message.value, ev.event_id))
        for fact in bucket.sweep():
            groups[fact.key].append(fact)
        if generation != self.generation:  # revoked while a dead letter was sent: the message is replayed
            return
        src = key.decode("utf-8", "replace")
        retracted = 0
        buffer = self.facts_buffer
        if groups and not self.buffered:
            self.buffered_since = time.monotonic()
        for fact_key, facts in groups.items():
            # Corrections only: a live status replaced as the call moves on is not one.
            retracted += sum(1 for f in facts if f.sign < 0 and f.kind not in LIVE_KINDS)
            buffer.setdefault(fact_key, []).append([src, message.offset, [to_wire(f) for f in facts]])
            self.buffered += len(facts)
        if retracted:
            counters.retracted.inc(retracted)
        if self.buffered >= FLUSH_FACTS or self.flush_due():
            await self.flush_facts()

    async def _dead_letter(self, message: Any, reason: str, error: str, raw: bytes) -> None:
        await self.dead_letter(raw, reason, error, message.topic, message.partition, message.offset)


def _element_bytes(value: bytes, event_id: str) -> bytes:
    """The bytes of one event of a message: the message itself, or its array element re-serialised."""
    decoded = orjson.loads(value)
    if isinstance(decoded, list):
        for element in decoded:
            if isinstance(element, dict) and element.get("event_id") == event_id:
                return orjson.dumps(element)
    return value


class Aggregator(_CheckpointedStage):
    """calls.facts -> the KPI engine. State: one key per queue/campaign plus one key per minute bucket."""

    def __init__(self, table: Any, engine: KpiEngine, interval_s: float) -> None:
        super().__init__(table, interval_s)
        self.engine = engine
        self.dirty: dict[int, set[str]] = defaultdict(set)

    def reset(self) -> None:
        super().reset()
        self.engine.keys.clear()
        self.dirty.clear()

    def confirmed(self, staged: Any) -> None:
        # Counters are exported from durable state only: a restart can never show a value below one already
        # scraped, which Prometheus would take for a counter reset.
        for state, hwm in staged:
            state.exported = hwm

    def load(self, partitions: set[int]) -> None:
        """Load every key of ``partitions`` from the store (after a rebalance, before processing resumes)."""
        states: dict[str, dict] = {}
        minutes: dict[str, dict[int, dict]] = defaultdict(dict)
        for raw_key, raw_value in self.table.data.items():
            if raw_value is None:
                continue
            value = orjson.loads(raw_value)
            if value.get("p") not in partitions:
                continue
            parsed = parse_aggregate_key(raw_key)
            if parsed is None:
                continue
            key, start = parsed
            if start is None:
                states[key] = value
            else:
                minutes[key][start] = value
        for key in set(states) | set(minutes):
            for minute in minutes[key].values():
                minute.pop("p", None)
            if key in states:
                self.engine.keys[key] = KeyState.restore(key, states[key], minutes[key])
            else:  # minutes of a key whose state was never checkpointed: a replay rebuilds it
                self.engine.state(key).minutes = minutes[key]
        log.info("loaded %d queues/campaigns for partitions %s", len(states), sorted(partitions))

    def dirty_items(self, partition: int) -> tuple[list[tuple[bytes, bytes | None]], Any]:
        items: list[tuple[bytes, bytes | None]] = []
        staged: list[tuple[KeyState, dict[str, int]]] = []
        for key in self.dirty.pop(partition, ()):
            state = self.engine.keys[key]
            # Minutes first, the key state last: a checkpoint cut short leaves a prefix (one changelog
            # partition keeps order), so a persisted key state implies its minutes are persisted too.
            for start in state.dirty_minutes:
                minute = dict(state.minutes[start])
                minute["p"] = partition
                items.append((minute_key(key, start), orjson.dumps(minute)))
            for start in state.deleted_minutes:
                items.append((minute_key(key, start), None))
            state.dirty_minutes = set()
            state.deleted_minutes = set()
            self.engine.settle(state)
            snapshot = state.snapshot()
            snapshot["p"] = partition
            items.append((state_key(key), orjson.dumps(snapshot)))
            staged.append((state, dict(state.hwm)))
        return items, staged

    async def _apply_message(self, message: Any) -> None:
        partition, offset = message.partition, message.offset
        key = message.key.decode("utf-8")
        state = self.engine.state(key)
        if offset > state.hw:
            for src, src_offset, facts in orjson.loads(message.value):
                self.engine.apply_wire(key, src, src_offset, facts, seq=offset)
            state.hw = offset
            self.dirty[partition].add(key)
