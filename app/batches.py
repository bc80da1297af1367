"""Record batches that cannot be decoded: set aside, reported, never a crash loop.

aiokafka 0.14.0 decodes a fetched record batch (CRC check, decompression, record parsing) while it hands
out its records. A batch it cannot decode (a producer that compressed garbage with a valid CRC, which the
embedded broker stores as it is; a batch damaged on the broker's disk) raises out of every ``getmany`` at
the same offset: Faust crashes the worker, and the restarted worker meets the same batch again, for good.

``install`` changes that for the topics callpulse consumes: the batch is skipped (the consumer's position
moves past it, as aiokafka already does for control batches), and a ``Undecodable`` record of it (topic,
partition, the offsets it covered, its raw bytes, the error) goes to the callback registered for the topic.
The stages dead-letter it with reason ``undecodable_batch`` (app.checkpoint), so nothing is lost: the raw
batch can be read again with a tool that decodes it. Other topics (Faust's changelogs) keep aiokafka's
behaviour, since skipping a batch of table state would corrupt the table silently.

Callbacks run on the thread of the consumer that met the batch (Faust's consumer thread, or a stage's own
range reader on the event loop): they must only hand the record over.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from aiokafka.consumer import fetcher

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Undecodable:
    """A record batch the consumer could not decode, and skipped."""

    topic: str
    partition: int
    #: The first offset not handed out (the batch's first, unless it failed part-way) and the batch's next.
    start: int
    end: int
    raw: bytes
    error: str


#: topic -> called with every batch of it that could not be decoded
WATCHED: dict[str, Callable[[Undecodable], None]] = {}

_original_unpack = fetcher.PartitionRecords._unpack_records
_original_memory_records = fetcher.MemoryRecords


class _KeptRecords:
    """aiokafka's MemoryRecords of one fetched partition, keeping its bytes and the batch last handed out."""

    __slots__ = ("data", "last", "records")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.records = _original_memory_records(data)
        self.last: Any = None

    def has_next(self) -> bool:
        return self.records.has_next()

    def size_in_bytes(self) -> int:
        return self.records.size_in_bytes()

    def next_batch(self) -> Any:
        self.last = None  # a batch whose very header is broken is not set aside: aiokafka's error stands
        self.last = batch = self.records.next_batch()
        return batch


def batch_bytes(data: bytes, base_offset: int) -> bytes:
    """The bytes of the record batch of ``data`` (a fetched record set) that starts at ``base_offset``.

    A record set is a sequence of ``base offset (int64), length (int32), length bytes``.
    """
    view = memoryview(data)
    pos = 0
    while pos + 12 <= len(view):
        offset, length = struct.unpack_from(">qi", view, pos)
        end = pos + 12 + length
        if offset == base_offset:
            return bytes(view[pos : min(end, len(view))])
        pos = end
    return b""


def _unpack_records(self: Any) -> Iterator[Any]:
    """The aiokafka record iterator, carrying on past a batch it cannot decode (watched topics only)."""
    while True:
        try:
            yield from _original_unpack(self)
            return
        except Exception as exc:
            records = self._records
            callback = WATCHED.get(self._tp.topic)
            batch = getattr(records, "last", None)
            if callback is None or batch is None:
                raise
            end = batch.next_offset
            # A v0/v1 message set has no base offset: its wrapper entry carries the last inner offset.
            base = getattr(batch, "base_offset", end - 1)
            start = max(self.next_fetch_offset, base)
            self.next_fetch_offset = end
            error = f"{type(exc).__name__}: {exc}"
            log.error(
                "%s[%d]: the record batch at offsets %d to %d cannot be decoded (%s); skipped and "
                "dead-lettered",
                self._tp.topic,
                self._tp.partition,
                start,
                end - 1,
                error,
            )
            callback(
                Undecodable(
                    self._tp.topic, self._tp.partition, start, end, batch_bytes(records.data, base), error
                )
            )
            # The generator that raised is finished; a new one goes on with the next batch of ``records``.


def install() -> None:
    """Skip and report undecodable batches of the ``WATCHED`` topics, in every consumer of this process."""
    fetcher.MemoryRecords = _KeptRecords
    fetcher.PartitionRecords._unpack_records = _unpack_records


def watch(topic: str, callback: Callable[[Undecodable], None]) -> None:
    """Report the undecodable batches of ``topic`` to ``callback`` (the last one registered wins)."""
    WATCHED[topic] = callback
    install()
