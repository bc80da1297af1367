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

from typing import NamedTuple

#: Fact kinds that count calls or outcomes (as opposed to live state).
COUNT_KINDS = (
    "entered", "answered", "abandoned", "exited", "refused", "agent_missed", "completed", "expired",
    "survey", "attempt", "connected", "contact", "conversion",
)
FACT_KINDS = (*COUNT_KINDS, "live", "agent", "agent_time")


class Fact(NamedTuple):
    """One fact. A tuple: equality and hashing cover every field (in C), so a changed fact with the same
    ``fid`` differs."""

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
        return tuple.__new__(Fact, (*self[:-1], -self[-1]))

    def encode(self) -> list:
        """Return the compact wire form (a JSON array)."""
        return list(self)

    @classmethod
    def decode(cls, data: list) -> Fact:
        """Inverse of ``encode``."""
        return cls(*data)


def queue_key(queue: str) -> str:
    """Aggregation key of a queue."""
    return "q:" + queue


def campaign_key(campaign: str) -> str:
    """Aggregation key of an outbound campaign."""
    return "c:" + campaign


def diff(old: list[Fact], new: list[Fact]) -> list[Fact]:
    """Return what turns the facts ``old`` into ``new``: retractions first, then additions, in order.

    Derivations mostly grow at the end, so the common prefix is skipped before the tails are compared.
    """
    n = min(len(old), len(new))
    i = 0
    while i < n and old[i] == new[i]:
        i += 1
    old_tail, new_tail = old[i:], new[i:]
    if not old_tail:
        return list(new_tail)
    old_set = set(old_tail)
    new_set = set(new_tail)
    out = [f.retraction() for f in old_tail if f not in new_set]
    out.extend(f for f in new_tail if f not in old_set)
    return out
