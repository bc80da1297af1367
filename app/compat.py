"""Every workaround callpulse applies to faust-streaming 0.15.3 and aiokafka 0.14.0, in one place.

Each reaches into a private part of those libraries, so each says what it fixes and where upstream stands.
Re-check them all when either pin moves (pyproject.toml).

1. Commits follow the durable checkpoints (``follow_checkpoints``, patches ``Consumer._new_offset``).
2. A short fetch wait against the embedded broker (``short_fetch_wait``, patches
   ``AIOKafkaConsumerThread._create_worker_consumer``).
3. Faust's current event for the store's writes (``event_context``, sets ``faust.streams._current_event``).
4. Undecodable record batches are skipped and reported, not a crash loop: ``app.batches`` (patches aiokafka's
   fetcher; its own module, with its tests in tests/app/test_batches.py). Upstream: a consumer stuck at a
   corrupt batch, https://github.com/aio-libs/aiokafka/issues/321 (open).

Not a patch but a workaround all the same: the stages read the offsets the consumer skipped from the broker
themselves (``app.checkpoint``, ``CheckpointedStage.admit``); Faust drops the messages it buffered when
recovery clears the stream buffers, https://github.com/faust-streaming/faust/issues/596 (open).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from faust.streams import _current_event
from faust.transport.consumer import Consumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

# -- 1. commits follow the checkpoints ---------------------------------------------------------------------
# Faust 0.15.3 commits the longest run of acknowledged offsets, but its gap check is skipped while a
# partition has no committed offset yet (or 0), lets one unacknowledged message through (``> 1``), and
# messages fetched before a rebalance are acknowledged automatically when they are skipped. During the
# double rebalance of a restart it can therefore commit past messages that were dropped and not yet
# re-applied, which are then never delivered again (seen: 3 calls of 1,000 lost after ``kill -9``).
# Upstream: the head-gap check came with https://github.com/faust-streaming/faust/pull/313 (for
# https://github.com/faust-streaming/faust/issues/312) and was loosened after
# https://github.com/faust-streaming/faust/issues/378; the ``> 1`` that commits over an in-flight message is
# https://github.com/faust-streaming/faust/issues/606 (open; fix https://github.com/faust-streaming/faust/pull/707
# not merged in 0.15.3); messages dropped when recovery clears the stream buffers are
# https://github.com/faust-streaming/faust/issues/596 (open).
#
# For ``calls.events`` and ``calls.facts`` the commit offset is instead what the stage's last durable
# checkpoint of the partition covers: every message below it was applied and persisted, in order.

#: (topic, partition) -> next offset to read: everything below it is in a durable checkpoint.
CHECKPOINTED: dict[tuple[str, int], int] = {}
#: Topics whose commits follow CHECKPOINTED.
MANAGED_TOPICS: set[str] = set()

_original_new_offset = Consumer._new_offset


def _new_offset(self: Any, tp: Any) -> int | None:
    if tp.topic not in MANAGED_TOPICS:
        return _original_new_offset(self, tp)
    # Faust's acknowledgement bookkeeping still runs (sensors, the unacked set) but decides nothing here.
    self._acked[tp].clear()
    self._acked_index[tp].clear()
    return CHECKPOINTED.get((tp.topic, tp.partition))


def follow_checkpoints(topics: set[str]) -> None:
    """Let the commits of ``topics`` follow the checkpoints (idempotent)."""
    MANAGED_TOPICS.update(topics)
    Consumer._new_offset = _new_offset  # type: ignore[method-assign]


def checkpointed(topic: str, partition: int, next_offset: int) -> None:
    """Record that every message of (topic, partition) below ``next_offset`` is durably applied."""
    CHECKPOINTED[(topic, partition)] = next_offset


def forget_checkpoints() -> None:
    """After a rebalance nothing is known until the next checkpoint (the committed offsets stand)."""
    CHECKPOINTED.clear()


# -- 2. a short fetch wait against the embedded broker ------------------------------------------------------
# Faust creates the worker's aiokafka consumer with ``fetch_max_wait_ms=1500`` and no setting to change it.
# Tansu holds a waiting fetch for its whole wait even when data arrives (Apache Kafka answers at once), so
# every hop through it would add up to the wait to the event-to-metric latency (measured: up to 1.4 s,
# 2 hops). No upstream issue found (neither for the Faust setting nor for Tansu's fetch).

#: Against the embedded broker: how long a fetch may wait for data (Faust fixes 1,500 ms).
EMBEDDED_FETCH_MAX_WAIT_MS = 20


def short_fetch_wait() -> None:
    """Make the worker's consumer fetch with a short wait (the embedded broker only; idempotent)."""
    original = AIOKafkaConsumerThread._create_worker_consumer
    if getattr(original, "callpulse_patched", False):
        return

    def create(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = EMBEDDED_FETCH_MAX_WAIT_MS  # read by aiokafka when its fetcher starts
        return consumer

    create.callpulse_patched = True  # type: ignore[attr-defined]
    AIOKafkaConsumerThread._create_worker_consumer = create  # type: ignore[method-assign]


# -- 3. the current event of the store's writes -------------------------------------------------------------
# The RocksDB store picks the partition database of a write from Faust's current event (a context variable
# set while an agent iterates its stream), and Faust has no public way to set it. A checkpoint writes its
# keys from a background task, outside the stream's iteration, so it sets the event itself. Upstream met the
# same limitation in Faust's own background flush of changelogged objects: https://github.com/faust-streaming/faust/pull/520
# (closed) tracked the partition instead; https://github.com/faust-streaming/faust/pull/522 (merged) removed
# that flush. No upstream way to write a table outside stream iteration was found.


@contextmanager
def event_context(event: Any) -> Iterator[None]:
    """Make ``event`` Faust's current event: the RocksDB store picks its partition database from it."""
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


def no_production_index() -> None:
    """Leave "/" to callpulse (the floor page): Faust's own index there only answers ``{"status": "OK"}``."""
    from faust.web import base

    base.Web.production_blueprints = []
