"""Facts: what the sessionizer tells the aggregator, one per thing that happened to a call or an agent.

A fact is keyed by ``q:<queue>`` or ``c:<campaign>``, attributed to an event time (``ts_ms``) and carries
a deterministic id derived from the id of the event that caused it. A retraction is the same fact with
``sign = -1``: the aggregator subtracts exactly what it added.

Kinds and their fields (all durations in ms):

=============  ======================================================================
entered        queue stint began (E)
answered       ``wait_ms``
abandoned      ``wait_ms``
exited         ``wait_ms``, ``reason`` (flow-out)
refused        ``reason`` (not offered)
agent_missed   an agent did not answer the call
completed      ``talk_ms``, ``hold_ms``, ``holds``, ``acw_ms``, ``transferred`` (0/1)
expired        call idle for CALLPULSE_CALL_TIMEOUT
survey         ``scale``, ``score``
attempt, connected, contact, conversion   outbound, keyed by campaign
live           the call's live status in a queue: ``status`` waiting|talking|held since ``since_ms``
agent          an agent's open state in a queue since ``since_ms`` (``agent``, ``status``)
agent_time     a closed agent-state interval [``since_ms``, ``ts_ms``) (``agent``, ``status``)
=============  ======================================================================
"""

from __future__ import annotations

from dataclasses import dataclass

#: Fact kinds that count calls or outcomes (as opposed to live state).
COUNT_KINDS = (
    "entered", "answered", "abandoned", "exited", "refused", "agent_missed", "completed", "expired",
    "survey", "attempt", "connected", "contact", "conversion",
)
FACT_KINDS = (*COUNT_KINDS, "live", "agent", "agent_time")


@dataclass(frozen=True, slots=True)
class Fact:
    """One fact. Equality covers every field, so a changed fact with the same ``fid`` differs."""

    kind: str
    key: str
    ts_ms: int
    fid: str
    call: str = ""
    wait_ms: int = 0
    reason: str = ""
    talk_ms: int = 0
    hold_ms: int = 0
    holds: int = 0
    acw_ms: int = 0
    transferred: int = 0
    scale: str = ""
    score: int = 0
    status: str = ""
    since_ms: int = 0
    agent: str = ""
    sign: int = 1

    def retraction(self) -> Fact:
        """Return this fact with the opposite sign."""
        return _replace_sign(self, -self.sign)

    def encode(self) -> list:
        """Return the compact wire form (a JSON array)."""
        return [self.kind, self.key, self.ts_ms, self.fid, self.call, self.wait_ms, self.reason, self.talk_ms,
                self.hold_ms, self.holds, self.acw_ms, self.transferred, self.scale, self.score, self.status,
                self.since_ms, self.agent, self.sign]

    @classmethod
    def decode(cls, data: list) -> Fact:
        """Inverse of ``encode``."""
        return cls(*data)


def _replace_sign(fact: Fact, sign: int) -> Fact:
    return Fact(fact.kind, fact.key, fact.ts_ms, fact.fid, fact.call, fact.wait_ms, fact.reason, fact.talk_ms,
                fact.hold_ms, fact.holds, fact.acw_ms, fact.transferred, fact.scale, fact.score, fact.status,
                fact.since_ms, fact.agent, sign)


def queue_key(queue: str) -> str:
    """Aggregation key of a queue."""
    return "q:" + queue


def campaign_key(campaign: str) -> str:
    """Aggregation key of an outbound campaign."""
    return "c:" + campaign


def diff(old: list[Fact], new: list[Fact]) -> list[Fact]:
    """Return what turns the facts ``old`` into ``new``: retractions first, then additions, in order."""
    old_set = set(old)
    new_set = set(new)
    out = [f.retraction() for f in old if f not in new_set]
    out.extend(f for f in new if f not in old_set)
    return out
