"""Agent timelines: an agent's state in each queue it serves, from its own events and from its calls.

An agent's bucket (the message key of its ``agent_state`` events) holds, per agent, two kinds of input:

- *explicit* events (``agent_state``: joined or left a queue, paused with a reason, available, ...), and
- *work*: the agent's stretches of work on calls (``Work``: answered, ended, wrapped up), which the call's own
  bucket derives and sends here (``WorkUpdate``), because a call and an agent travel under different keys.

The state an agent shows in a queue at time t is a pure function of both (the *precedence rule*):

1. a queue the agent is not a member of shows nothing (offline there), except that an agent on a call from a
   queue it has not joined is on the call in that queue while the call lasts;
2. on a call (any work answered and not yet ended): ``on_call``, in every queue the agent serves;
3. after the last call ended, until its wrap-up (the call's ``wrapup`` event, else the end plus the queue's
   ``wrapup`` seconds): ``acw``, unless an explicit event for that queue came after the call's end;
4. otherwise the latest explicit state for the queue (``available``, ``paused`` with its reason, ``acw``, or
   ``on_call`` from a source that says so); ``available`` when there is none, and when the latest is an
   ``on_call`` no later than the last call's end (it was about that call, which is over). An explicit
   ``acw`` holds until the source says otherwise (a source that tells wrap-up tells its end).

Membership: the queues file's static members are always in their queues; an explicit event with a queue
joins it, ``offline`` with a queue leaves it, ``offline`` without one leaves every queue joined. A log-off
during a call takes effect when the call ends (no after-call work follows).

The agent's *overall* state (its own key, ``a:<agent>``, as the pseudo-queue ``OVERALL``) is ``on_call`` or
``acw`` if it is so in any queue, else ``available`` if available in any, else ``paused``. Its own figures of
its calls (answered, completed) come from its work (``work_facts``).

Events within the agent's horizon stay *pending* and are walked again when one arrives out of order; older
ones are folded into the *base*. Work reaches the agent one hop after its call's events, and behind whatever
its partition still has to read, so the horizon is at least two grace periods, by default an hour
(``SessionConfig.agent_history_ms``), behind the bucket's watermark. An input later than the last walk's last
point goes on from that walk instead of walking again (``walk(resume=...)``). The walk stops at the
watermark: a wrap-up time that lies beyond it is announced as an ``agent_next`` fact (the state the queue will
show from then), so that a reader at a later instant can tell the state without waiting for the next event of
this bucket.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable
from itertools import zip_longest
from typing import NamedTuple

from streams.events import AGENT_STATE_ALIASES
from streams.facts import Fact, agent_fact, agent_key, diff, queue_key


class AgentEvent(NamedTuple):
    """One pending ``agent_state`` event (persisted as this JSON array)."""

    ts_ms: int
    event_id: str
    state: str
    #: The queue it applies to; None: every queue the agent serves.
    queue: str | None
    #: Why the agent paused ("" for none).
    reason: str = ""

    def order(self) -> tuple[int, str]:
        """Events of one agent are walked in this order."""
        return (self.ts_ms, self.event_id)


class Work(NamedTuple):
    """An agent's stretch of work on one call (persisted as this JSON array)."""

    #: The queue the call came from ("" for an outbound call).
    queue: str
    #: When the agent answered (or the callee answered the agent's outbound call).
    start_ms: int
    #: When the agent's part ended (hang-up, transfer away); -1 while the agent is on the call.
    end_ms: int = -1
    #: The call's ``wrapup`` event after this stretch; -1 when none has come.
    wrapup_ms: int = -1
    #: Hold time within the stretch (known when it ends).
    hold_ms: int = 0
    #: 1 when the stretch ended with the agent transferring the caller away.
    transferred: int = 0


class WorkUpdate(NamedTuple):
    """Every stretch of work of one agent on one call, as the call's bucket now derives it (an upsert)."""

    agent: str
    call_id: str
    works: tuple[Work, ...]


