"""Facts: what the sessionizer tells the aggregator, one per thing that happened to a call or an agent.

A fact is keyed by ``q:<queue>``, ``c:<campaign>`` or ``a:<agent>`` (an agent's own figures), attributed to an event time (``ts_ms``) and carries
a deterministic id derived from the id of the event that caused it. A retraction is the same fact with
``sign = -1``: the aggregator subtracts exactly what it added.

Kinds and their fields (all durations in ms):

=============  ======================================================================
entered        queue stint began (E)
answered       ``wait_ms``
abandoned      ``wait_ms``
exited         ``wait_ms``, ``reason`` (flow-out)
refused        ``reason`` (not offered)
agent_missed   an agent rang until the ring timeout and did not answer
ring_abandoned an agent's phone rang and the caller hung up first (not held against the agent)
completed      ``talk_ms``, ``hold_ms``, ``holds``, ``acw_ms``, ``transferred`` (0/1)
expired        call idle for CALLPULSE_CALL_TIMEOUT
survey         ``scale``, ``score``
attempt, connected, contact, conversion   outbound, keyed by campaign
live           the call's live status in a queue: ``status`` waiting|talking|held since ``since_ms``,
               with the caller's pseudonym (``caller``) and priority (``priority``)
agent          an agent's open state in a queue since ``since_ms`` (``agent``, ``status``, ``reason``:
               why paused)
agent_next     the state an agent's open state turns into at ``since_ms`` without another event (the end
               of after-call work that lies beyond the stream time); ``ts_ms`` is the open state's since
agent_time     a closed agent-state interval [``since_ms``, ``ts_ms``) (``agent``, ``status``, ``reason``)
repeat         a call whose caller had another call answered in the queue within the repeat window
abandon_       an abandon (wait >= S) whose caller reached an agent within the recovery window after it
recovered      (at that time); ``abandon_unrecovered``: one that did not (at the window's end)
callback       a caller pending a call back in the queue: ``caller`` (pseudonym; also in ``call``, the
               upsert's identity), ``since_ms`` its first abandon, ``ts_ms`` its latest
=============  ======================================================================

``live``, ``agent``, ``agent_next`` and ``callback`` facts are upserts: the aggregator keeps one value per call
(``live``), agent (``agent``, ``agent_next``) or caller (``callback``) and key, and a new fact replaces it. So a status change is sent as the new fact alone; a
retraction is sent only when nothing replaces the old value (the call left the queue, the agent logged off).
"""

from __future__ import annotations

from operator import attrgetter
from typing import Any, NamedTuple

#: Fact kinds that count calls or outcomes (as opposed to live state).
COUNT_KINDS = (
    "entered",
    "answered",
    "abandoned",
    "exited",
    "refused",
    "agent_missed",
    "ring_abandoned",
    "completed",
    "expired",
    "survey",
    "attempt",
    "connected",
    "contact",
    "conversion",
    "repeat",
    "abandon_recovered",
    "abandon_unrecovered",
)
FACT_KINDS = (*COUNT_KINDS, "live", "agent", "agent_next", "agent_time", "callback")
#: Fact kinds that are upserts of a live value rather than counts (see the module docstring).
LIVE_KINDS = frozenset(("live", "agent", "agent_next", "callback"))


class Fact(NamedTuple):
    """One fact.

    A tuple: equality and hashing cover every field (in C), so a changed fact with the same ``fid`` differs.
    """

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
    #: The caller's pseudonym (``live``: the waiting, talking or held caller; "" when the source gives none).
    caller: str = ""
    #: The caller's priority in the queue (``live``; higher is served first, 0 when the source gives none).
    priority: int = 0
    sign: int = 1

    def retraction(self) -> Fact:
        """Return this fact with the opposite sign."""
        return tuple.__new__(Fact, (*self[:-1], -self[-1]))

    def with_wrapup(self, ts_ms: int) -> Fact:
        """This completion, amended by a wrap-up at ``ts_ms``: attributed to that time, with the after-call work."""
        return self._replace(ts_ms=ts_ms, acw_ms=ts_ms - self.ts_ms)

    def encode(self) -> list[Any]:
        """Return the compact wire form (a JSON array)."""
        return list(self)

    @classmethod
    def decode(cls, data: list[Any]) -> Fact:
        """Inverse of ``encode`` (also of the 18-field form written before facts had a caller and priority)."""
        if len(data) == _FIELDS_BEFORE_CALLER:
            return tuple.__new__(cls, (*data[:-1], "", 0, data[-1]))
        return cls(*data)


_new = tuple.__new__
#: Fields of a fact before ``caller`` and ``priority`` were added (tombstones may hold that form).
_FIELDS_BEFORE_CALLER = 18


