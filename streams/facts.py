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

``live`` and ``agent`` facts are upserts: the aggregator keeps one value per call (``live``) or agent
(``agent``) and key, and a new fact replaces it. So a status change is sent as the new fact alone; a
retraction is sent only when nothing replaces the old value (the call left the queue, the agent logged off).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

#: Fact kinds that count calls or outcomes (as opposed to live state).
COUNT_KINDS = (
    "entered", "answered", "abandoned", "exited", "refused", "agent_missed", "completed", "expired",
    "survey", "attempt", "connected", "contact", "conversion",
)
FACT_KINDS = (*COUNT_KINDS, "live", "agent", "agent_time")
#: Fact kinds that are upserts of a live value rather than counts (see the module docstring).
LIVE_KINDS = frozenset(("live", "agent"))


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


_new = tuple.__new__


# Constructors of the most frequent facts (every field given: a third of the cost of keyword arguments).
def live_fact(key: str, ts_ms: int, call: str, status: str, since_ms: int) -> Fact:
    """A call's live status in a queue (``live``)."""
    return _new(Fact, ("live", key, ts_ms, "live:" + call, call, 0, "", 0, 0, 0, 0, 0, "", 0, status, since_ms, "", 1))


def agent_fact(kind: str, key: str, ts_ms: int, fid: str, agent: str, status: str, since_ms: int) -> Fact:
    """An agent's open state (``agent``) or a closed interval (``agent_time``) in a queue."""
    return _new(Fact, (kind, key, ts_ms, fid, "", 0, "", 0, 0, 0, 0, 0, "", 0, status, since_ms, agent, 1))


# -- the wire form (calls.facts) -------------------------------------------------------------------------
#
# A facts message is keyed by the aggregation key and holds only what the aggregator reads, per kind:
# ``[kind, ts_ms, sign, ...]`` followed by
#
#   answered, abandoned   wait_ms
#   exited                wait_ms, reason
#   refused               reason
#   completed             talk_ms, hold_ms, holds, acw_ms, transferred
#   survey                scale, score
#   live                  call, status, since_ms
#   agent, agent_time     agent, status, since_ms
#   (other kinds)         nothing
#
# The key (the message's) and the id (the sessionizer's business) are left out: a third of the bytes of the
# full 18-field form, and a third of the objects to decode.

_WIRE: dict[str, Callable[[Fact], list]] = {
    "answered": lambda f: [f.kind, f.ts_ms, f.sign, f.wait_ms],
    "abandoned": lambda f: [f.kind, f.ts_ms, f.sign, f.wait_ms],
    "exited": lambda f: [f.kind, f.ts_ms, f.sign, f.wait_ms, f.reason],
    "refused": lambda f: [f.kind, f.ts_ms, f.sign, f.reason],
    "completed": lambda f: [f.kind, f.ts_ms, f.sign, f.talk_ms, f.hold_ms, f.holds, f.acw_ms, f.transferred],
    "survey": lambda f: [f.kind, f.ts_ms, f.sign, f.scale, f.score],
    "live": lambda f: [f.kind, f.ts_ms, f.sign, f.call, f.status, f.since_ms],
    "agent": lambda f: [f.kind, f.ts_ms, f.sign, f.agent, f.status, f.since_ms],
    "agent_time": lambda f: [f.kind, f.ts_ms, f.sign, f.agent, f.status, f.since_ms],
}


def _plain(f: Fact) -> list:
    return [f.kind, f.ts_ms, f.sign]


def to_wire(fact: Fact) -> list:
    """The wire form of a fact (see above)."""
    return _WIRE.get(fact.kind, _plain)(fact)


def queue_key(queue: str) -> str:
    """Aggregation key of a queue."""
    return "q:" + queue


def campaign_key(campaign: str) -> str:
    """Aggregation key of an outbound campaign."""
    return "c:" + campaign


def live_identity(fact: Fact) -> tuple[str, str, str, str]:
    """What a ``live`` or ``agent`` fact is the value of: a later fact with the same identity replaces it."""
    return fact.kind, fact.key, fact.call, fact.agent


def diff(old: list[Fact], new: list[Fact]) -> list[Fact]:
    """Return what turns the facts ``old`` into ``new``: retractions first, then additions, in order.

    A live value that an addition replaces (same ``live_identity``) is not retracted (upserts).
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
    added = [f for f in new_tail if f not in old_set]
    replaced = {live_identity(f) for f in added if f.kind in LIVE_KINDS}
    out = [f.retraction() for f in old_tail
           if f not in new_set and not (f.kind in LIVE_KINDS and live_identity(f) in replaced)]
    out.extend(added)
    return out