class Shown(NamedTuple):
    """The state a queue shows for the agent, and since when."""

    status: str
    reason: str
    since_ms: int


class Explicit(NamedTuple):
    """The latest explicit state for a queue, and its time."""

    status: str
    reason: str
    ts_ms: int


class Rules(NamedTuple):
    """What the agent's walk needs from the configuration."""

    #: The queues the agent is a static member of.
    static: tuple[str, ...]
    #: A queue's wrap-up time (ms) after a call from it.
    wrapup_ms: Callable[[str], int]


class Base:
    """The walk's state: the folded base of a session, or the state as a walk proceeds."""

    __slots__ = ("horizon", "members", "leaving", "explicit", "shown")

    def __init__(
        self,
        horizon: int,
        members: dict[str, int],
        leaving: set[str],
        explicit: dict[str, Explicit],
        shown: dict[str, Shown],
    ) -> None:
        #: The base is the state at this time, after every event before it.
        self.horizon = horizon
        #: Queues joined by an explicit event -> since when.
        self.members = members
        #: Queues the agent logged off from during a call: left when no call is open.
        self.leaving = leaving
        self.explicit = explicit
        self.shown = shown

    def copy(self) -> Base:
        """An independent copy (a walk changes its state)."""
        return Base(
            self.horizon, dict(self.members), set(self.leaving), dict(self.explicit), dict(self.shown)
        )

    def to_wire(self) -> list[object]:
        """JSON: [horizon, members, leaving, explicit, shown]."""
        return [
            self.horizon,
            self.members,
            sorted(self.leaving),
            {q: list(e) for q, e in self.explicit.items()},
            {q: list(s) for q, s in self.shown.items()},
        ]

    @classmethod
    def from_wire(cls, data: list[object]) -> Base:
        """Inverse of ``to_wire``."""
        horizon, members, leaving, explicit, shown = data
        assert isinstance(horizon, int) and isinstance(members, dict) and isinstance(leaving, list)
        assert isinstance(explicit, dict) and isinstance(shown, dict)
        return cls(
            horizon,
            members,
            set(leaving),
            {q: Explicit(*e) for q, e in explicit.items()},
            {q: Shown(*s) for q, s in shown.items()},
        )


def acw_until(work: Work, rules: Rules) -> int:
    """When after-call work after an ended stretch ends: the call's wrap-up, else end + the queue's time."""
    if work.wrapup_ms >= work.end_ms:
        return work.wrapup_ms
    return work.end_ms + rules.wrapup_ms(work.queue)


#: What no call says (before the first stretch of work).
_IDLE: tuple[bool, tuple[str, ...], int, int] = (False, (), -1, -1)


class _Activity:
    """What the agent's calls say at time t."""

    __slots__ = ("works", "rules", "all_points", "droppable_from", "cache")

    def __init__(self, works: Iterable[Work], rules: Rules) -> None:
        # In order of start, then queue: what ``at`` picks among equal times never depends on an end (an update
        # that ends a stretch changes nothing before the end)
        self.works = sorted(works, key=lambda w: (w.start_ms, w.queue, w.end_ms))
        self.rules = rules
        out: set[int] = set()
        for w in self.works:
            out.add(w.start_ms)
            if w.end_ms >= 0:
                out.add(w.end_ms)
                out.add(acw_until(w, rules))
        #: Every time at which the activity changes, in order.
        self.all_points = sorted(out)
        #: The earliest ``before`` from which a fold drops the work of a call (``NEVER``: none).
        self.droppable_from = NEVER
        #: Index in ``all_points`` -> ``at`` there.
        self.cache: dict[int, tuple[bool, tuple[str, ...], int, int]] = {}

    def set_droppable(self, works: dict[str, tuple[Work, ...]]) -> _Activity:
        """Work out ``droppable_from`` for ``works`` (by call), the stretches this activity is made of."""
        last = _last_ended(self.works)
        self.droppable_from = min((_done_by(ws, last, self.rules) for ws in works.values()), default=NEVER)
        return self

    def at(self, t: int) -> tuple[bool, tuple[str, ...], int, int]:
        """(on a call, queues of the open calls, end of the last ended call or -1, its wrap-up end).

        It changes only at ``all_points``: the value at the last point at or before ``t`` (worked out once).
        """
        i = bisect_right(self.all_points, t) - 1
        if i < 0:
            return _IDLE
        cache = self.cache
        value = cache.get(i)
        if value is None:
            value = cache[i] = self._at(self.all_points[i])
        return value

    def _at(self, t: int) -> tuple[bool, tuple[str, ...], int, int]:
        on_call = False
        queues: list[str] = []
        last_end, until = -1, -1
        for w in self.works:
            if w.start_ms > t:
                break
            if w.end_ms < 0 or t < w.end_ms:
                on_call = True
                if w.queue:
                    queues.append(w.queue)
            elif (
                w.end_ms >= last_end
            ):  # the latest end; of equal ends, the latest start, queue (``_last_ended``)
                last_end, until = w.end_ms, acw_until(w, self.rules)
        return on_call, tuple(queues), last_end, until

    def points(self, lo: int) -> list[int]:
        """The times at or after ``lo`` at which the activity changes."""
        points = self.all_points
        return points[bisect_left(points, lo) :]


