"""The call sessionizer: per-call state machines that turn events into facts, exactly, in any arrival order.

Theory of operation
-------------------
State lives in *buckets*, one per Kafka message key (the call bucket of DESIGN 2), so that one message
touches one bucket. A bucket holds:

- ``calls``: every call that is open or ended less than the grace period ago, as the list of its events
  sorted by ``(ts, tie-break rank, event id)``;
- ``done``: tombstones of finalized calls (their event ids, for de-duplication, plus what a late wrap-up
  or survey needs), kept for ``dedup_ttl_ms``;
- ``agents``: agent-state timelines (``agent_state`` events carry no call);
- ``wm``: the bucket's watermark, the largest event time seen; it never moves back.

Rule 1: a call's facts are a pure function of its sorted events (``derive``). On every new event the facts
are derived again and the difference to the previous derivation is emitted: retractions of facts that no
longer hold, then the new facts. So the facts in force after all events of a call are in are the same for
every arrival order: an in-order stream emits no retraction, a late answer behind its hangup retracts the
abandon and emits the answer.

Rule 2: an event older than ``wm - grace`` is ``late`` (older than ``wm - max_event_age``: ``too_old``)
and is rejected, never applied: a finalized call cannot change. A duplicate (same event id within the same
call, while the call or its tombstone is remembered) is counted and ignored; duplicates win over lateness.

Rule 3: housekeeping runs after each message, on event time only: a call with no event for
``call_timeout_ms`` gets a synthetic ``expire`` event; an ended call whose last event is older than
``wm - grace`` is finalized into a tombstone; tombstones older than ``wm - dedup_ttl`` are forgotten.
Replaying the same messages from the same snapshot gives the same facts (determinism, for recovery).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from streams.events import TYPE_RANK, CallEvent
from streams.facts import Fact, agent_fact, campaign_key, diff, live_fact, queue_key

#: Separates the event ids of a tombstone (one string per finished call instead of a list of them).
SEP = "\x1f"
#: Tombstones are kept in chunks of this many ms of finalization time (persisted one key per chunk).
TOMB_CHUNK_MS = 600_000
#: The slot of a tombstone chunk persisted before chunks had two slots (see ``BucketState.checkpoint_chunks``).
LEGACY_SLOT = -1
#: A watermark no stream reaches (no housekeeping due).
_NEVER = 2**62

#: A stored call event: (ts_ms, type, event_id, queue, a, b). ``a``/``b`` by type: answer and
#: agent_missed: agent; exit and refused: reason; hangup: disposition; transfer: target; dial: campaign;
#: survey: scale, score. ``b`` holds the campaign on other outbound events. The last element is 1 for an
#: outbound event.
Ev = tuple

# Call states of the inbound machine (derive).
NEW, IVR, QUEUED, CONNECTED, HELD, LEFT, ENDED = "new", "ivr", "queued", "connected", "held", "left", "ended"


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """Sessionizer settings (all milliseconds)."""

    grace_ms: int = 120_000
    call_timeout_ms: int = 4 * 3600_000
    dedup_ttl_ms: int = 24 * 3600_000
    max_event_age_ms: int = 86_400_000
    contact_min_talk_ms: int = 30_000

    def __post_init__(self) -> None:
        for name in ("grace_ms", "call_timeout_ms", "dedup_ttl_ms", "max_event_age_ms", "contact_min_talk_ms"):
            if getattr(self, name) < 0:
                msg = f"{name} must be >= 0"
                raise ValueError(msg)


def to_ev(event: CallEvent) -> Ev:
    """Return the compact stored form of a call event."""
    t = event.type
    a: object = None
    b: object = event.campaign
    if t in ("answer", "agent_missed"):
        a = event.agent
    elif t in ("exit", "refused"):
        a = event.reason
    elif t == "hangup":
        a = event.disposition
    elif t == "transfer":
        a = event.target
    elif t == "dial":
        a = event.campaign
    elif t == "survey":
        a, b = event.scale, event.score
    return (event.ts_ms, t, event.event_id, event.queue, a, b, 1 if event.outbound else 0)


def sort_key(ev: Ev) -> tuple:
    """Order of a call's events: time, then the tie-break rank of DESIGN 2, then the event id."""
    return (ev[0], TYPE_RANK[ev[1]], ev[2])


