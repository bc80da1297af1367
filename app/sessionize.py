"""The sessionize stage: calls.events -> calls.facts (+ calls.deadletter), around ``streams.sessions``.

Each message is validated (``streams.validation``), its events applied to their call bucket
(``BucketState``), and the facts that result are buffered per fact key and sent in batches (every
FLUSH_FACTS facts, after FLUSH_S, and before every checkpoint). Rejected events go to calls.deadletter with
their reason. The buckets are checkpointed to the ``sessions`` table (app.checkpoint, app.store).

A call's bucket is not its agents' (an agent's events travel under the agent's key): what a call changes in
an agent's work (``WorkUpdate``) is sent back to calls.events under the agent's bucket, marked by the
header ``callpulse-internal: work``, and buffered and flushed with the facts. Its value is a JSON array of
``[agent, call id, [[queue, start, end, wrap-up, hold, transferred], ...]]``. Kafka routes it by the default (murmur2)
partitioner, so producers of calls.events must use that partitioner too (every Kafka client's default).
What a call did for its caller (``CallerUpdate``) goes the same way to the caller's bucket, with the header
``callpulse-internal: caller`` and the value ``[caller, call id, number, [[queue, entered, outcome, left],
...], reached]`` per call; the callback entries the callers' buckets open, change or close go to
calls.callbacks, keyed by queue (``callback_record``).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson

from app.checkpoint import CheckpointedStage
from app.metrics import PipelineCounters
from app.store import bucket_key, chunk_key
from streams.events import call_bucket
from streams.facts import LIVE_KINDS, Fact, to_wire
from streams.sessions import BucketState, SessionConfig
from streams.sessions.agents import Work, WorkUpdate
from streams.sessions.callers import STINT_OUTCOMES, Callback, CallerUpdate, Stint
from streams.validation import ValidationConfig, parse_message

log = logging.getLogger(__name__)

#: Facts are sent in batches per queue/campaign: when this many are buffered, or the oldest waited FLUSH_S.
FLUSH_FACTS = 2000
FLUSH_S = 0.02
#: The header that marks an internal message of calls.events (its value: ``work``).
INTERNAL_HEADER = "callpulse-internal"
WORK_HEADERS = [(INTERNAL_HEADER, b"work")]
#: Caller updates: what a call did, for its caller's bucket (``streams.sessions.callers``).
CALLER_HEADERS = [(INTERNAL_HEADER, b"caller")]


class Sessionizer(CheckpointedStage):
    """calls.events -> calls.facts (+ calls.deadletter). State: one ``BucketState`` per message key."""

    def __init__(
        self,
        table: Any,
        facts_topic: Any,
        deadletter_topic: Any,
        events_topic: Any,
        session: SessionConfig,
        validation: ValidationConfig,
        counters: PipelineCounters,
        interval_s: float,
        wall_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        facts_partition: Callable[[str], int | None] = lambda _key: None,
    ) -> None:
        super().__init__(table, interval_s)
        self.facts_topic = facts_topic
        #: The calls.facts partition of a fact key, when it is not the key's own (a grouped queue's: its group's)
        self.facts_partition = facts_partition
        self.deadletter_topic = deadletter_topic
        self.events_topic = events_topic
        self.rejected = counters.rejected
        self.session = session
        self.validation = validation
        self.counters = counters
        self.wall_ms = wall_ms
        self.buckets: dict[bytes, BucketState] = {}
        self.dirty: dict[int, set[bytes]] = defaultdict(set)
        #: fact key -> groups [source key, source offset, facts] not yet sent; one message per key at a flush
        self.facts_buffer: dict[str, list[list]] = {}
        #: agent bucket -> (agent, call) -> the latest work update [agent, call, works] not yet sent (an upsert:
        #: a later one replaces it); one message per bucket at a flush
        self.work_buffer: dict[str, dict[tuple[str, str], list]] = {}
        #: caller bucket -> (caller, call) -> the latest caller update not yet sent (an upsert, like work)
        self.caller_buffer: dict[str, dict[tuple[str, str], list]] = {}
        #: The changes of the callback list not yet sent to calls.callbacks: (queue, record)
        self.callbacks_buffer: list[tuple[str, dict[str, Any]]] = []
        #: calls.callbacks (None: not sent, as in benchmarks)
        self.callbacks_topic: Any = None
        self.buffered = 0
        self.buffered_since = 0.0
        #: callpulse_events_total's child per event type (a labels() look-up costs a lock and a dict)
        self.events_by_type: dict[str, Any] = {}

    def reset(self) -> None:
        """Also forget the call buckets (reloaded from the table on use), the dirty keys and unsent facts."""
        super().reset()
        self.buckets.clear()
        self.dirty.clear()
        self.facts_buffer.clear()
        self.work_buffer.clear()
        self.buffered = 0

    def bucket(self, key: bytes) -> BucketState:
        """The state of the call bucket ``key``: in memory, else restored from the table, else a new one."""
        bucket = self.buckets.get(key)
        if bucket is None:
            data = self.table.data
            raw = data.get(key)

            def load_chunk(chunk: int, slot: int) -> dict | None:
                value = data.get(chunk_key(key, chunk, slot))
                return orjson.loads(value) if value else None

            bucket = (
                BucketState.restore(orjson.loads(raw), self.session, load_chunk)
                if raw
                else BucketState(self.session)
            )
            bucket.defer_agents = True  # an agent's inputs of one message: one walk, at the sweep
            self.buckets[key] = bucket
        return bucket

    def dirty_items(self, partition: int) -> tuple[list[tuple[bytes, bytes | None]], Any]:
        """The writes of the partition's changed call buckets (nothing for ``confirmed``).

        Per bucket: its new tombstone chunk versions, its snapshot, then the deletion of the old versions.
        """
        items: list[tuple[bytes, bytes | None]] = []
        for key in self.dirty.pop(partition, ()):
            bucket = self.buckets[key]
            # New chunk versions, the bucket naming them, then the old versions' deletion: a checkpoint cut
            # short leaves a prefix of these, and every prefix restores a consistent bucket.
            writes, deletes = bucket.tombstones.checkpoint()
            for chunk, slot, tombstones in writes:
                items.append((chunk_key(key, chunk, slot), orjson.dumps(tombstones)))
            snapshot = bucket.snapshot()
            snapshot["p"] = partition
            items.append((key, orjson.dumps(snapshot)))
            for chunk, slot in deletes:
                items.append((chunk_key(key, chunk, slot), None))
        return items, None

    async def before_checkpoint(self) -> None:
        """Send the buffered facts, so that the checkpoint confirms them."""
        await self.flush_facts()

    async def flush_facts(self) -> None:
        """Send the buffered facts (one message per fact key, holding its groups in order) and work updates."""
        buffer, self.facts_buffer, self.buffered = self.facts_buffer, {}, 0
        work, self.work_buffer = self.work_buffer, {}
        callers, self.caller_buffer = self.caller_buffer, {}
        callbacks, self.callbacks_buffer = self.callbacks_buffer, []
        generation = self.generation
        for fact_key, groups in buffer.items():
            if generation != self.generation:  # revoked meanwhile: the new owner replays these messages
                return
            self.pending.append(
                await self.facts_topic.send(
                    key=fact_key.encode("utf-8"),
                    value=orjson.dumps(groups),
                    partition=self.facts_partition(fact_key),
                )
            )
        for headers, outbox in ((WORK_HEADERS, work), (CALLER_HEADERS, callers)):
            for target, updates in outbox.items():
                if generation != self.generation:
                    return
                self.pending.append(
                    await self.events_topic.send(
                        key=target.encode("utf-8"),
                        value=orjson.dumps(list(updates.values())),
                        headers=headers,
                    )
                )
        if self.callbacks_topic is not None:
            for queue, record in callbacks:
                if generation != self.generation:
                    return
                self.pending.append(
                    await self.callbacks_topic.send(key=queue.encode("utf-8"), value=orjson.dumps(record))
                )

    def flush_due(self) -> bool:
        """Whether buffered facts have waited FLUSH_S."""
        return bool(self.buffered) and time.monotonic() - self.buffered_since >= FLUSH_S

    async def flush_idle(self) -> None:
        """Timer: send facts buffered longer than FLUSH_S when no message came to send them."""
        if self.flush_due():
            async with self.lock:
                await self.flush_facts()

    async def apply_message(self, message: Any) -> None:
        """Apply an events message to its call bucket unless the bucket already holds that offset."""
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
        internal = _internal(message)
        if internal is not None:
            what = "caller update" if internal == b"caller" else "work update"
            try:
                if internal == b"caller":
                    work_facts = self._apply_callers(bucket, message.value)
                else:
                    work_facts = self._apply_work(bucket, message.value)
            except (ValueError, TypeError) as exc:  # not callpulse's own: it changes nothing
                await self._dead_letter(
                    message, "invalid_json", f"not a {what} message: {exc}", message.value
                )
                return
            self._buffer(key, message.offset, work_facts)
            if self.buffered >= FLUSH_FACTS or self.flush_due():
                await self.flush_facts()
            return
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
                if applied.unexpected:
                    counters.unexpected.labels(ev.type, applied.unexpected).inc()
                    log.debug(
                        "event %s (%s) of call %s does not fit its state %s: ignored",
                        ev.event_id,
                        ev.type,
                        ev.call_id,
                        applied.unexpected,
                    )
            elif applied.status == "duplicate":
                counters.duplicate.inc()
            else:  # late, too_old
                counters.late.inc()
                await self._dead_letter(
                    message, applied.status, applied.error, _element_bytes(message.value, ev.event_id)
                )
        for fact in bucket.sweep():
            groups[fact.key].append(fact)
        if generation != self.generation:  # revoked while a dead letter was sent: the message is replayed
            return
        self._buffer(key, message.offset, groups)
        if self.buffered >= FLUSH_FACTS or self.flush_due():
            await self.flush_facts()

    def _apply_work(self, bucket: BucketState, value: bytes) -> dict[str, list[Fact]]:
        """Apply a message of work updates (from the buckets of the agents' calls) to the agents' timelines.

        Raises:
            ValueError, TypeError: the message is not a list of work updates (it is checked before any is applied).
        """
        updates = [
            WorkUpdate(str(agent), str(call_id), tuple(_work(w) for w in works))
            for agent, call_id, works in orjson.loads(value)
        ]
        groups = _applied(bucket, bucket.apply_work, updates)
        if bucket.late_work:
            self.counters.agent_work_late.inc(bucket.late_work)
            log.warning(
                "%d work updates reached agent timelines after CALLPULSE_AGENT_HISTORY had folded what they change",
                bucket.late_work,
            )
            bucket.late_work = 0
        return groups

    def _apply_callers(self, bucket: BucketState, value: bytes) -> dict[str, list[Fact]]:
        """Apply a message of caller updates (from the buckets of the callers' calls) to the callers' histories.

        Raises:
            ValueError, TypeError: the message is not a list of caller updates (checked before any is applied).
        """
        updates = [
            CallerUpdate(
                str(caller), str(call_id), str(number), tuple(_stint(s) for s in stints), int(reached)
            )
            for caller, call_id, number, stints, reached in orjson.loads(value)
        ]
        return _applied(bucket, bucket.apply_caller, updates)

    def pending_callbacks(self, now_ms: int) -> list[Callback]:
        """The callback entries of every bucket this worker holds, open at ``now_ms``."""
        return [c for bucket in self.buckets.values() for c in bucket.pending_callbacks(now_ms)]

    def _buffer(self, key: bytes, offset: int, groups: dict[str, list[Fact]]) -> None:
        """Buffer one message's facts per fact key, and the work and caller updates its bucket's calls made."""
        bucket = self.buckets[key]
        if (groups or bucket.outbox or bucket.caller_outbox) and not self.buffered:
            self.buffered_since = time.monotonic()
        self._stage(
            self.caller_buffer,
            bucket.caller_outbox,
            lambda c: c.caller,
            lambda c: [c.caller, c.call_id, c.number, [list(s) for s in c.stints], c.reached_ms],
        )
        self._stage(
            self.work_buffer,
            bucket.outbox,
            lambda u: u.agent,
            lambda u: [u.agent, u.call_id, [list(w) for w in u.works]],
        )
        if bucket.callbacks_out:
            clock = bucket.caller_clock()
            for entry, pending in bucket.callbacks_out:
                self.callbacks_buffer.append((entry.queue, callback_record(entry, pending, clock)))
            bucket.callbacks_out.clear()
        src = key.decode("utf-8", "replace")
        retracted = 0
        buffer = self.facts_buffer
        for fact_key, facts in groups.items():
            # Corrections only: a live status replaced as the call moves on is not one.
            retracted += sum(1 for f in facts if f.sign < 0 and f.kind not in LIVE_KINDS)
            buffer.setdefault(fact_key, []).append([src, offset, [to_wire(f) for f in facts]])
            self.buffered += len(facts)
        if retracted:
            self.counters.retracted.inc(retracted)

    def _stage(
        self,
        buffer: dict[str, dict[tuple[str, str], list]],
        updates: list[Any],
        owner: Callable[[Any], str],
        wire: Callable[[Any], list],
    ) -> None:
        """Move a bucket's updates for other buckets into ``buffer``, to be sent at the next flush.

        Per owner's bucket, the latest per owner (agent or caller) and call: an upsert.
        """
        for u in updates:
            who = owner(u)
            buffer.setdefault(call_bucket(who), {})[(who, u.call_id)] = wire(u)
        self.buffered += len(updates)
        updates.clear()

    async def _dead_letter(self, message: Any, reason: str, error: str, raw: bytes) -> None:
        await self.dead_letter(raw, reason, error, message.topic, message.partition, message.offset)


def _work(data: list[Any]) -> Work:
    """A stretch of work from its JSON array (its last two fields may be left out: no hold, no transfer).

    Raises:
        ValueError, TypeError: it is not one.
    """
    if not isinstance(data, list) or not 4 <= len(data) <= 6:
        msg = f"a stretch of work is an array of 4 to 6 values, not {data!r}"
        raise ValueError(msg)
    return Work(str(data[0]), *(int(x) for x in data[1:]))


def _applied(
    bucket: BucketState, apply: Callable[[Any], list[Fact]], updates: list[Any]
) -> dict[str, list[Fact]]:
    """The facts, by key, of a message of updates applied to their bucket one by one, then of its sweep."""
    groups: dict[str, list[Fact]] = defaultdict(list)
    for update in updates:
        for fact in apply(update):
            groups[fact.key].append(fact)
    for fact in bucket.sweep():
        groups[fact.key].append(fact)
    return groups


def _internal(message: Any) -> bytes | None:
    """What a calls.events message of callpulse's own holds (``work``, ``caller``), by its header; None: an event."""
    headers = message.headers
    if not headers:
        return None
    items = headers.items() if isinstance(headers, dict) else headers
    return next((bytes(value) for name, value in items if name == INTERNAL_HEADER), None)


def _stint(data: list[Any]) -> Stint:
    """A stint of a caller update from its JSON array.

    Raises:
        ValueError, TypeError: it is not one.
    """
    if not isinstance(data, list) or len(data) != 4 or data[2] not in STINT_OUTCOMES:
        msg = f"a stint is an array [queue, entered, outcome, left], not {data!r}"
        raise ValueError(msg)
    return Stint(str(data[0]), int(data[1]), str(data[2]), int(data[3]))


def callback_record(entry: Callback, pending: bool, at_ms: int) -> dict[str, Any]:
    """A calls.callbacks record: a caller now on the callback list of a queue (or changed there), or off it."""
    return {
        "queue": entry.queue,
        "status": "pending" if pending else "closed",
        "number": entry.number,
        "caller": entry.caller,
        "first_abandon": _iso(entry.since_ms),
        "last_abandon": _iso(entry.last_ms),
        "attempts": entry.attempts,
        "call_id": entry.call_id,
        "wait_seconds": entry.wait_ms / 1000,
        "at": _iso(at_ms),
    }


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def _element_bytes(value: bytes, event_id: str) -> bytes:
    """The bytes of one event of a message: the message itself, or its array element re-serialised."""
    decoded = orjson.loads(value)
    if isinstance(decoded, list):
        for element in decoded:
            if isinstance(element, dict) and element.get("event_id") == event_id:
                return orjson.dumps(element)
    return value