def _apply_event(base: Base, ev: AgentEvent, rules: Rules, activity: _Activity) -> None:
    """One explicit event changes the membership and the explicit states (not what is shown)."""
    state = AGENT_STATE_ALIASES.get(ev.state, ev.state)
    if ev.queue is not None:
        queues: Iterable[str] = (ev.queue,)
    else:
        queues = sorted({*rules.static, *base.members})  # in one order in every process
    if state == "offline":
        for q in queues:
            if q in rules.static:
                continue  # a static member stays in its queues (the queues file says so)
            if activity.at(ev.ts_ms)[0]:  # on a call: leaves when it ends
                if q in base.members:
                    base.leaving.add(q)
            else:
                base.members.pop(q, None)
                base.explicit.pop(q, None)
        return
    for q in queues:
        if q not in rules.static and q not in base.members:
            base.members[q] = ev.ts_ms
        base.leaving.discard(q)
        base.explicit[q] = Explicit(state, ev.reason if state == "paused" else "", ev.ts_ms)


def _shown_at(base: Base, t: int, activity: _Activity, rules: Rules) -> dict[str, tuple[str, str]]:
    """The state (status, reason) each queue shows at ``t`` (after ``base`` took every event up to ``t``)."""
    on_call, call_queues, last_end, until = activity.at(t)
    if base.leaving and not on_call:
        for q in base.leaving:
            base.members.pop(q, None)
            base.explicit.pop(q, None)
        base.leaving.clear()
    out: dict[str, tuple[str, str]] = {}
    in_acw = not on_call and last_end >= 0 and last_end <= t < until
    for q in (*rules.static, *base.members, *call_queues):
        if q in out:
            continue
        explicit = base.explicit.get(q)
        if on_call:
            out[q] = ("on_call", "")
        elif in_acw and (explicit is None or explicit.ts_ms <= last_end):
            out[q] = ("acw", "")
        # (an explicit on_call no later than the last call's end was about that call: it no longer holds)
        elif explicit is not None and not (explicit.status == "on_call" and explicit.ts_ms <= last_end):
            out[q] = (explicit.status, explicit.reason)
        else:
            out[q] = ("available", "")
    if on_call:
        out[OVERALL] = ("on_call", call_queues[-1] if call_queues else "")  # the call answered last
    elif out:
        out[OVERALL] = _overall(out)
    return out


#: The pseudo-queue of an agent's overall state (across its queues; its facts go to the agent's key).
OVERALL = "\x00"
#: Which state of its queues an agent's overall state is, first to last.
OVERALL_ORDER = ("on_call", "acw", "available", "paused")