@dataclass(slots=True)
class Derivation:
    """What ``derive`` knows about a call after its events."""

    facts: list[Fact]
    ended: bool
    #: Queue key a later survey is attributed to ("" when none).
    survey_key: str
    #: The last completed fact while no wrap-up has amended it (a late wrap-up may still do so).
    open_completed: Fact | None
    #: The inbound walk after the last event: a strictly later event can continue it (not persisted).
    walk: _InboundWalk | None = None


def derive(call_id: str, events: list[Ev], contact_min_talk_ms: int) -> Derivation:
    """Derive every fact of one call from its events, sorted by ``sort_key``."""
    if any(ev[6] for ev in events) or any(ev[1] == "dial" for ev in events):
        return _derive_outbound(call_id, events, contact_min_talk_ms)
    return _derive_inbound(call_id, events)


def _derive_inbound(call_id: str, events: list[Ev]) -> Derivation:
    walk = _InboundWalk(call_id)
    done_idx: set[int] = set()
    n = len(events)
    for i, ev in enumerate(events):
        if i in done_idx:
            continue
        if ev[1] == "queue" and walk.state != ENDED:
            # Equal timestamps: the exit, transfer or refusal that closes the call's current queue attempt
            # comes before the next queue event. DESIGN's rank puts queue first, which is right for one
            # stint, but a call leaving q1 and entering q2 in the same second would have its exit applied
            # to q2.
            j = i + 1
            while j < n and events[j][0] == ev[0]:
                other = events[j]
                if j not in done_idx and other[3] != ev[3] and walk.closes_attempt(other[1]):
                    done_idx.add(j)
                    walk.step(other)
                    break
                j += 1
        walk.step(ev)
    return walk.result()


