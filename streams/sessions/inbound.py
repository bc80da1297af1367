"""The inbound call: a state machine over a call's sorted events, written as a transition table.

A call is in one ``CallState`` at a time. ``TRANSITIONS[state][event type]`` is what an event does in that
state: an action (which appends facts and moves the call to its next state), or ``IGNORED`` for an event
the contract allows there but that changes nothing. An event type with no row in the call's state is
*unexpected*: the walk leaves the call as it is and records the event in ``Derivation.unexpected``, and the
shell counts it (``callpulse_events_unexpected_total{type,state}``), so a source sending what the model does
not foresee is seen, not dropped unseen.

========== ========================================================================================
state      the call
========== ========================================================================================
new        nothing seen yet but the events that need no state (agent_missed, ring_canceled, wrapup, survey)
ivr        rang in (``ring``), not yet in a queue
queued     waiting in queue ``q`` since ``enq``
connected  talking with an agent of queue ``ans_q`` (or with an agent reached without queueing)
held       connected, and the caller is on hold since ``hold_start``
left       left its queue or agent (exit, transfer, refusal) and may enter another queue
ended      hung up, abandoned or expired; only a wrap-up or a survey still count
========== ========================================================================================
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum

from streams.facts import Fact, agent_key, live_fact, queue_key
from streams.sessions.agents import Work
from streams.sessions.callers import CallerUpdate, Stint
from streams.sessions.derivation import Derivation, Unexpected
from streams.sessions.stored import StoredEvent


class CallState(StrEnum):
    """The states of an inbound call (see the module docstring)."""

    NEW = "new"
    IVR = "ivr"
    QUEUED = "queued"
    CONNECTED = "connected"
    HELD = "held"
    LEFT = "left"
    ENDED = "ended"


NEW, IVR, QUEUED, CONNECTED, HELD, LEFT, ENDED = CallState


class InboundWalk:
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
        #: The agent talking with the caller ("" when none, or the source does not say).
        self.agent = ""
        #: Agent -> its stretches of work on the call; the last one ended (agent, index) a wrap-up may end.
        self.works: dict[str, list[Work]] = {}
        self.last_work: tuple[str, int] | None = None
        self.unexpected: list[Unexpected] = []
        #: The caller's pseudonym (from the ring or a queue event, the latest that names one; "" when none)
        #: and priority in the current queue (from its queue event; 0 when none).
        self.caller = ""
        self.priority = 0
        #: The caller's number (the latest plausible one), its stints in queues, and when it first reached an
        #: agent: the call's part of its caller's history (``streams.sessions.callers``).
        self.number = ""
        self.stints: list[Stint] = []
        self.reached = -1
        #: What the last ``continue_with`` changed.
        self.changes: list[Fact] = []

    def closes_attempt(self, etype: str) -> bool:
        """Whether an event of this type would close the call's current queue attempt."""
        if etype == "exit":
            return self.state == QUEUED
        if etype == "transfer":
            return self.state in (QUEUED, CONNECTED, HELD)
        return etype == "refused"

    def step(self, ev: StoredEvent) -> None:
        """Apply one event: the action its row names, nothing for an ``IGNORED`` row, and for no row, note it."""
        action = TRANSITIONS[self.state].get(ev.type, _UNEXPECTED)
        if action is _UNEXPECTED:
            self.unexpected.append(Unexpected(ev.event_id, ev.type, self.state.value))
        elif action is not IGNORED:
            action(self, ev)

    # -- the parts of the actions ------------------------------------------------------------------------------
    def _start_stint(self, queue: str, ts: int, eid: str) -> None:
        self.state, self.q, self.enq, self.last_q = QUEUED, queue, ts, queue
        self.facts.append(Fact("entered", queue_key(queue), ts, "entered:" + eid, self.call_id))
        self.stints.append(Stint(queue, ts, "waiting"))

    def _leave_queue(self, kind: str, ts: int, eid: str, reason: str = "") -> None:
        self.stints[-1] = self.stints[-1]._replace(outcome=kind, left_ms=ts)
        self.facts.append(
            Fact(
                kind,
                queue_key(self.q),
                ts,
                f"{kind}:{eid}",
                self.call_id,
                wait_ms=ts - self.enq,
                reason=reason,
            )
        )

    def _start_work(self, agent: str | None, ts: int) -> None:
        if self.reached < 0:
            self.reached = ts
        self._end_work(ts)
        self.agent = agent or ""
        if agent:
            self.works.setdefault(agent, []).append(Work(self.ans_q, ts))

    def _end_work(self, ts: int, hold_ms: int = 0, transferred: int = 0) -> None:
        agent = self.agent
        if agent:
            works = self.works[agent]
            works[-1] = works[-1]._replace(end_ms=ts, hold_ms=hold_ms, transferred=transferred)
            self.last_work = (agent, len(works) - 1)
            self.agent = ""

    def _complete(self, ts: int, eid: str, transferred: int) -> None:
        if self.state == HELD:
            self.hold_ms += ts - self.hold_start
        self._end_work(ts, self.hold_ms, transferred)
        if self.ans_q:
            self.facts.append(
                Fact(
                    "completed",
                    queue_key(self.ans_q),
                    ts,
                    "completed:" + eid,
                    self.call_id,
                    talk_ms=ts - self.ans,
                    hold_ms=self.hold_ms,
                    holds=self.holds,
                    transferred=transferred,
                )
            )
            self.pending_co = len(self.facts) - 1
        self.hold_ms = self.holds = 0

    # -- the actions of the transition table -------------------------------------------------------------------
    def _caller_of(self, ev: StoredEvent) -> None:
        """A ring or queue event names the caller; a queue event gives the priority in its queue."""
        if ev.detail:
            self.caller = ev.detail
        if ev.number:
            self.number = ev.number
        if ev.type == "queue":
            self.priority = ev.extra if type(ev.extra) is int else 0

    def ring(self, ev: StoredEvent) -> None:
        """The call arrived (before any queue, for instance in an IVR)."""
        self.state = IVR
        self._caller_of(ev)

    def enter_queue(self, ev: StoredEvent) -> None:
        """A stint in a queue begins."""
        self._caller_of(ev)
        self._start_stint(ev.queue or "", ev.ts_ms, ev.event_id)

    def requeue(self, ev: StoredEvent) -> None:
        """A queue event while queued: the same queue again goes on with the stint; another is a transfer."""
        if ev.queue == self.q:
            return
        self._caller_of(ev)
        self._leave_queue("exited", ev.ts_ms, ev.event_id, "transfer")
        self._start_stint(ev.queue or "", ev.ts_ms, ev.event_id)

    def queue_after_talk(self, ev: StoredEvent) -> None:
        """The agent sent the caller to a queue: the conversation completes as transferred."""
        self._caller_of(ev)
        self._complete(ev.ts_ms, ev.event_id, 1)
        self._start_stint(ev.queue or "", ev.ts_ms, ev.event_id)

    def agent_missed(self, ev: StoredEvent) -> None:
        """An agent's phone rang until the ring timeout (in its queue, or the call's last one)."""
        self._ring_ended("agent_missed", ev)

    def ring_canceled(self, ev: StoredEvent) -> None:
        """An agent's phone rang and the caller hung up first: counted apart, not held against the agent."""
        self._ring_ended("ring_abandoned", ev)

    def _ring_ended(self, kind: str, ev: StoredEvent) -> None:
        mq = ev.queue or self.q or self.last_q
        if mq:
            self.facts.append(Fact(kind, queue_key(mq), ev.ts_ms, f"{kind}:{ev.event_id}", self.call_id))
        if kind == "agent_missed" and ev.detail:  # the agent's own count of offers not taken
            self.facts.append(
                Fact(kind, agent_key(ev.detail), ev.ts_ms, f"{kind}:a:{ev.event_id}", self.call_id)
            )

    def answer_from_queue(self, ev: StoredEvent) -> None:
        """An agent answered the waiting caller: the stint ends as answered."""
        self._leave_queue("answered", ev.ts_ms, ev.event_id)
        self.state, self.ans_q, self.ans = CONNECTED, self.q, ev.ts_ms
        self._start_work(ev.detail, ev.ts_ms)

    def answer_direct(self, ev: StoredEvent) -> None:
        """Answered without waiting in a queue (direct, or the next agent after a transfer): handled, not offered."""
        self.state, self.ans = CONNECTED, ev.ts_ms
        self.ans_q = ev.queue or self.ans_q
        self._start_work(ev.detail, ev.ts_ms)

    def hold(self, ev: StoredEvent) -> None:
        """The agent put the caller on hold."""
        self.state, self.hold_start = HELD, ev.ts_ms
        self.holds += 1

    def unhold(self, ev: StoredEvent) -> None:
        """The hold ended; its time adds to the call's hold time."""
        self.hold_ms += ev.ts_ms - self.hold_start
        self.state = CONNECTED

    def transfer_talking(self, ev: StoredEvent) -> None:
        """The agent transferred the caller away: the conversation completes as transferred."""
        self._complete(ev.ts_ms, ev.event_id, 1)
        self.state = LEFT

    def transfer_queued(self, ev: StoredEvent) -> None:
        """The waiting call was transferred away: a flow-out with reason ``transfer``."""
        self._leave_queue("exited", ev.ts_ms, ev.event_id, "transfer")
        self.state = LEFT

    def exit_queue(self, ev: StoredEvent) -> None:
        """The call left the queue without an agent (timeout, key, empty, ...): a flow-out."""
        self._leave_queue("exited", ev.ts_ms, ev.event_id, ev.detail or "")
        self.state = LEFT

    def refuse(self, ev: StoredEvent) -> None:
        """The queue would not take the call (full, join-empty, closed): refused, not offered."""
        self.facts.append(
            Fact(
                "refused",
                queue_key(ev.queue or ""),
                ev.ts_ms,
                "refused:" + ev.event_id,
                self.call_id,
                reason=ev.detail or "",
            )
        )
        self.last_q = ev.queue or ""
        self.state = LEFT

    def abandon(self, ev: StoredEvent) -> None:
        """The caller hung up while waiting (an ``abandon``, or a ``hangup`` of a queued call)."""
        self._leave_queue("abandoned", ev.ts_ms, ev.event_id)
        self.state = ENDED

    def hangup_talking(self, ev: StoredEvent) -> None:
        """The call ended while connected (or held): the conversation completes."""
        self._complete(ev.ts_ms, ev.event_id, 0)
        self.state = ENDED

    def hangup(self, ev: StoredEvent) -> None:
        """The call ended outside any queue or conversation."""
        self.state = ENDED

    def wrapup(self, ev: StoredEvent) -> None:
        """After-call work ended: it amends the last completion, if no wrap-up has yet."""
        if self.pending_co >= 0:
            co = self.facts[self.pending_co]
            self.facts[self.pending_co] = co.with_wrapup(ev.ts_ms)
            self.pending_co = -1
        last = self.last_work
        if last is not None:
            works = self.works[last[0]]
            if works[last[1]].wrapup_ms < 0:
                works[last[1]] = works[last[1]]._replace(wrapup_ms=ev.ts_ms)
            self.last_work = None

    def survey(self, ev: StoredEvent) -> None:
        """A survey response, for the queue that answered the call (or the last one it was in)."""
        sq = self.ans_q or self.q or self.last_q or ev.queue
        if sq:
            self.facts.append(
                Fact(
                    "survey",
                    queue_key(sq),
                    ev.ts_ms,
                    "survey:" + ev.event_id,
                    self.call_id,
                    scale=ev.detail or "",
                    score=int(ev.extra or 0),
                )
            )

    def expire(self, ev: StoredEvent) -> None:
        """No event for CALLPULSE_CALL_TIMEOUT: the call ends.

        A call lost while waiting or talking is counted as expired; one that already left its queue (transferred
        away, exited) simply ends without its hangup.
        """
        state = self.state
        xq = self.q if state == QUEUED else self.ans_q if state in (CONNECTED, HELD) else ""
        if xq:
            self.facts.append(
                Fact("expired", queue_key(xq), ev.ts_ms, "expired:" + ev.event_id, self.call_id)
            )
        held = self.hold_ms + (ev.ts_ms - self.hold_start if state == HELD else 0)
        self._end_work(ev.ts_ms, held)
        if state == QUEUED:
            self.stints[-1] = self.stints[-1]._replace(outcome="expired", left_ms=ev.ts_ms)
        self.state = ENDED

    # -- incremental derivation ----------------------------------------------------------------------------
    def continue_with(self, ev: StoredEvent, before: Derivation) -> Derivation:
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
        if (
            old_live is not None
            and old_live != new_live
            and (new_live is None or new_live.key != old_live.key)
        ):
            changes.append(old_live.retraction())  # not when the new live value replaces it (an upsert)
        if co_new is not None and co_new != co_old:
            changes.append(co_new)
        changes.extend(self.facts[n:])
        if new_live is not None and new_live != old_live:
            changes.append(new_live)
        self.changes = changes
        return after

    def result(self) -> Derivation:
        """The derivation so far; the walk's own lists are copied, so stepping on leaves it intact."""
        facts, call_id, state, caller = list(self.facts), self.call_id, self.state, self.caller
        if state == QUEUED:
            facts.append(
                live_fact(queue_key(self.q), self.enq, call_id, "waiting", self.enq, caller, self.priority)
            )
        elif state == CONNECTED and self.ans_q:
            facts.append(live_fact(queue_key(self.ans_q), self.ans, call_id, "talking", self.ans, caller))
        elif state == HELD and self.ans_q:  # (attributed to the answer: the call has been talking since)
            facts.append(live_fact(queue_key(self.ans_q), self.ans, call_id, "held", self.hold_start, caller))
        sq = self.ans_q or self.q or self.last_q
        open_co = facts[self.pending_co] if self.pending_co >= 0 else None
        return Derivation(
            facts,
            state == ENDED,
            queue_key(sq) if sq else "",
            open_co,
            self,
            tuple(self.unexpected) if self.unexpected else (),
            {agent: tuple(ws) for agent, ws in self.works.items()} if self.works else None,
            CallerUpdate(caller, call_id, self.number, tuple(self.stints), self.reached)
            if self.number and caller
            else None,
        )