# Constructors of the most frequent facts (every field given: a third of the cost of keyword arguments).
def live_fact(
    key: str, ts_ms: int, call: str, status: str, since_ms: int, caller: str = "", priority: int = 0
) -> Fact:
    """A call's live status in a queue (``live``), with its caller's pseudonym and priority."""
    return _new(
        Fact,
        (
            "live",
            key,
            ts_ms,
            "live:" + call,
            call,
            0,
            "",
            0,
            0,
            0,
            0,
            0,
            "",
            0,
            status,
            since_ms,
            "",
            caller,
            priority,
            1,
        ),
    )


def agent_fact(
    kind: str, key: str, ts_ms: int, fid: str, agent: str, status: str, since_ms: int, reason: str = ""
) -> Fact:
    """An agent's open state (``agent``), its next state (``agent_next``) or a closed interval (``agent_time``)."""
    return _new(
        Fact, (kind, key, ts_ms, fid, "", 0, reason, 0, 0, 0, 0, 0, "", 0, status, since_ms, agent, "", 0, 1)
    )


# -- the wire form (calls.facts) -------------------------------------------------------------------------
#
# A facts message is keyed by the aggregation key and holds only what the aggregator reads: per kind, the
# fields of its wire record below, as a JSON array. The key (the message's) and the id (the sessionizer's
# business) are left out: a third of the bytes of the full 18-field form, and a third of the objects to
# decode. Each record's field names are those of ``Fact``: ``to_wire`` reads them from a fact, ``from_wire``
# names them again for the aggregator.


class PlainWire(NamedTuple):
    """entered, agent_missed, ring_abandoned, expired, attempt, connected, contact, conversion."""

    kind: str
    ts_ms: int
    sign: int


class WaitWire(NamedTuple):
    """answered, abandoned."""

    kind: str
    ts_ms: int
    sign: int
    wait_ms: int
    #: The call (its announced wait is scored when it leaves the queue; "" in facts written before).
    call: str = ""


class ExitedWire(NamedTuple):
    """exited (a flow-out)."""

    kind: str
    ts_ms: int
    sign: int
    wait_ms: int
    reason: str
    call: str = ""


class RefusedWire(NamedTuple):
    """refused."""

    kind: str
    ts_ms: int
    sign: int
    reason: str


class CompletedWire(NamedTuple):
    """completed."""

    kind: str
    ts_ms: int
    sign: int
    talk_ms: int
    hold_ms: int
    holds: int
    acw_ms: int
    transferred: int


class SurveyWire(NamedTuple):
    """survey."""

    kind: str
    ts_ms: int
    sign: int
    scale: str
    score: int


class LiveWire(NamedTuple):
    """live (an upsert per call)."""

    kind: str
    ts_ms: int
    sign: int
    call: str
    status: str
    since_ms: int
    #: The caller's pseudonym and priority (written since callers are listed; older facts lack them).
    caller: str = ""
    priority: int = 0


class AgentWire(NamedTuple):
    """agent and agent_next (upserts per agent) and agent_time (a closed interval)."""

    kind: str
    ts_ms: int
    sign: int
    agent: str
    status: str
    since_ms: int
    #: Why the agent is paused ("" otherwise).
    reason: str


class CallbackWire(NamedTuple):
    """callback (an upsert per caller): its pseudonym and first abandon (``ts_ms``: its latest)."""

    kind: str
    ts_ms: int
    sign: int
    caller: str
    since_ms: int


WireFact = (
    PlainWire
    | WaitWire
    | ExitedWire
    | RefusedWire
    | CompletedWire
    | SurveyWire
    | LiveWire
    | AgentWire
    | CallbackWire
)

#: The wire record of each fact kind (kinds not named here: ``PlainWire``).
WIRE_RECORDS: dict[str, type[WireFact]] = {
    "answered": WaitWire,
    "abandoned": WaitWire,
    "exited": ExitedWire,
    "refused": RefusedWire,
    "completed": CompletedWire,
    "survey": SurveyWire,
    "live": LiveWire,
    "agent": AgentWire,
    "agent_next": AgentWire,
    "agent_time": AgentWire,
    "callback": CallbackWire,
}
_TO_WIRE = {kind: attrgetter(*record._fields) for kind, record in WIRE_RECORDS.items()}
_PLAIN = attrgetter(*PlainWire._fields)


def to_wire(fact: Fact) -> list[object]:
    """The wire form of a fact: the fields of its kind's wire record, in order (JSON: an array)."""
    return list(_TO_WIRE.get(fact.kind, _PLAIN)(fact))


def from_wire(data: list[object] | tuple[object, ...]) -> WireFact:
    """A fact's wire form (as decoded from JSON) as its kind's wire record."""
    record: Any = WIRE_RECORDS.get(str(data[0]), PlainWire)
    wire: WireFact = tuple.__new__(record, data)
    return wire


def queue_key(queue: str) -> str:
    """Aggregation key of a queue."""
    return "q:" + queue


def agent_key(agent: str) -> str:
    """Aggregation key of an agent (its own figures, across the queues it serves)."""
    return "a:" + agent


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
    out = [
        f.retraction()
        for f in old_tail
        if f not in new_set and not (f.kind in LIVE_KINDS and live_identity(f) in replaced)
    ]
    out.extend(added)
    return out