class _InboundWalk:
    """The inbound call state machine, applied to a call's sorted events one by one."""

    def __init__(self, call_id: str) -> None:
        self.call_id = call_id
        self.facts: list[Fact] = []
        self.state = NEW
        self.q = ""  # queue of the current stint
        self.enq = 0
        self.ans_q = ""  # queue whose agent talks (or last talked) with the caller
        self.ans = 0
        self.hold_start = 0
        self.hold_ms = 0
        self.holds = 0
        self.pending_co = -1  # index in facts of the completed fact a wrap-up may still amend
        self.last_q = ""
        #: What the last ``continue_with`` changed.
        self.changes: list[Fact] = []

    def closes_attempt(self, etype: str) -> bool:
        """Whether an event of this type would close the call's current queue attempt."""
        if etype == "exit":
            return self.state == QUEUED
        if etype == "transfer":
            return self.state in (QUEUED, CONNECTED, HELD)
        return etype == "refused"

    def _start_stint(self, queue: str, ts: int, eid: str) -> None:
        self.state, self.q, self.enq, self.last_q = QUEUED, queue, ts, queue
        self.facts.append(Fact("entered", queue_key(queue), ts, "entered:" + eid, self.call_id))

    def _leave_queue(self, kind: str, ts: int, eid: str, reason: str = "") -> None:
        self.facts.append(Fact(kind, queue_key(self.q), ts, f"{kind}:{eid}", self.call_id, wait_ms=ts - self.enq,
                               reason=reason))

    def _complete(self, ts: int, eid: str, transferred: int) -> None:
        if self.state == HELD:
            self.hold_ms += ts - self.hold_start
        if self.ans_q:
            self.facts.append(Fact("completed", queue_key(self.ans_q), ts, "completed:" + eid, self.call_id,
                                   talk_ms=ts - self.ans, hold_ms=self.hold_ms, holds=self.holds,
                                   transferred=transferred))
            self.pending_co = len(self.facts) - 1
        self.hold_ms = self.holds = 0

    def step(self, ev: Ev) -> None:  # one branch per event type, like the transition table
        ts, t, eid, queue = ev[0], ev[1], ev[2], ev[3]
        state = self.state
        if state == ENDED and t not in ("wrapup", "survey"):
            return
        facts = self.facts
        if t == "ring":
            if state == NEW:
                self.state = IVR
        elif t == "queue":
            if state == QUEUED:
                if queue == self.q:
                    return  # the same queue again: the stint goes on
                self._leave_queue("exited", ts, eid, "transfer")
            elif state in (CONNECTED, HELD):
                self._complete(ts, eid, 1)
            self._start_stint(queue, ts, eid)
        elif t == "agent_missed":
            mq = queue or self.q or self.last_q
            if mq:
                facts.append(Fact("agent_missed", queue_key(mq), ts, "agent_missed:" + eid, self.call_id))
        elif t == "answer":
            if state == QUEUED:
                self._leave_queue("answered", ts, eid)
                self.state, self.ans_q, self.ans = CONNECTED, self.q, ts
            elif state in (NEW, IVR, LEFT):
                # Answered without waiting in a queue (direct, or the next agent after a transfer):
                # handled, but not offered.
                self.state, self.ans = CONNECTED, ts
                self.ans_q = queue or self.ans_q
        elif t == "hold":
            if state == CONNECTED:
                self.state, self.hold_start = HELD, ts
                self.holds += 1
        elif t == "unhold":
            if state == HELD:
                self.hold_ms += ts - self.hold_start
                self.state = CONNECTED
        elif t == "transfer":
            if state in (CONNECTED, HELD):
                self._complete(ts, eid, 1)
                self.state = LEFT
            elif state == QUEUED:
                self._leave_queue("exited", ts, eid, "transfer")
                self.state = LEFT
        elif t == "exit":
            if state == QUEUED:
                self._leave_queue("exited", ts, eid, ev[4])
                self.state = LEFT
        elif t == "refused":
            if state in (NEW, IVR, LEFT):
                facts.append(Fact("refused", queue_key(queue), ts, "refused:" + eid, self.call_id, reason=ev[4]))
                self.last_q = queue
                self.state = LEFT
        elif t == "abandon":
            if state == QUEUED:
                self._leave_queue("abandoned", ts, eid)
                self.state = ENDED
        elif t == "hangup":
            if state == QUEUED:
                self._leave_queue("abandoned", ts, eid)
            elif state in (CONNECTED, HELD):
                self._complete(ts, eid, 0)
            self.state = ENDED
        elif t == "wrapup":
            if self.pending_co >= 0:
                co = facts[self.pending_co]
                facts[self.pending_co] = Fact("completed", co.key, ts, co.fid, self.call_id, talk_ms=co.talk_ms,
                                              hold_ms=co.hold_ms, holds=co.holds, acw_ms=ts - co.ts_ms,
                                              transferred=co.transferred)
                self.pending_co = -1
        elif t == "survey":
            sq = self.ans_q or self.q or self.last_q or queue
            if sq:
                facts.append(Fact("survey", queue_key(sq), ts, "survey:" + eid, self.call_id, scale=ev[4],
                                  score=ev[5]))
        elif t == "expire":
            # Only a call lost while waiting or talking is expired; one that already left its queue
            # (transferred away, exited) simply ends without its hangup.
            xq = self.q if state == QUEUED else self.ans_q if state in (CONNECTED, HELD) else ""
            if xq:
                facts.append(Fact("expired", queue_key(xq), ts, "expired:" + eid, self.call_id))
            self.state = ENDED

    def continue_with(self, ev: Ev, before: Derivation) -> Derivation:
        """Step one event later than all before it; ``self.changes`` gets what ``diff`` would give.

        The walk's facts only grow, except the completion a wrap-up amends in place; the live fact is
        computed afresh. So the changes are known without comparing the two derivations.
        """
        n = len(self.facts)
        co_i = self.pending_co
        co_old = self.facts[co_i] if co_i >= 0 else None
        self.step(ev)
        after = self.result()
        old_live = before.facts[-1] if before.facts and before.facts[-1].kind == "live" else None
        new_live = after.facts[-1] if after.facts and after.facts[-1].kind == "live" else None
        changes: list[Fact] = []
        co_new = self.facts[co_i] if co_old is not None else None
        if co_old is not None and co_new != co_old:
            changes.append(co_old.retraction())
        if old_live is not None and old_live != new_live and (new_live is None or new_live.key != old_live.key):
            changes.append(old_live.retraction())  # not when the new live value replaces it (an upsert)
        if co_new is not None and co_new != co_old:
            changes.append(co_new)
        changes.extend(self.facts[n:])
        if new_live is not None and new_live != old_live:
            changes.append(new_live)
        self.changes = changes
        return after

    def result(self) -> Derivation:
        """The derivation so far; the walk's own fact list is copied, so stepping on leaves it intact."""
        facts, call_id, state = list(self.facts), self.call_id, self.state
        if state == QUEUED:
            facts.append(live_fact(queue_key(self.q), self.enq, call_id, "waiting", self.enq))
        elif state == CONNECTED and self.ans_q:
            facts.append(live_fact(queue_key(self.ans_q), self.ans, call_id, "talking", self.ans))
        elif state == HELD and self.ans_q:
            facts.append(live_fact(queue_key(self.ans_q), self.hold_start, call_id, "held", self.hold_start))
        sq = self.ans_q or self.q or self.last_q
        open_co = facts[self.pending_co] if self.pending_co >= 0 else None
        return Derivation(facts, state == ENDED, queue_key(sq) if sq else "", open_co, self)


