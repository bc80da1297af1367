"""A call event as the sessionizer stores it: the fields its derivations read, in a compact tuple.

A bucket keeps every event of its open calls (``BucketState.calls``), and persists them in its snapshot, so
the stored form carries only what ``derive`` reads. ``detail`` and ``extra`` hold the one or two fields an
event type has beyond its time, id and queue:

============================  ====================  ==============================
type                          detail                extra
============================  ====================  ==============================
answer, agent_missed,         agent                 campaign (outbound)
ring_canceled
exit, refused                 reason                campaign (outbound)
hangup                        disposition           campaign (outbound)
transfer                      target                campaign (outbound)
dial                          campaign              the callee's pseudonym
ring                          caller (pseudonym)    campaign (outbound)
queue                         caller (pseudonym)    priority (inbound), campaign (outbound)
survey                        scale                 score
(other types)                 None                  campaign (outbound)
============================  ====================  ==============================

``number``: the caller's number on a ``ring``, ``queue`` or ``dial`` (the callee's) event that gives a plausible
one (None otherwise),
for the callback list alone: the stored calls (the sessionizer's snapshot) hold it while the call is open.

The snapshot writes a stored event as the JSON array of its fields, in this order (seven before numbers
were kept).
"""

from __future__ import annotations

from typing import NamedTuple

from streams.events import TYPE_RANK, CallEvent

_new = tuple.__new__
_FIELDS_BEFORE_NUMBERS = 7


class StoredEvent(NamedTuple):
    """One stored call event (see the module docstring for ``detail`` and ``extra``)."""

    ts_ms: int
    type: str
    event_id: str
    queue: str | None
    detail: str | None
    extra: str | int | None
    #: 1 for an event of an outbound call, else 0.
    outbound: int
    #: The caller's number (``ring``, ``queue``; see the module docstring).
    number: str | None = None

    @classmethod
    def of(cls, event: CallEvent) -> StoredEvent:
        """The stored form of a validated call event."""
        t = event.type
        extra: str | int | None = event.campaign
        if t == "answer" or t == "agent_missed" or t == "ring_canceled":
            detail = event.agent
        elif t == "exit" or t == "refused":
            detail = event.reason
        elif t == "hangup":
            detail = event.disposition
        elif t == "transfer":
            detail = event.target
        elif t == "dial":
            detail, extra = event.campaign, event.caller
        elif t == "survey":
            detail, extra = event.scale, event.score
        elif t == "queue":
            detail = event.caller
            if not event.outbound and event.priority is not None:
                extra = event.priority
        elif t == "ring":
            detail = event.caller
        else:
            detail = None
        # tuple.__new__: a third of the cost of calling the class (once per event)
        stored: StoredEvent = _new(
            cls,
            (
                event.ts_ms,
                t,
                event.event_id,
                event.queue,
                detail,
                extra,
                1 if event.outbound else 0,
                event.number if t == "ring" or t == "queue" or t == "dial" else None,
            ),
        )
        return stored

    @classmethod
    def from_wire(cls, data: list[object] | tuple[object, ...]) -> StoredEvent:
        """Inverse of ``to_wire`` (a JSON array from a snapshot; seven fields before numbers were kept)."""
        if len(data) == _FIELDS_BEFORE_NUMBERS:
            return tuple.__new__(cls, (*data, None))
        return tuple.__new__(cls, data)

    def to_wire(self) -> list[object]:
        """The JSON array a snapshot stores."""
        return list(self)

    def sort_key(self) -> tuple[int, int, str]:
        """Order of a call's events: time, then the tie-break rank of DESIGN 2, then the event id."""
        return (self.ts_ms, TYPE_RANK[self.type], self.event_id)


def insert_sorted(events: list[StoredEvent], ev: StoredEvent) -> None:
    """Insert ``ev`` into a call's events, kept in ``sort_key`` order (mostly at the end: search from it)."""
    key = ev.sort_key()
    i = len(events)
    while i > 0 and events[i - 1].sort_key() > key:
        i -= 1
    events.insert(i, ev)