Action = Callable[[InboundWalk, StoredEvent], None]


def _ignored(walk: InboundWalk, ev: StoredEvent) -> None:
    """The row of an event that is allowed in a state and changes nothing there."""


def _unexpected(walk: InboundWalk, ev: StoredEvent) -> None:
    """Marks a missing row (never called)."""


IGNORED: Action = _ignored
_UNEXPECTED: Action = _unexpected
_W = InboundWalk
_BEFORE_QUEUE = (NEW, IVR, LEFT)
_TALKING = (CONNECTED, HELD)
_LIVE = (NEW, IVR, QUEUED, CONNECTED, HELD, LEFT)

#: (event type, the states it applies in, what it does there). Read a row as "a ``queue`` event while
#: ``connected`` or ``held`` completes the conversation as transferred and starts a stint".
ROWS: tuple[tuple[str, tuple[CallState, ...], Action], ...] = (
    ("ring", (NEW,), _W.ring),
    ("queue", _BEFORE_QUEUE, _W.enter_queue),
    ("queue", (QUEUED,), _W.requeue),
    ("queue", _TALKING, _W.queue_after_talk),
    ("agent_missed", _LIVE, _W.agent_missed),
    ("ring_canceled", _LIVE, _W.ring_canceled),
    ("answer", (QUEUED,), _W.answer_from_queue),
    ("answer", _BEFORE_QUEUE, _W.answer_direct),
    ("hold", (CONNECTED,), _W.hold),
    ("unhold", (HELD,), _W.unhold),
    ("transfer", _TALKING, _W.transfer_talking),
    ("transfer", (QUEUED,), _W.transfer_queued),
    ("exit", (QUEUED,), _W.exit_queue),
    ("refused", _BEFORE_QUEUE, _W.refuse),
    ("abandon", (QUEUED,), _W.abandon),
    ("hangup", (QUEUED,), _W.abandon),
    ("hangup", _TALKING, _W.hangup_talking),
    ("hangup", _BEFORE_QUEUE, _W.hangup),
    ("wrapup", (*_LIVE, ENDED), _W.wrapup),
    ("survey", (*_LIVE, ENDED), _W.survey),
    ("expire", _LIVE, _W.expire),
    # A call the sweep expired, whose hangup then arrived within grace but before the expiry time.
    ("expire", (ENDED,), IGNORED),
    # The channel's hangup after the caller abandoned (a source that reports both, as the simulator does).
    ("hangup", (ENDED,), IGNORED),
)