def _derive_outbound(call_id: str, events: list[Ev], contact_min_talk_ms: int) -> Derivation:
    """Outbound: every ``dial`` is an attempt (a channel may redial under one call id); an ``answer``
    connects one dialled attempt; a ``hangup`` judges the last open answer (contact, conversion).

    Outcomes are not paired with attempts by order: redials within one second sort all dials first
    (equal timestamps), and the counts must not depend on that.
    """
    campaign = next((ev[4] for ev in events if ev[1] == "dial"), None) or next(
        (ev[5] for ev in events if ev[1] != "survey" and ev[5]), None) or "default"
    key = campaign_key(campaign)
    facts: list[Fact] = []
    dials = answers = hangups = 0
    open_answer = -1
    for ev in events:
        ts, t, eid = ev[0], ev[1], ev[2]
        if t == "dial":
            dials += 1
            facts.append(Fact("attempt", key, ts, "attempt:" + eid, call_id))
        elif t == "answer":
            if answers < dials:
                answers += 1
                open_answer = ts
                facts.append(Fact("connected", key, ts, "connected:" + eid, call_id))
        elif t == "hangup":
            if hangups >= dials:
                continue
            hangups += 1
            disposition = ev[4]
            talk = ts - open_answer if open_answer >= 0 else -1
            if disposition in ("contact", "success") or (disposition is None and talk >= contact_min_talk_ms):
                facts.append(Fact("contact", key, ts, "contact:" + eid, call_id))
            if disposition == "success":
                facts.append(Fact("conversion", key, ts, "conversion:" + eid, call_id))
            open_answer = -1
        elif t == "expire":
            hangups = dials
    return Derivation(facts, dials > 0 and hangups >= dials, "", None)


# --------------------------------------------------------------------------------------------------------
# Agents: an agent's state timeline, per queue it is a member of.


def _agent_step(state: str, qs: dict[str, int], ts: int, new_state: str, queue: str | None,
                agent: str, out: list[Fact] | None) -> str:
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
    return agent_fact("agent_time", queue_key(queue), until, f"agent_time:{agent}:{queue}:{since}", agent, state, since)


def derive_agent(agent: str, base: tuple[str, dict[str, int]], pending: list[tuple]) -> list[Fact]:
    """Facts of an agent from its base state and its pending events ``(ts, eid, state, queue)``, sorted:
    the closed intervals, then the open state per queue."""
    _state, _qs, closed, open_ = _agent_walk(agent, base[0], dict(base[1]), pending)
    return closed + open_


def _agent_walk(agent: str, state: str, qs: dict[str, int], pending: list[tuple]) -> list:
    """Walk ``pending`` from (state, qs); return [end state, its queues, closed intervals, open facts]."""
    closed: list[Fact] = []
    for ts, _eid, new_state, queue in pending:
        state = _agent_step(state, qs, ts, new_state, queue, agent, closed)
    return [state, qs, closed, _open_facts(agent, state, qs)]


def _open_facts(agent: str, state: str, qs: dict[str, int]) -> list[Fact]:
    return [agent_fact("agent", queue_key(q), since, f"agent:{agent}:{q}", agent, state, since)
            for q, since in qs.items()]