def _overall(shown: dict[str, tuple[str, str]]) -> tuple[str, str]:
    """The agent's overall state: on a call or in wrap-up anywhere, else available anywhere, else paused.

    A paused agent's reason is that of its first queue (by name) it is paused in.
    """
    states = {status for status, _reason in shown.values()}
    for status in OVERALL_ORDER:
        if status in states:
            reason = (
                min((q, r) for q, (st, r) in shown.items() if st == status)[1] if status == "paused" else ""
            )
            return status, reason
    return "available", ""


class WalkResult(NamedTuple):
    """A walk's outcome: the base it reached, the facts, and the first change beyond the watermark."""

    base: Base
    closed: list[Fact]
    open: list[Fact]
    next: list[Fact]
    #: When the next change beyond the watermark falls (-1: none): the walk must be redone once it is reached.
    next_ms: int
    #: The last point the walk went through (``base`` is the state after it).
    last_t: int
    #: Every few points, the state after a point and how many intervals were closed by then: a later walk
    #: goes on from the last mark before what an input changes instead of walking it all again.
    marks: tuple[Mark, ...] = ()


class Mark(NamedTuple):
    """The state of a walk after point ``t``, with ``closed`` intervals closed by then."""

    t: int
    state: Base
    closed: int


#: A walk marks its state every this many points.
MARK_EVERY = 8


def walk(
    agent: str,
    base: Base,
    pending: list[AgentEvent],
    works: Iterable[Work],
    rules: Rules,
    until: int,
    *,
    before: bool = False,
    resume: WalkResult | None = None,
    resume_at: int = 0,
    activity: _Activity | None = None,
) -> WalkResult:
    """Walk from ``base`` over the pending events and the work, up to ``until`` (the watermark).

    With ``before``, stop short of ``until`` (a fold: the base becomes the state just before it). With
    ``resume``, go on from where that walk (which is used up) stopped, or from its last mark before
    ``resume_at``: valid when the inputs changed nothing before ``resume_at`` (``AgentSession`` checks).
    """
    if activity is None:
        activity = _Activity(works, rules)
    n = len(pending)
    if resume is None:
        state = base.copy()
        lo = state.horizon
        points = sorted({lo, *activity.points(lo), *(ev.ts_ms for ev in pending if ev.ts_ms >= lo)})
        closed: list[Fact] = []
        i = 0
        marks: list[Mark] = []
        last_t = lo - 1
    else:
        # The walk takes over the one it goes on from (its state and its list of closed intervals): that one
        # is not used again.
        closed = resume.closed
        if resume_at > resume.last_t:
            state, last_t, marks = resume.base, resume.last_t, list(resume.marks)
        else:
            k = bisect_left([m.t for m in resume.marks], resume_at) - 1
            assert k >= 0
            mark = resume.marks[k]
            state, last_t, marks = mark.state.copy(), mark.t, list(resume.marks[: k + 1])
            del closed[mark.closed :]
        lo = last_t + 1
        i = bisect_left([ev.ts_ms for ev in pending], lo)
        points = sorted({*activity.points(lo), *(pending[j].ts_ms for j in range(i, n))})
    next_ms = -1
    stop = until - 1 if before else until
    since_mark = 0
    for t in points:
        if t > stop:
            next_ms = t
            break
        last_t = t
        while i < n and pending[i].ts_ms <= t:
            ev = pending[i]
            _apply_event(state, ev, rules, activity)
            i += 1
        now = _shown_at(state, t, activity, rules)
        for q, shown in list(state.shown.items()):
            value = now.get(q)
            if value is None or value != (shown.status, shown.reason):
                if t > shown.since_ms:
                    closed.append(_interval(agent, q, shown, t))
                if value is None:
                    del state.shown[q]
        for q, (status, reason) in now.items():
            was = state.shown.get(q)
            if was is None or (was.status, was.reason) != (status, reason):
                state.shown[q] = Shown(status, reason, t)
        since_mark += 1
        if since_mark == MARK_EVERY and not before:
            marks.append(Mark(t, state.copy(), len(closed)))
            since_mark = 0
    if before:
        state.horizon = until
        return WalkResult(state, closed, [], [], -1, until - 1)
    open_facts = [_open(agent, q, s) for q, s in state.shown.items()]
    nexts: list[Fact] = []
    if next_ms >= 0:
        later = _shown_at(state.copy(), next_ms, activity, rules)
        for q, s in state.shown.items():
            value = later.get(q, ("offline", ""))
            if value != (s.status, s.reason):
                nexts.append(
                    agent_fact(
                        "agent_next",
                        _key(agent, q),
                        s.since_ms,
                        f"agent_next:{agent}:{q}",
                        agent,
                        value[0],
                        next_ms,
                        value[1],
                    )
                )
    return WalkResult(state, closed, open_facts, nexts, next_ms, last_t, tuple(marks))


