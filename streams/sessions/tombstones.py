"""Tombstones: what a bucket remembers of its finalized calls, stored in copy-on-write chunks.

A finalized call leaves its event ids (so a replayed or duplicated event is recognised) and what a late
wrap-up or survey needs (the queue key a survey goes to, the completion a wrap-up may amend). Tombstones are
grouped by the ``TOMB_CHUNK_MS`` chunk of their finalization time and persisted one store key per chunk: a
checkpoint writes only the chunks that changed, and a chunk past the dedup TTL is forgotten as a whole.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from streams.facts import Fact

#: Separates the event ids of a tombstone (one string per finished call instead of a list of them).
SEP = "\x1f"
#: Tombstones are kept in chunks of this many ms of finalization time (persisted one key per chunk).
TOMB_CHUNK_MS = 600_000


class Tombstone(list[Any]):  # a list, so that orjson writes a chunk as it is
    """One finalized call.

    ``[last_ts, event ids joined by SEP, survey queue key, open completion (encoded) or None, chunk]``: a list
    subclass with named fields, which orjson writes as the plain JSON array.
    """

    __slots__ = ()

    @property
    def last_ts(self) -> int:
        """Time of the call's last event."""
        return int(self[0])

    @last_ts.setter
    def last_ts(self, value: int) -> None:
        self[0] = value

    @property
    def event_ids(self) -> str:
        """The call's event ids, joined by ``SEP``."""
        return str(self[1])

    @event_ids.setter
    def event_ids(self, value: str) -> None:
        self[1] = value

    @property
    def survey_key(self) -> str:
        """The queue key a late survey is attributed to ("" when none)."""
        return str(self[2])

    @survey_key.setter
    def survey_key(self, value: str) -> None:
        self[2] = value

    @property
    def open_completed(self) -> Fact | None:
        """The completion a late wrap-up may still amend."""
        return Fact.decode(self[3]) if self[3] is not None else None

    @open_completed.setter
    def open_completed(self, fact: Fact | None) -> None:
        self[3] = fact.encode() if fact is not None else None

    @property
    def chunk(self) -> int:
        """The chunk the tombstone is stored in."""
        return int(self[4])

    def holds(self, eid: str) -> bool:
        """Whether ``eid`` is one of the call's event ids."""
        joined = self[1]
        return bool(eid == joined or (SEP + eid + SEP) in (SEP + joined + SEP))

    def add_event(self, eid: str, ts: int) -> None:
        """Remember one more event of the call (a late wrap-up or survey)."""
        self[1] += SEP + eid
        if ts > self[0]:
            self[0] = ts


class Tombstones:
    """The tombstones of one bucket: by call, by chunk, and what a checkpoint must write or delete."""

    __slots__ = ("by_call", "chunks", "slots", "dirty", "deleted")

    def __init__(self) -> None:
        #: call id -> its tombstone (the same objects as in ``chunks``).
        self.by_call: dict[str, Tombstone] = {}
        #: chunk start -> the tombstones finalized in it.
        self.chunks: dict[int, dict[str, Tombstone]] = {}
        #: chunk -> the slot (0 or 1) of its persisted version (see ``checkpoint``).
        self.slots: dict[int, int] = {}
        self.dirty: set[int] = set()
        self.deleted: set[int] = set()

    def get(self, call_id: str) -> Tombstone | None:
        """The tombstone of a finalized call."""
        return self.by_call.get(call_id)

    def changed(self, tomb: Tombstone) -> None:
        """A tombstone changed: its chunk is written at the next checkpoint."""
        self.dirty.add(tomb.chunk)
        self.deleted.discard(tomb.chunk)

    def finalize(
        self, call_id: str, last_ts: int, eids: str, survey_key: str, open_completed: Fact | None
    ) -> None:
        """Record a finalized call (or add to the tombstone of a call re-opened after it was finalized)."""
        tomb = self.by_call.get(call_id)
        co = open_completed.encode() if open_completed is not None else None
        if tomb is None:
            chunk = last_ts - last_ts % TOMB_CHUNK_MS
            tomb = self.by_call[call_id] = Tombstone((last_ts, eids, survey_key, co, chunk))
            self.chunks.setdefault(chunk, {})[call_id] = tomb
        else:
            tomb.last_ts = max(tomb.last_ts, last_ts)
            tomb.event_ids += SEP + eids
            tomb.survey_key = survey_key or tomb.survey_key
            tomb[3] = co
        self.changed(tomb)

    def forget_before(self, ts: int) -> None:
        """Forget the whole chunks that end before ``ts``.

        A tombstone refreshed by a late survey goes with its chunk.
        """
        for chunk in [c for c in self.chunks if c + TOMB_CHUNK_MS <= ts]:
            for call_id in self.chunks.pop(chunk):
                del self.by_call[call_id]
            self.dirty.discard(chunk)
            self.deleted.add(chunk)

    def oldest_chunk(self) -> int | None:
        """Start of the oldest chunk kept."""
        return min(self.chunks) if self.chunks else None

    def checkpoint(self) -> tuple[list[tuple[int, int, dict[str, Tombstone]]], list[tuple[int, int]]]:
        """The chunk versions a checkpoint writes *before* the bucket, and those it deletes *after* it.

        Copy-on-write: a changed chunk goes to the slot its persisted version does not use, the bucket's
        snapshot (taken after this call) names the new slot, and the old version is deleted only after the
        bucket. The changelog keeps the order of a partition's writes, so a checkpoint cut short by a crash
        restores either the old bucket with the old versions or the new bucket with the new ones; never a
        bucket with chunks newer than itself, whose tombstones would turn its replayed events into
        duplicates. Returns ``(writes, deletes)`` as ``(chunk, slot, tombstones)`` and ``(chunk, slot)``.
        """
        writes: list[tuple[int, int, dict[str, Tombstone]]] = []
        deletes: list[tuple[int, int]] = []
        for chunk in sorted(self.dirty):
            old = self.slots.get(chunk)
            new = 1 if old == 0 else 0
            writes.append((chunk, new, self.chunks[chunk]))
            if old is not None:
                deletes.append((chunk, old))
            self.slots[chunk] = new
        for chunk in sorted(self.deleted):
            self.slots.pop(chunk, None)
            # Both slots: a checkpoint cut short may have left a version in the other one.
            deletes.extend((chunk, slot) for slot in (0, 1))
        self.dirty = set()
        self.deleted = set()
        return writes, deletes

    def slots_wire(self) -> dict[str, int]:
        """The snapshot's ``chunks`` entry: chunk -> slot of its persisted version."""
        return {str(chunk): slot for chunk, slot in sorted(self.slots.items())}

    @classmethod
    def restore(
        cls, slots: dict[str, int], load_chunk: Callable[[int, int], dict[str, list[object]] | None]
    ) -> Tombstones:
        """Read back the chunks a snapshot names (``load_chunk(chunk, slot)`` reads one; None: not stored)."""
        tombs = cls()
        for key, slot in slots.items():
            chunk = int(key)
            stored = load_chunk(chunk, slot)
            if stored is not None:
                entries = {call_id: Tombstone(t) for call_id, t in stored.items()}
                tombs.chunks[chunk] = entries
                tombs.slots[chunk] = slot
                tombs.by_call.update(entries)
        return tombs