class AgentSession:
    """One agent's timeline: a folded base, events still within grace, and recent event ids."""

    __slots__ = ("state", "queues", "pending", "seen", "walked")

    def __init__(self, state: str = "offline", queues: dict[str, int] | None = None,
                 pending: list[tuple] | None = None, seen: dict[str, int] | None = None) -> None:
        self.state = state
        self.queues: dict[str, int] = queues or {}
        self.pending: list[tuple] = pending or []
        self.seen: dict[str, int] = seen or {}
        #: [state, queues, closed intervals, open facts] after the pending events (``_agent_walk``), where a
        #: later event continues; None when it must be walked again (not persisted).
        self.walked: list | None = None

    def _walk(self, agent: str) -> list:
        if self.walked is None:
            self.walked = _agent_walk(agent, self.state, dict(self.queues), self.pending)
        return self.walked

    def derived(self, agent: str) -> list[Fact]:
        _state, _qs, closed, open_ = self._walk(agent)
        return closed + open_

    def add(self, agent: str, item: tuple) -> list[Fact]:
        """Insert one event ``(ts, eid, state, queue)``; return the facts it changes."""
        if not self.pending or item[:2] > self.pending[-1][:2]:
            # Later than every pending event: continue the walk instead of deriving it all again. Closed
            # intervals only grow; the open states are compared, which is what diff would find.
            walked = self._walk(agent)
            state, qs, closed, old_open = walked
            n = len(closed)
            self.pending.append(item)
            state = _agent_step(state, qs, item[0], item[2], item[3], agent, closed)  # qs, closed: in place
            new_open = _open_facts(agent, state, qs)
            walked[0], walked[3] = state, new_open
            # The open state of a queue the agent is still in is replaced by its new one (an upsert).
            still_in = {f.key for f in new_open}
            changes = [f.retraction() for f in old_open if f.key not in still_in]
            changes.extend(closed[n:])
            changes.extend(f for f in new_open if f not in old_open)
            return changes
        old = self.derived(agent)
        _insert_sorted_agent(self.pending, item)
        self.walked = None
        return diff(old, self.derived(agent))


# --------------------------------------------------------------------------------------------------------
# Buckets.


class CallSession:
    """An open (or recently ended) call: its sorted events and the cached derivation."""

    __slots__ = ("events", "eids", "derivation")

    def __init__(self, events: list[Ev]) -> None:
        self.events = events
        self.eids = {ev[2] for ev in events}
        self.derivation: Derivation | None = None

    @property
    def last_ts(self) -> int:
        return self.events[-1][0]

    def derived(self, call_id: str, config: SessionConfig) -> Derivation:
        if self.derivation is None:
            self.derivation = derive(call_id, self.events, config.contact_min_talk_ms)
        return self.derivation


class Applied(NamedTuple):
    """The outcome of one event: ``status`` is ``ok``, ``duplicate``, ``late`` or ``too_old``."""

    status: str
    facts: list[Fact]
    error: str = ""