def _key(agent: str, queue: str) -> str:
    """Where a state shown in ``queue`` goes: the queue's key, or the agent's own for its overall state."""
    return agent_key(agent) if queue == OVERALL else queue_key(queue)


def _interval(agent: str, queue: str, shown: Shown, until: int) -> Fact:
    return agent_fact(
        "agent_time",
        _key(agent, queue),
        until,
        f"agent_time:{agent}:{queue}:{shown.since_ms}",
        agent,
        shown.status,
        shown.since_ms,
        shown.reason,
    )


def _open(agent: str, queue: str, shown: Shown) -> Fact:
    return agent_fact(
        "agent",
        _key(agent, queue),
        shown.since_ms,
        f"agent:{agent}:{queue}",
        agent,
        shown.status,
        shown.since_ms,
        shown.reason,
    )


#: A walk limit beyond every time (the facts of a timeline with no change ahead).
NEVER = 2**62


class _Staged(NamedTuple):
    """What was emitted before changes were staged: the walk, the calls' own figures, the horizon."""

    prior: WalkResult | None
    work: list[Fact]
    horizon: int


class AgentSession:
    """One agent's timeline: a folded base, explicit events and work still within the horizon, seen ids.

    ``until`` says which facts were last emitted: the walk up to it. It is canonical (the instant before the
    next change, or ``NEVER``), so a bucket swept at every message and one swept only when due hold the same.
    """

    __slots__ = (
        "base",
        "pending",
        "works",
        "seen",
        "until",
        "derivation",
        "work_facts",
        "activity",
        "staged",
        "staged_from",
    )

    def __init__(
        self,
        base: Base | None = None,
        pending: list[AgentEvent] | None = None,
        works: dict[str, tuple[Work, ...]] | None = None,
        seen: dict[str, int] | None = None,
        until: int = -1,
    ) -> None:
        self.base = base if base is not None else Base(0, {}, set(), {}, {})
        self.pending: list[AgentEvent] = pending or []
        #: call id -> the agent's stretches of work on it.
        self.works: dict[str, tuple[Work, ...]] = works or {}
        #: Event id -> time, for de-duplication (kept for the dedup TTL).
        self.seen: dict[str, int] = seen or {}
        #: The facts last emitted are the walk up to this (-1: none emitted yet).
        self.until = until
        #: The last walk and the limit it went to (not persisted).
        self.derivation: tuple[int, WalkResult] | None = None
        #: ``work_facts`` of ``works``, and ``works`` as a walk reads them (not persisted).
        self.work_facts: list[Fact] | None = None
        self.activity: _Activity | None = None
        #: Changes applied and not yet walked (``stage``), and the earliest time they change.
        self.staged: _Staged | None = None
        self.staged_from = NEVER

    def _starts(self, ts: int) -> None:
        """An input at ``ts``: a timeline that shows nothing yet starts no later than it."""
        base = self.base
        if base.shown or base.members or base.explicit:
            return
        if ts < base.horizon or not (self.pending or self.works):
            base.horizon = ts
            self.derivation = None

    def _all_works(self) -> list[Work]:
        return [w for ws in self.works.values() for w in ws]

    def _activity(self, rules: Rules) -> _Activity:
        activity = self.activity
        if activity is None:
            activity = self.activity = _Activity(self._all_works(), rules).set_droppable(self.works)
        return activity

    def derived(self, agent: str, rules: Rules, until: int) -> WalkResult:
        """The walk up to ``until`` (cached: a walk holds up to its next change)."""
        cached = self.derivation
        if cached is not None and cached[0] <= until and (cached[1].next_ms < 0 or until < cached[1].next_ms):
            return cached[1]
        result = walk(agent, self.base, self.pending, (), rules, until, activity=self._activity(rules))
        self.derivation = (until, result)
        return result

    def facts(self, agent: str, rules: Rules, until: int) -> list[Fact]:
        """The agent's facts: closed intervals since the base, open states, announced changes, its calls."""
        result = self.derived(agent, rules, until)
        return result.closed + result.open + result.next + self._work_facts(agent)

    def _work_facts(self, agent: str) -> list[Fact]:
        """The agent's own figures of its calls (key ``a:<agent>``): answered, and completed once ended."""
        cached = self.work_facts
        if cached is None:
            cached = self.work_facts = work_facts(agent, self.works)
        return cached

    def _changed(
        self, agent: str, rules: Rules, wm: int, change: Callable[[], None], changed_from: int = -1
    ) -> list[Fact]:
        """Apply ``change``; the difference between the facts last emitted and those at the watermark ``wm``.

        ``changed_from``: the change alters nothing before this time (-1: unknown). When the last emitted walk
        went no further than it, the new walk goes on from there instead of walking everything again.
        """
        self.stage(agent, rules, change, changed_from)
        return self.settle(agent, rules, wm)

    def stage(self, agent: str, rules: Rules, change: Callable[[], None], changed_from: int = -1) -> None:
        """Apply ``change`` now and walk later (``settle``): several changes of a message, one walk."""
        staged = self.staged
        if staged is None:
            prior = self.derived(agent, rules, self.until) if self.until >= 0 else None
            self.staged = _Staged(
                prior, self._work_facts(agent) if prior is not None else [], self.base.horizon
            )
            self.staged_from = changed_from
        elif changed_from < self.staged_from:
            self.staged_from = changed_from
        change()  # (what was emitted is worked out first: a change may move the horizon of an empty timeline)

    def settle(self, agent: str, rules: Rules, wm: int) -> list[Fact]:
        """Walk after the staged changes: the difference between the facts last emitted and those at ``wm``."""
        staged, changed_from = self.staged, self.staged_from
        assert staged is not None
        self.staged = None
        prior = staged.prior
        old_closed = prior.closed if prior is not None else []
        old_rest = prior.open + prior.next if prior is not None else []
        activity = self._activity(rules)
        kept = 0  # closed intervals the new walk keeps from the last (the same objects: not compared)
        if (
            prior is not None
            and staged.horizon == self.base.horizon
            and (changed_from > prior.last_t or (prior.marks and changed_from > prior.marks[0].t))
        ):
            if changed_from > prior.last_t:
                kept = len(old_closed)
            else:
                k = bisect_left([m.t for m in prior.marks], changed_from) - 1
                kept = prior.marks[k].closed
            old_tail = old_closed[kept:]  # before the walk takes the list over
            result = walk(
                agent,
                self.base,
                self.pending,
                (),
                rules,
                wm,
                resume=prior,
                resume_at=changed_from,
                activity=activity,
            )
        else:
            old_tail = old_closed
            result = walk(agent, self.base, self.pending, (), rules, wm, activity=activity)
        self.derivation = (wm, result)
        self.until = result.next_ms - 1 if result.next_ms >= 0 else NEVER
        changes = diff(old_tail + old_rest, result.closed[kept:] + result.open + result.next)
        new_work = self._work_facts(agent)
        if new_work is not staged.work:
            changes.extend(diff(staged.work, new_work))
        return changes

    def add(self, agent: str, item: AgentEvent, rules: Rules, wm: int, *, later: bool = False) -> list[Fact]:
        """Insert one explicit event (the bucket's watermark is now ``wm``); return the facts it changes.

        With ``later``, only stage it (``settle`` walks).
        """

        def change() -> None:
            self._starts(item.ts_ms)
            _insert_sorted(self.pending, item)

        self.stage(agent, rules, change, item.ts_ms)
        return [] if later else self.settle(agent, rules, wm)

    def set_work(self, update: WorkUpdate, rules: Rules, wm: int, *, later: bool = False) -> list[Fact]:
        """Replace the agent's work on one call; return the facts it changes (with ``later``: only stage it)."""
        changed_from = _changed_from(self.works.get(update.call_id, ()), update.works, rules)

        def change() -> None:
            for w in update.works:
                self._starts(w.start_ms)
            if update.works:
                self.works[update.call_id] = update.works
            else:
                self.works.pop(update.call_id, None)
            self.work_facts = self.activity = None

        self.stage(update.agent, rules, change, changed_from)
        return [] if later else self.settle(update.agent, rules, wm)

    def folded_away(self, update: WorkUpdate, rules: Rules) -> bool:
        """Whether the update changes the work before the horizon, which the base has folded (too late)."""
        base = self.base
        if not (base.shown or base.members or base.explicit):
            return False  # nothing folded yet: the horizon moves back to it
        return _changed_from(self.works.get(update.call_id, ()), update.works, rules) < self.base.horizon

    def advance(self, agent: str, rules: Rules, wm: int) -> list[Fact]:
        """The bucket's watermark is ``wm``: what a change that fell due since the last emission changes."""
        if self.until < 0 or wm <= self.until:
            return []
        return self._changed(agent, rules, wm, lambda: None, NEVER)  # no input changed: the walk goes on

    def next_ms(self) -> int:
        """When the facts last emitted change without an event (-1: never)."""
        return self.until + 1 if 0 <= self.until < NEVER else -1

    def fold_from(self, rules: Rules) -> int:
        """The earliest ``before`` at which a fold changes anything (-1: none would)."""
        out = self.pending[0].ts_ms + 1 if self.pending else NEVER
        out = min(out, self._activity(rules).droppable_from)
        return out if out < NEVER else -1

    def fold(self, agent: str, rules: Rules, before: int) -> None:
        """Fold what lies before ``before`` into the base (it can no longer change); drop finished work.

        ``before`` is at most the limit of the facts last emitted (``advance`` first).
        """
        before = min(before, self.until)
        if before <= self.base.horizon:
            return
        cached = self.derivation
        activity = self._activity(rules)
        result = walk(agent, self.base, self.pending, (), rules, before, before=True, activity=activity)
        self.base = result.base
        self.pending = [ev for ev in self.pending if ev.ts_ms >= before]
        last = _last_ended(activity.works)
        for call_id, call_works in list(self.works.items()):
            if _done_by(call_works, last, rules) <= before:
                del self.works[call_id]
                self.work_facts = self.activity = None
        self.derivation = None
        if cached is not None:
            # The last walk holds on, but for the intervals now folded (they close before ``before``, and
            # come first) and the marks before ``before`` (the events they would walk again are folded).
            limit, r = cached
            k = bisect_left([f.ts_ms for f in r.closed], before)
            marks = tuple(m._replace(closed=m.closed - k) for m in r.marks if m.t >= before and m.closed >= k)
            self.derivation = (limit, r._replace(closed=r.closed[k:], marks=marks))

    def idle(self) -> bool:
        """Nothing left to keep: no queue, no pending event, no work, no remembered id."""
        return not (self.pending or self.works or self.seen or self.base.shown or self.base.members)

    def to_wire(self) -> dict[str, object]:
        """The JSON object a snapshot stores."""
        return {
            "base": self.base.to_wire(),
            "pending": [list(p) for p in self.pending],
            "works": {c: [list(w) for w in ws] for c, ws in self.works.items()},
            "seen": self.seen,
            "until": self.until,
        }

    @classmethod
    def from_wire(cls, data: dict[str, object] | list[object]) -> AgentSession:
        """Inverse of ``to_wire``; also reads the earlier array ``[state, queues, pending, seen]``."""
        if isinstance(data, list):
            state, queues, pending, seen = data
            assert isinstance(state, str) and isinstance(queues, dict) and isinstance(pending, list)
            assert isinstance(seen, dict)
            status = AGENT_STATE_ALIASES.get(state, state)
            horizon = min((int(p[0]) for p in pending), default=max(queues.values(), default=0))
            in_queues = queues.items() if status != "offline" else {}.items()
            base = Base(
                horizon,
                dict(in_queues),
                set(),
                {q: Explicit(status, "", since) for q, since in in_queues},
                {q: Shown(status, "", since) for q, since in in_queues},
            )
            # What the earlier version emitted: the walk over every pending event.
            until = max((int(p[0]) for p in pending), default=horizon)
            return cls(base, [AgentEvent(*p) for p in pending], {}, seen, until)
        base_wire, pending, works, seen, until = (
            data["base"],
            data["pending"],
            data["works"],
            data["seen"],
            data["until"],
        )
        assert isinstance(base_wire, list) and isinstance(pending, list) and isinstance(works, dict)
        assert isinstance(seen, dict) and isinstance(until, int)
        return cls(
            Base.from_wire(base_wire),
            [AgentEvent(*p) for p in pending],
            {c: tuple(Work(*w) for w in ws) for c, ws in works.items()},
            seen,
            until,
        )


