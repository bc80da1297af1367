"""Offsets commit exactly what durable checkpoints cover, for the topics callpulse consumes.

Faust 0.15.3 commits the longest run of acknowledged offsets, but its gap check is skipped while a
partition has no committed offset yet (or 0), lets one unacknowledged message through (``> 1``), and
messages fetched before a rebalance are acknowledged automatically when they are skipped. During the
double rebalance of a restart it can therefore commit past messages that were dropped and not yet
re-applied, which are then never delivered again (seen: 3 calls of 1,000 lost after ``kill -9``).

For ``calls.events`` and ``calls.facts`` the commit offset is instead what the stage's last durable
checkpoint of the partition covers: every message below it was applied and persisted, in order.
"""

from __future__ import annotations

from typing import Any

from faust.transport.consumer import Consumer

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


def install(topics: set[str]) -> None:
    """Let the commits of ``topics`` follow the checkpoints (idempotent)."""
    MANAGED_TOPICS.update(topics)
    Consumer._new_offset = _new_offset  # type: ignore[method-assign]


def checkpointed(topic: str, partition: int, next_offset: int) -> None:
    """Record that every message of (topic, partition) below ``next_offset`` is durably applied."""
    CHECKPOINTED[(topic, partition)] = next_offset


def forget() -> None:
    """After a rebalance nothing is known until the next checkpoint (the committed offsets stand)."""
    CHECKPOINTED.clear()