class BucketState:
    """All sessionizer state of one message key, and the operations on it."""

    __slots__ = ("config", "hw", "wm", "calls", "done", "chunks", "slots", "dirty_chunks", "deleted_chunks", "agents",
                 "due")

    def __init__(self, config: SessionConfig) -> None:
        self.config = config
        #: Offset of the last source message applied (-1: none); replays at or below it are skipped.
        self.hw = -1
        #: Watermark: the largest event time seen (ms), ``None`` before the first event.
        self.wm: int | None = None
        self.calls: dict[str, CallSession] = {}
        #: call id -> tombstone [last_ts, event ids joined by SEP, survey queue key, open completed fact
        #: (encoded) or None, chunk]; the same lists as in ``chunks``
        self.done: dict[str, list] = {}
        #: Tombstones by the TOMB_CHUNK_MS chunk of their finalization, persisted one key per chunk: a
        #: checkpoint writes only the chunks that changed, and a chunk past DEDUP_TTL goes as a whole.
        self.chunks: dict[int, dict[str, list]] = {}
        #: chunk -> the slot (0 or 1) of its persisted version; LEGACY_SLOT: stored before slots existed.
        #: See ``checkpoint_chunks``.
        self.slots: dict[int, int] = {}
        self.dirty_chunks: set[int] = set()
        self.deleted_chunks: set[int] = set()
        self.agents: dict[str, AgentSession] = {}
        #: No housekeeping is due before the watermark reaches this (a lower bound; not persisted, so a
        #: restored bucket sweeps in full at its first message).
        self.due = 0

    # -- events -------------------------------------------------------------------------------------------
    def apply(self, event: CallEvent) -> Applied:
        """Apply one validated event; return its status and the facts it changes."""
        if event.type == "agent_state":
            return self._apply_agent(event)
        call_id = event.call_id
        assert call_id is not None
        session = self.calls.get(call_id)
        tomb = self.done.get(call_id)
        if (session is not None and event.event_id in session.eids) or (tomb is not None and _holds(tomb[1], event.event_id)):
            return Applied("duplicate", [])
        lateness = self._lateness(event.ts_ms)
        if lateness is not None:
            return lateness
        self._advance(event.ts_ms)
        self._touch(event.ts_ms)
        if session is None and tomb is not None and event.type in ("wrapup", "survey"):
            return Applied("ok", self._apply_to_tombstone(tomb, event))
        ev = to_ev(event)
        if session is None:
            session = self.calls[call_id] = CallSession([ev])
            return Applied("ok", session.derived(call_id, self.config).facts)
        before = session.derived(call_id, self.config)
        session.eids.add(ev[2])
        walk = before.walk
        if walk is not None and not ev[6] and ev[1] != "dial" and _continues(session.events[-1], ev):
            # After every event of this inbound call: continue its walk (an out-of-order arrival inserts
            # and derives the call again).
            session.events.append(ev)
            session.derivation = walk.continue_with(ev, before)
            return Applied("ok", walk.changes)
        _insert_sorted(session.events, ev)
        session.derivation = None
        return Applied("ok", diff(before.facts, session.derived(call_id, self.config).facts))

    def _lateness(self, ts: int) -> Applied | None:
        wm = self.wm
        if wm is None:
            return None
        if ts < wm - self.config.max_event_age_ms:
            return Applied("too_old", [], f"ts is {(wm - ts) / 1000:.0f} s behind the stream time "
                                          f"(max_event_age_s={self.config.max_event_age_ms // 1000})")
        if ts < wm - self.config.grace_ms:
            return Applied("late", [], f"ts is {(wm - ts) / 1000:.0f} s behind the stream time "
                                       f"(grace_s={self.config.grace_ms // 1000})")
        return None

    def _advance(self, ts: int) -> None:
        if self.wm is None or ts > self.wm:
            self.wm = ts

    def _touch(self, ts: int) -> None:
        """An event at ``ts`` was applied: whatever it changed cannot need housekeeping before ts + grace
        (finalizing, folding), ts + call timeout (expiring) or ts + DEDUP_TTL (forgetting its id)."""
        cfg = self.config
        due = ts + min(cfg.grace_ms, cfg.call_timeout_ms, cfg.dedup_ttl_ms)
        if due < self.due:
            self.due = due

    def _apply_to_tombstone(self, tomb: list, event: CallEvent) -> list[Fact]:
        tomb[1] += SEP + event.event_id
        tomb[0] = max(tomb[0], event.ts_ms)
        self.dirty_chunks.add(tomb[4])
        if event.type == "survey":
            if not tomb[2]:
                return []
            return [Fact("survey", tomb[2], event.ts_ms, "survey:" + event.event_id, event.call_id or "",
                         scale=event.scale or "", score=event.score or 0)]
        if tomb[3] is None:
            return []
        co = Fact.decode(tomb[3])
        tomb[3] = None
        amended = Fact("completed", co.key, event.ts_ms, co.fid, co.call, talk_ms=co.talk_ms, hold_ms=co.hold_ms,
                       holds=co.holds, acw_ms=event.ts_ms - co.ts_ms, transferred=co.transferred)
        return [co.retraction(), amended]

    def _apply_agent(self, event: CallEvent) -> Applied:
        agent = event.agent or ""
        session = self.agents.get(agent)
        if session is not None and event.event_id in session.seen:
            return Applied("duplicate", [])
        lateness = self._lateness(event.ts_ms)
        if lateness is not None:
            return lateness
        self._advance(event.ts_ms)
        self._touch(event.ts_ms)
        if session is None:
            session = self.agents[agent] = AgentSession()
        session.seen[event.event_id] = event.ts_ms
        return Applied("ok", session.add(agent, (event.ts_ms, event.event_id, event.state, event.queue)))

    # -- housekeeping ---------------------------------------------------------------------------------------
    def sweep(self) -> list[Fact]:
        """Expire idle calls, finalize ended ones, fold agent timelines, forget old tombstones.

        Runs on event time (the watermark) only, so it is deterministic; call it after each message.
        """
        wm = self.wm
        if wm is None or wm < self.due:
            return []
        cfg = self.config
        facts: list[Fact] = []
        final_before = wm - cfg.grace_ms
        # The next watermark at which anything below can happen (see ``due``).
        due = _NEVER
        for call_id in list(self.calls):
            session = self.calls[call_id]
            derivation = session.derived(call_id, cfg)
            if not derivation.ended and wm - session.last_ts >= cfg.call_timeout_ms:
                old = derivation.facts
                expire = (session.last_ts + cfg.call_timeout_ms, "expire", "~expire:" + call_id, None, None, None, 0)
                _insert_sorted(session.events, expire)
                session.eids.add(expire[2])
                session.derivation = None
                derivation = session.derived(call_id, cfg)
                facts.extend(diff(old, derivation.facts))
            if derivation.ended and session.last_ts < final_before:
                tomb = self.done.get(call_id)
                eids = SEP.join(ev[2] for ev in session.events)
                co = derivation.open_completed.encode() if derivation.open_completed is not None else None
                if tomb is None:
                    chunk = session.last_ts - session.last_ts % TOMB_CHUNK_MS
                    tomb = self.done[call_id] = [session.last_ts, eids, derivation.survey_key, co, chunk]
                    self.chunks.setdefault(chunk, {})[call_id] = tomb
                else:  # a call re-opened after it was finalized
                    tomb[0] = max(tomb[0], session.last_ts)
                    tomb[1] += SEP + eids
                    tomb[2] = derivation.survey_key or tomb[2]
                    tomb[3] = co
                self.dirty_chunks.add(tomb[4])
                self.deleted_chunks.discard(tomb[4])
                del self.calls[call_id]
            else:
                last = session.last_ts
                due = min(due, last + cfg.grace_ms if derivation.ended else last + cfg.call_timeout_ms)
        forget_before = wm - cfg.dedup_ttl_ms
        # Whole chunks are forgotten once they end before wm - DEDUP_TTL (a tombstone refreshed by a late
        # survey goes with its chunk).
        for chunk in [c for c in self.chunks if c + TOMB_CHUNK_MS <= forget_before]:
            for call_id in self.chunks.pop(chunk):
                del self.done[call_id]
            self.dirty_chunks.discard(chunk)
            self.deleted_chunks.add(chunk)
        if self.chunks:
            due = min(due, min(self.chunks) + TOMB_CHUNK_MS + cfg.dedup_ttl_ms)
        for agent in list(self.agents):
            agent_session = self.agents[agent]
            if agent_session.pending and agent_session.pending[0][0] < final_before:
                while agent_session.pending and agent_session.pending[0][0] < final_before:
                    ts, _eid, new_state, queue = agent_session.pending.pop(0)
                    agent_session.state = _agent_step(agent_session.state, agent_session.queues, ts, new_state, queue, agent, None)
                agent_session.walked = None
            for eid in _older_keys(agent_session.seen, forget_before):
                del agent_session.seen[eid]
            if not agent_session.pending and not agent_session.queues and not agent_session.seen:
                del self.agents[agent]
                continue
            if agent_session.pending:
                due = min(due, agent_session.pending[0][0] + cfg.grace_ms)
            if agent_session.seen:
                due = min(due, next(iter(agent_session.seen.values())) + cfg.dedup_ttl_ms)
        self.due = due
        return facts

    # -- persistence ------------------------------------------------------------------------------------------
    def checkpoint_chunks(self) -> tuple[list[tuple[int, int, dict[str, list]]], list[tuple[int, int]]]:
        """The chunk versions a checkpoint writes *before* the bucket, and those it deletes *after* it.

        Copy-on-write: a changed chunk goes to the slot its persisted version does not use, the bucket's
        snapshot (taken after this call) names the new slot, and the old version is deleted only after the
        bucket. The changelog keeps the order of a partition's writes, so a checkpoint cut short by a crash
        restores either the old bucket with the old versions or the new bucket with the new ones; never a
        bucket with chunks newer than itself, whose tombstones would turn its replayed events into
        duplicates. Returns ``(writes, deletes)`` as ``(chunk, slot, tombstones)`` and ``(chunk, slot)``.
        """
        writes: list[tuple[int, int, dict[str, list]]] = []
        deletes: list[tuple[int, int]] = []
        for chunk in sorted(self.dirty_chunks):
            old = self.slots.get(chunk)
            new = 1 if old == 0 else 0
            writes.append((chunk, new, self.chunks[chunk]))
            if old is not None:
                deletes.append((chunk, old))
            self.slots[chunk] = new
        for chunk in sorted(self.deleted_chunks):
            old = self.slots.pop(chunk, None)
            # Both slots: a checkpoint cut short may have left a version in the other one.
            deletes.extend((chunk, slot) for slot in (0, 1))
            if old == LEGACY_SLOT:
                deletes.append((chunk, old))
        self.dirty_chunks = set()
        self.deleted_chunks = set()
        return writes, deletes

    def snapshot(self) -> dict:
        """Return the state as plain JSON-able data (the cached derivations are left out)."""
        return {
            "hw": self.hw,
            "wm": self.wm,
            "calls": {c: s.events for c, s in self.calls.items()},
            "chunks": {str(chunk): slot for chunk, slot in sorted(self.slots.items())},
            "agents": {a: [s.state, s.queues, s.pending, s.seen] for a, s in self.agents.items()},
        }

    @classmethod
    def restore(cls, data: dict, config: SessionConfig,
                load_chunk: Callable[[int, int], dict[str, list] | None] = lambda _c, _s: None) -> BucketState:
        """Rebuild a bucket from ``snapshot()`` output and its chunks (``load_chunk(chunk, slot)`` reads one)."""
        bucket = cls(config)
        bucket.hw = data["hw"]
        bucket.wm = data["wm"]
        bucket.calls = {c: CallSession([tuple(ev) for ev in evs]) for c, evs in data["calls"].items()}
        chunks = data["chunks"]
        if isinstance(chunks, list):  # written before slots: rewritten to a slot at the next checkpoint
            chunks = dict.fromkeys(chunks, LEGACY_SLOT)
            bucket.dirty_chunks = {int(chunk) for chunk in chunks}
        for chunk, slot in chunks.items():
            tombs = load_chunk(int(chunk), slot)
            if tombs is not None:
                bucket.chunks[int(chunk)] = tombs
                bucket.slots[int(chunk)] = slot
                bucket.done.update(tombs)
        bucket.dirty_chunks &= set(bucket.chunks)
        bucket.agents = {a: AgentSession(s[0], s[1], [tuple(p) for p in s[2]], s[3]) for a, s in data["agents"].items()}
        return bucket


