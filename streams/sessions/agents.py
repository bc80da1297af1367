"""Agent timelines: an agent's state in each queue it serves, as open states and closed intervals.

``agent_state`` events carry no call. An agent's events within grace stay *pending* (sorted, so a late one
can still be inserted); older ones are folded into the *base*: the state and, per queue, since when. The
facts are the closed intervals (``agent_time``) and the open state per queue (``agent``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from streams.facts import Fact, agent_fact, diff, queue_key


class AgentEvent(NamedTuple):
    """One pending ``agent_state`` event (persisted as this JSON array)."""

    ts_ms: int
    event_id: str
    state: str
    #: The queue it applies to; None: every queue the agent serves.
    queue: str | None

    def order(self) -> tuple[int, str]:
        """Events of one agent are walked in this order."""
        return (self.ts_ms, self.event_id)


def agent_step(
    state: str,
    qs: dict[str, int],
    ts: int,
    new_state: str,
    queue: str | None,
    agent: str,
    out: list[Fact] | None,
) -> str:
    """Apply one agent_state event to (state, queue -> interval start); append closed intervals to ``out``."""
    if queue is not None:
        if new_state == "offline":
            # Removed from this queue only; its state in its other queues goes on unchanged.
            if queue in qs:
                if out is not None and ts > qs[queue]:
                    out.append(_interval(agent, queue, state, qs[queue], ts))
                del qs[queue]
            return state
        if new_state != state:
            _close_all(agent, state, qs, ts, out)
        if queue not in qs:
            qs[queue] = ts
        return new_state
    # No queue: the agent's state changes in every queue it belongs to; offline logs it out of all.
    if new_state != state or new_state == "offline":
        _close_all(agent, state, qs, ts, out)
    if new_state == "offline":
        qs.clear()
    return new_state


def _close_all(agent: str, state: str, qs: dict[str, int], ts: int, out: list[Fact] | None) -> None:
    for q, since in qs.items():
        if out is not None and ts > since:
            out.append(_interval(agent, q, state, since, ts))
        qs[q] = ts


def _interval(agent: str, queue: str, state: str, since: int, until: int) -> Fact:
    return agent_fact(
        "agent_time", queue_key(queue), until, f"agent_time:{agent}:{queue}:{since}", agent, state, since
    )


@dataclass(slots=True)
class AgentWalk:
    """An agent's timeline walked over its pending events: where a later event continues."""

    state: str
    queues: dict[str, int]
    closed: list[Fact]
    open: list[Fact]

    @classmethod
    def over(cls, agent: str, state: str, queues: dict[str, int], pending: list[AgentEvent]) -> AgentWalk:
        """Walk ``pending`` from (state, queues); ``queues`` is changed in place."""
        closed: list[Fact] = []
        for ts, _eid, new_state, queue in pending:
            state = agent_step(state, queues, ts, new_state, queue, agent, closed)
        return cls(state, queues, closed, open_facts(agent, state, queues))


def open_facts(agent: str, state: str, qs: dict[str, int]) -> list[Fact]:
    """The agent's open state in each queue it serves."""
    return [
        agent_fact("agent", queue_key(q), since, f"agent:{agent}:{q}", agent, state, since)
        for q, since in qs.items()
    ]


def derive_agent(agent: str, base: tuple[str, dict[str, int]], pending: list[AgentEvent]) -> list[Fact]:
    """Facts of an agent from its base state and its sorted pending events.

    The closed intervals, then the open state per queue.
    """
    walk = AgentWalk.over(agent, base[0], dict(base[1]), pending)
    return walk.closed + walk.open


class AgentSession:
    """One agent's timeline: a folded base, events still within grace, and recent event ids."""

    __slots__ = ("state", "queues", "pending", "seen", "walked")

    def __init__(
        self,
        state: str = "offline",
        queues: dict[str, int] | None = None,
        pending: list[AgentEvent] | None = None,
        seen: dict[str, int] | None = None,
    ) -> None:
        #: The base: the state of every event folded so far, and since when the agent is in each queue.
        self.state = state
        self.queues: dict[str, int] = queues or {}
        self.pending: list[AgentEvent] = pending or []
        #: Event id -> time, for de-duplication (kept for the dedup TTL).
        self.seen: dict[str, int] = seen or {}
        #: The walk after the pending events, where a later event continues; None when it must be walked
        #: again (not persisted).
        self.walked: AgentWalk | None = None

    def _walk(self, agent: str) -> AgentWalk:
        if self.walked is None:
            self.walked = AgentWalk.over(agent, self.state, dict(self.queues), self.pending)
        return self.walked

    def derived(self, agent: str) -> list[Fact]:
        """The agent's facts after its pending events."""
        walk = self._walk(agent)
        return walk.closed + walk.open

    def add(self, agent: str, item: AgentEvent) -> list[Fact]:
        """Insert one event; return the facts it changes."""
        if not self.pending or item[:2] > self.pending[-1][:2]:  # later than every pending event (order())
            # Later than every pending event: continue the walk instead of deriving it all again. Closed
            # intervals only grow; the open states are compared, which is what diff would find.
            walk = self._walk(agent)
            old_open, n = walk.open, len(walk.closed)
            self.pending.append(item)
            walk.state = agent_step(
                walk.state, walk.queues, item.ts_ms, item.state, item.queue, agent, walk.closed
            )
            walk.open = open_facts(agent, walk.state, walk.queues)
            # The open state of a queue the agent is still in is replaced by its new one (an upsert).
            still_in = {f.key for f in walk.open}
            changes = [f.retraction() for f in old_open if f.key not in still_in]
            changes.extend(walk.closed[n:])
            changes.extend(f for f in walk.open if f not in old_open)
            return changes
        old = self.derived(agent)
        _insert_sorted(self.pending, item)
        self.walked = None
        return diff(old, self.derived(agent))

    def fold(self, agent: str, before: int) -> None:
        """Fold the pending events older than ``before`` into the base (they can no longer change)."""
        pending = self.pending
        if pending and pending[0].ts_ms < before:
            while pending and pending[0].ts_ms < before:
                ts, _eid, new_state, queue = pending.pop(0)
                self.state = agent_step(self.state, self.queues, ts, new_state, queue, agent, None)
            self.walked = None

    def to_wire(self) -> list[object]:
        """The JSON array a snapshot stores: [state, queues, pending, seen]."""
        return [self.state, self.queues, [list(p) for p in self.pending], self.seen]

    @classmethod
    def from_wire(cls, data: list[object]) -> AgentSession:
        """Inverse of ``to_wire``."""
        state, queues, pending, seen = data
        assert isinstance(state, str) and isinstance(queues, dict) and isinstance(pending, list)
        assert isinstance(seen, dict)
        return cls(state, queues, [AgentEvent(*p) for p in pending], seen)


def _insert_sorted(pending: list[AgentEvent], item: AgentEvent) -> None:
    i = len(pending)
    while i > 0 and pending[i - 1].order() > item.order():
        i -= 1
    pending.insert(i, item)
