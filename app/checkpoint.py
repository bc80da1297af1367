"""The checkpoint protocol of the two stateful stages (app.sessionize, app.aggregate): ``CheckpointedStage``.

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

from app import compat
from app.batches import Undecodable
from app.kafka import dead_letter_headers
from app.store import resume_key, resume_offset, resume_value

log = logging.getLogger(__name__)

#: Acknowledge a Faust event (the noack stream's ``ack``).
Ack = Callable[[Any], Awaitable[Any]]
#: Checkpoint at the latest after this many messages of a partition.
CHECKPOINT_MAX_MESSAGES = 5000


async def _no_fatal_handler(exc: BaseException) -> None:
    return None


#: ``fetch_range(partition, start, end)``: the messages of the stage's topic partition with offsets in
#: [start, end), in order, read from the broker (the Faust shell supplies it; app.kafka.fetch_range).
FetchRange = Callable[[int, int, int], AsyncIterator[Any]]


async def _no_fetch(partition: int, start: int, end: int) -> AsyncIterator[Any]:
    msg = f"no fetch_range: cannot read offsets {start} to {end - 1} of partition {partition}"
    raise RuntimeError(msg)
    yield  # an async generator  # pragma: no cover


class CheckpointedStage:
    """A stateful stage: one topic's messages applied to state in memory, checkpointed to one table.

    A stage applies the messages of one topic partition by partition, in offset order, to working state
    kept in memory, and persists it to one table by checkpoints (the protocol above).

    The Faust shell hands every event to ``process`` with its ``ack``, calls ``checkpoint_idle`` from a
    timer and ``reset`` at every rebalance. A subclass supplies:

    - ``apply_message(message)``: apply one message to the working state, unless the state it touches
      already holds that offset (its ``hw``), and note the keys it changed as dirty for the partition;
    - ``dirty_items(partition)``: the writes ``(key, value or None)`` of the partition's dirty keys, in an
      order whose every prefix restores a consistent state, and what ``confirmed`` is to get;
    - optionally ``before_checkpoint()`` (send what is buffered: a checkpoint confirms every send made
      before it) and ``confirmed(staged)`` (the checkpoint is durable).

    The base keeps, per partition, the events not yet acknowledged, the sends not yet confirmed
    (``pending``), the next offset to apply (``expected``, see ``admit``) and the checkpoint being persisted
    (``inflight``); a checkpoint writes the partition's resume point last (``store.resume_key``). ``lock``
    serialises message processing and checkpoints (the agent and the idle-checkpoint timer).
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
            await self.apply_message(event.message)
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
                    await self.apply_message(message)
                    if generation != self.generation:
                        return False
                    applied += 1
            except Exception as exc:
                log.critical(
                    "%s[%d]: offsets %d to %d were skipped by the consumer and cannot be read, stopping "
                    "the worker: %r",
                    topic,
                    partition,
                    expected,
                    offset - 1,
                    exc,
                )
                self.failed = exc
                await self.on_fatal(exc)
                return False
            log.warning(
                "%s[%d]: the consumer skipped offsets %d to %d; read %d messages of them from the broker "
                "and applied them first",
                topic,
                partition,
                expected,
                offset - 1,
                applied,
            )
            self.processed += applied
            if self.undecodable:  # the range reader met an undecodable batch
                await self.set_aside()
        self.expected[partition] = offset + 1
        return True

    async def set_aside(self) -> None:
        """Dead-letter the undecodable batches reported so far (lock held).

        Remember the offsets each covered: they are no gap for ``admit`` to read again.
        """
        while self.undecodable:
            batch = self.undecodable.popleft()
            ranges = self.skipped.setdefault(batch.partition, {})
            if batch.end in ranges:  # reported by both Faust's consumer and the stage's range reader
                ranges[batch.end] = min(ranges[batch.end], batch.start)
                continue
            ranges[batch.end] = batch.start
            await self.dead_letter(
                batch.raw,
                "undecodable_batch",
                batch.error,
                batch.topic,
                batch.partition,
                batch.start,
                (("source_last_offset", str(batch.end - 1).encode()),),
            )

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

    async def dead_letter(
        self,
        value: bytes,
        reason: str,
        error: str,
        topic: str,
        partition: int,
        offset: int,
        extra: tuple[tuple[str, bytes], ...] = (),
    ) -> None:
        """Send ``value`` to calls.deadletter with the reason and where it came from.

        The send is confirmed at the next checkpoint, like the facts.
        """
        self.rejected.labels(reason).inc()
        headers = dead_letter_headers(reason, error, topic, partition, offset, extra)
        self.pending.append(await self.deadletter_topic.send(value=value, headers=headers))

    def resume_offset(self, partition: int) -> int:
        """The next offset to apply, as of the partition's last durable checkpoint (0 before the first)."""
        return resume_offset(self.table.data.get(resume_key(partition)))

    async def apply_message(self, message: Any) -> None:
        """Apply one message to the working state and note the keys it changed (subclasses supply it)."""
        raise NotImplementedError

    def due(self, partition: int) -> bool:
        """Whether the partition is due for a checkpoint.

        It is once ``interval_s`` seconds have passed since its last checkpoint (the first call starts the
        clock) or ``CHECKPOINT_MAX_MESSAGES`` of its messages wait to be acknowledged.
        """
        last = self.last_checkpoint.setdefault(partition, time.monotonic())
        return (
            time.monotonic() - last >= self.interval_s
            or len(self.unacked[partition]) >= CHECKPOINT_MAX_MESSAGES
        )

    async def checkpoint_idle(self) -> None:
        """Checkpoint the idle partitions that are due; dead-letter the undecodable batches left.

        Checkpoint partitions whose last messages wait for a checkpoint that no new message will trigger;
        dead-letter undecodable batches that no later message of their partition brought up.
        """
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
            self._persist(partition, previous, pending, items, staged, events, ack, self.generation)
        )

    async def _persist(
        self,
        partition: int,
        previous: asyncio.Future | None,
        pending: list[Awaitable[Any]],
        items: list[tuple[bytes, bytes | None]],
        staged: Any,
        events: list[Any],
        ack: Ack,
        generation: int,
    ) -> None:
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
        """The writes of the partition's dirty keys and what ``confirmed`` gets (subclasses supply it)."""
        raise NotImplementedError

    def confirmed(self, staged: Any) -> None:
        """A checkpoint is durable (``staged``: what ``dirty_items`` handed over)."""