def _holds(joined: str, eid: str) -> bool:
    """Whether ``eid`` is one of the SEP-joined ids (only tombstones need this, rarely)."""
    return eid == joined or (SEP + eid + SEP) in (SEP + joined + SEP)


def _older_keys(table: dict[str, int], before: int) -> list[str]:
    """Keys at the start of ``table`` (insertion order) whose time is before ``before``."""
    out = []
    for key, ts in table.items():
        if ts >= before:
            break
        out.append(key)
    return out


def _continues(last: Ev, ev: Ev) -> bool:
    """Whether the walk over a call's events can go on with ``ev`` after ``last``, its latest event.

    Yes when ``ev`` is later, or has the same time and sorts after it, unless it is an exit, transfer or
    refusal: those may close an attempt that a ``queue`` event at the same instant must follow (the
    look-ahead of ``_derive_inbound``), which a full derivation reorders.
    """
    if ev[0] != last[0]:
        return ev[0] > last[0]
    return ev[1] not in ("exit", "transfer", "refused") and sort_key(ev) > sort_key(last)


def _insert_sorted(events: list[Ev], ev: Ev) -> None:
    key = sort_key(ev)
    i = len(events)
    while i > 0 and sort_key(events[i - 1]) > key:
        i -= 1
    events.insert(i, ev)


def _insert_sorted_agent(pending: list[tuple], item: tuple) -> None:
    i = len(pending)
    while i > 0 and pending[i - 1][:2] > item[:2]:
        i -= 1
    pending.insert(i, item)