def work_facts(agent: str, works: dict[str, tuple[Work, ...]]) -> list[Fact]:
    """An agent's own figures of its calls, keyed ``a:<agent>``.

    Per stretch of work: ``answered`` when it began; ``completed`` when it ended (talk, hold, transferred away
    or not). The agent's after-call work is its time in ``acw`` (its own ``agent_time`` facts).
    """
    key = agent_key(agent)
    out: list[Fact] = []
    for call_id, call_works in works.items():
        for w in call_works:
            fid = f"{call_id}:{w.start_ms}"
            out.append(Fact("answered", key, w.start_ms, "answered:" + fid, call_id))
            if w.end_ms >= 0:
                out.append(
                    Fact(
                        "completed",
                        key,
                        w.end_ms,
                        "completed:" + fid,
                        call_id,
                        talk_ms=w.end_ms - w.start_ms,
                        hold_ms=w.hold_ms,
                        transferred=w.transferred,
                    )
                )
    return out


def _changed_from(old: tuple[Work, ...], new: tuple[Work, ...], rules: Rules) -> int:
    """The earliest time at which replacing a call's stretches ``old`` by ``new`` can change the activity."""
    out = NEVER
    for a, b in zip_longest(old, new):
        if a == b:
            continue
        if a is None or b is None or a.queue != b.queue or a.start_ms != b.start_ms:
            out = min((out, *(w.start_ms for w in (a, b) if w is not None)))  # from the start on
            continue
        if a.end_ms != b.end_ms:
            out = min(
                (out, *(e for e in (a.end_ms, b.end_ms) if e >= 0))
            )  # on the call, or not, from the end
        elif acw_until(a, rules) != acw_until(b, rules):
            out = min(out, a.end_ms)  # the wrap-up begins at the end
    return out


def _done_by(call_works: tuple[Work, ...], last: Work | None, rules: Rules) -> int:
    """When a call's work stops mattering to the walk (``NEVER`` while open, or when it ended last)."""
    if any(w is last or w.end_ms < 0 for w in call_works):
        return NEVER
    return max(acw_until(w, rules) for w in call_works)  # (the end of wrap-up is never before the end)


def _last_ended(works: list[Work]) -> Work | None:
    """The stretch of work that ended last (its after-call work is the one that counts)."""
    ended = [w for w in works if w.end_ms >= 0]
    return max(ended, key=lambda w: (w.end_ms, w.start_ms, w.queue)) if ended else None


def _insert_sorted(pending: list[AgentEvent], item: AgentEvent) -> None:
    i = len(pending)
    while i > 0 and pending[i - 1].order() > item.order():
        i -= 1
    pending.insert(i, item)
