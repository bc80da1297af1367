"""One call in a bucket: its sorted events and their derivation (inbound or outbound)."""

from __future__ import annotations

from streams.sessions.derivation import Derivation
from streams.sessions.inbound import derive_inbound
from streams.sessions.outbound import derive_outbound, is_outbound
from streams.sessions.stored import StoredEvent


def derive(call_id: str, events: list[StoredEvent], contact_min_talk_ms: int) -> Derivation:
    """Derive every fact of one call from its events, sorted by ``StoredEvent.sort_key``."""
    if is_outbound(events):
        return derive_outbound(call_id, events, contact_min_talk_ms)
    return derive_inbound(call_id, events)


class CallSession:
    """An open (or recently ended) call: its sorted events and the cached derivation."""

    __slots__ = ("events", "eids", "derivation")

    def __init__(self, events: list[StoredEvent]) -> None:
        self.events = events
        self.eids = {ev.event_id for ev in events}
        self.derivation: Derivation | None = None

    @property
    def last_ts(self) -> int:
        """Time of the call's latest event."""
        return self.events[-1].ts_ms

    def derived(self, call_id: str, contact_min_talk_ms: int) -> Derivation:
        """The derivation of the call's events (cached until an event is inserted)."""
        if self.derivation is None:
            self.derivation = derive(call_id, self.events, contact_min_talk_ms)
        return self.derivation