def _table(rows: tuple[tuple[str, tuple[CallState, ...], Action], ...]) -> dict[CallState, dict[str, Action]]:
    table: dict[CallState, dict[str, Action]] = {state: {} for state in CallState}
    for etype, states, action in rows:
        for state in states:
            if etype in table[state]:
                msg = f"two rows for {etype} in state {state}"
                raise ValueError(msg)
            table[state][etype] = action
    return table


#: state -> event type -> action (built from ``ROWS``; a missing pair is an unexpected event).
TRANSITIONS = _table(ROWS)


def derive_inbound(call_id: str, events: list[StoredEvent]) -> Derivation:
    """Walk an inbound call's sorted events through the transition table."""
    walk = InboundWalk(call_id)
    done_idx: set[int] = set()
    n = len(events)
    for i, ev in enumerate(events):
        if i in done_idx:
            continue
        if ev.type == "queue" and walk.state != ENDED:
            # Equal timestamps: the exit, transfer or refusal that closes the call's current queue attempt
            # comes before the next queue event. DESIGN's rank puts queue first, which is right for one
            # stint, but a call leaving q1 and entering q2 in the same second would have its exit applied
            # to q2.
            j = i + 1
            while j < n and events[j].ts_ms == ev.ts_ms:
                other = events[j]
                if j not in done_idx and other.queue != ev.queue and walk.closes_attempt(other.type):
                    done_idx.add(j)
                    walk.step(other)
                    break
                j += 1
        walk.step(ev)
    return walk.result()


def continues(last: StoredEvent, ev: StoredEvent) -> bool:
    """Whether the walk over a call's events can go on with ``ev`` after ``last``, its latest event.

    Yes when ``ev`` is later, or has the same time and sorts after it, unless it is an exit, transfer or
    refusal: those may close an attempt that a ``queue`` event at the same instant must follow (the
    look-ahead of ``derive_inbound``), which a full derivation reorders.
    """
    if ev.ts_ms != last.ts_ms:
        return ev.ts_ms > last.ts_ms
    return ev.type not in ("exit", "transfer", "refused") and ev.sort_key() > last.sort_key()
