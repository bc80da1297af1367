"""A bucket: all sessionizer state of one message key (its calls, tombstones and agents), and its rules.

Rule 2 (lateness and duplicates) and rule 3 (housekeeping on event time) of ``streams.sessions`` live here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from streams.events import CallEvent
from streams.facts import Fact, diff
from streams.sessions.agents import AgentEvent, AgentSession, Rules, Work, WorkUpdate
from streams.sessions.call import CallSession
from streams.sessions.callers import Callback, CallerRules, CallerSession, CallerUpdate
from streams.sessions.derivation import Unexpected
from streams.sessions.inbound import continues
from streams.sessions.stored import StoredEvent, insert_sorted
from streams.sessions.tombstones import SEP, TOMB_CHUNK_MS, Tombstone, Tombstones

_new = tuple.__new__
#: A watermark no stream reaches (no housekeeping due).
_NEVER = 2**62


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """Sessionizer settings (all milliseconds)."""

    grace_ms: int = 120_000
    call_timeout_ms: int = 4 * 3600_000
    dedup_ttl_ms: int = 24 * 3600_000
    max_event_age_ms: int = 86_400_000
    contact_min_talk_ms: int = 30_000
    #: How far behind the watermark an agent's timeline stays open to its calls' work (at least 2 x grace).
    agent_history_ms: int = 3_600_000
    #: Queue -> agents' wrap-up time after a call from it (queues not named: ``default_wrapup_ms``).
    wrapup_ms: dict[str, int] = field(default_factory=dict, compare=False)
    default_wrapup_ms: int = 0
    #: Agent -> the queues it is a static member of (the queues file's ``members``).
    static_members: dict[str, tuple[str, ...]] = field(default_factory=dict, compare=False)
    #: Repeat callers, the callback list, abandon recovery (``streams.sessions.callers``).
    caller_rules: CallerRules = field(default_factory=CallerRules, compare=False)
    #: Derived: an event more than this behind the watermark is rejected (late or too old).
    reject_within_ms: int = field(init=False, repr=False, compare=False)
    #: Derived: the soonest housekeeping an applied event can need (grace, call timeout, dedup TTL).
    housekeeping_ms: int = field(init=False, repr=False, compare=False)
    #: Derived: how far behind its clock an agent's timeline folds (``agent_history_ms``, at least 2 x grace).
    agent_fold_lag_ms: int = field(init=False, repr=False, compare=False)
    #: Derived: queue -> wrap-up time, and the agents' rules built so far.
    _wrapup: Callable[[str], int] = field(init=False, repr=False, compare=False)
    _rules: dict[str, Rules] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in (
            "grace_ms",
            "call_timeout_ms",
            "dedup_ttl_ms",
            "max_event_age_ms",
            "contact_min_talk_ms",
            "default_wrapup_ms",
            "agent_history_ms",
        ):
            if getattr(self, name) < 0:
                msg = f"{name} must be >= 0"
                raise ValueError(msg)
        object.__setattr__(self, "reject_within_ms", min(self.grace_ms, self.max_event_age_ms))
        object.__setattr__(
            self, "housekeeping_ms", min(self.grace_ms, self.call_timeout_ms, self.dedup_ttl_ms)
        )
        object.__setattr__(self, "agent_fold_lag_ms", max(2 * self.grace_ms, self.agent_history_ms))
        wrapup, default = self.wrapup_ms, self.default_wrapup_ms
        object.__setattr__(self, "_wrapup", lambda queue: wrapup.get(queue, default))
        object.__setattr__(self, "_rules", {})

    def agent_rules(self, agent: str) -> Rules:
        """What an agent's walk needs from the configuration: its static queues, the wrap-up times."""
        rules = self._rules.get(agent)
        if rules is None:
            rules = self._rules[agent] = Rules(self.static_members.get(agent, ()), self._wrapup)
        return rules


class Applied(NamedTuple):
    """The outcome of one event: ``status`` is ``ok``, ``duplicate``, ``late`` or ``too_old``."""

    status: str
    facts: list[Fact]
    error: str = ""
    #: The call state in which no transition admitted the event ("" when one did).
    unexpected: str = ""


class BucketState:
    """All sessionizer state of one message key, and the operations on it."""

    __slots__ = (
        "config",
        "hw",
        "wm",
        "agent_wm",
        "calls",
        "tombstones",
        "agents",
        "due",
        "agent_due",
        "outbox",
        "late_work",
        "defer_agents",
        "staged",
        "callers",
        "caller_wm",
        "caller_due",
        "caller_outbox",
        "callbacks_out",
    )

    def __init__(self, config: SessionConfig) -> None:
        self.config = config
        #: Offset of the last source message applied (-1: none); replays at or below it are skipped.
        self.hw = -1
        #: Watermark: the largest event time seen (ms), ``None`` before the first event.
        self.wm: int | None = None
        #: The latest time of the agents' work received (from the buckets of their calls, -1: none). It does
        #: not move ``wm``: work from a partition running ahead must not make this bucket's own events late.
        #: The agents' timelines go up to the later of the two (``agent_clock``).
        self.agent_wm = -1
        #: Every call that is open or ended less than the grace period ago.
        self.calls: dict[str, CallSession] = {}
        #: The finalized calls, kept for the dedup TTL.
        self.tombstones = Tombstones()
        self.agents: dict[str, AgentSession] = {}
        #: No housekeeping is due before the watermark reaches this (a lower bound; not persisted, so a
        #: restored bucket sweeps in full at its first message); ``agent_due`` likewise for the agents'
        #: timelines, on ``agent_clock``.
        self.due = 0
        self.agent_due = 0
        #: What this bucket's calls changed in their agents' work, for the agents' buckets (drained by the
        #: shell after each message; not persisted: a replay derives it again).
        self.outbox: list[WorkUpdate] = []
        #: Work updates that changed what an agent's timeline had already folded (counted by the shell).
        self.late_work = 0
        #: With ``defer_agents`` (the shell's way), an agent's inputs of one message are walked once, at the
        #: next ``sweep``: ``apply`` returns no facts for them; ``staged`` are the agents waiting for it.
        self.defer_agents = False
        self.staged: dict[str, None] = {}
        #: Callers (by pseudonym) whose calls' updates this bucket holds, the latest time of those updates (-1:
        #: none; like ``agent_wm``, it does not move ``wm``), and when their housekeeping is next due.
        self.callers: dict[str, CallerSession] = {}
        self.caller_wm = -1
        self.caller_due = 0
        #: What this bucket's calls changed in their callers' history, for the callers' buckets, and the callback
        #: entries its callers opened, changed (True) or closed (False), for calls.callbacks (drained by the
        #: shell after each message; not persisted: a replay derives them again).
        self.caller_outbox: list[CallerUpdate] = []
        self.callbacks_out: list[tuple[Callback, bool]] = []

    # -- events -------------------------------------------------------------------------------------------
    def apply(self, event: CallEvent) -> Applied:
        """Apply one validated event; return its status and the facts it changes."""
        if event.type == "agent_state":
            return self._apply_agent(event)
        call_id = event.call_id
        assert call_id is not None
        session = self.calls.get(call_id)
        tomb = self.tombstones.by_call.get(call_id)
        if (session is not None and event.event_id in session.eids) or (
            tomb is not None and tomb.holds(event.event_id)
        ):
            return Applied("duplicate", [])
        late = self._admit(event.ts_ms)
        if late is not None:
            return late
        if session is None and tomb is not None and event.type in ("wrapup", "survey"):
            return Applied("ok", self._apply_to_tombstone(tomb, event))
        ev = StoredEvent.of(event)
        min_talk = self.config.contact_min_talk_ms
        if session is None:
            session = self.calls[call_id] = CallSession([ev])
            derivation = session.derived(call_id, min_talk)
            if derivation.works is not None:
                self._work_changed(call_id, None, derivation.works)
            if derivation.caller is not None:
                self._caller_changed(None, derivation.caller)
            u = _unexpected_in(derivation.unexpected, ev.event_id) if derivation.unexpected else ""
            return _new(Applied, ("ok", derivation.facts, "", u))
        before = session.derived(call_id, min_talk)
        session.eids.add(ev.event_id)
        walk = before.walk
        if walk is not None and not ev.outbound and ev.type != "dial" and continues(session.events[-1], ev):
            # After every event of this inbound call: continue its walk (an out-of-order arrival inserts
            # and derives the call again).
            session.events.append(ev)
            derivation = session.derivation = walk.continue_with(ev, before)
            if derivation.works is not None:
                self._work_changed(call_id, before.works, derivation.works)
            if derivation.caller != before.caller:
                self._caller_changed(before.caller, derivation.caller)
            u = _unexpected_in(derivation.unexpected, ev.event_id) if derivation.unexpected else ""
            return _new(Applied, ("ok", walk.changes, "", u))
        insert_sorted(session.events, ev)
        session.derivation = None
        derivation = session.derived(call_id, min_talk)
        if derivation.works is not None or before.works is not None:
            self._work_changed(call_id, before.works, derivation.works)
        if derivation.caller != before.caller:
            self._caller_changed(before.caller, derivation.caller)
        u = _unexpected_in(derivation.unexpected, ev.event_id) if derivation.unexpected else ""
        return _new(Applied, ("ok", diff(before.facts, derivation.facts), "", u))

    def _work_changed(
        self, call_id: str, old: dict[str, tuple[Work, ...]] | None, new: dict[str, tuple[Work, ...]] | None
    ) -> None:
        """Queue a ``WorkUpdate`` for every agent whose work on the call the derivation changed."""
        if old == new:
            return
        old, new = old or {}, new or {}
        for agent in sorted(old.keys() | new.keys()):
            works = new.get(agent, ())
            if old.get(agent, ()) != works:
                self.outbox.append(WorkUpdate(agent, call_id, works))

    def _caller_changed(self, old: CallerUpdate | None, new: CallerUpdate | None) -> None:
        """Queue the call's new part of its caller's history (an empty one when it has none any more)."""
        if new is not None and (new.stints or new.reached_ms >= 0):
            self.caller_outbox.append(new)
        elif old is not None and (old.stints or old.reached_ms >= 0):
            self.caller_outbox.append(old._replace(stints=(), reached_ms=-1))

    def _admit(self, ts: int) -> Applied | None:
        """Rule 2 for an event that is no duplicate: its rejection when late, else None, the watermark moved.

        An applied event at ``ts`` cannot need housekeeping before ts + grace (finalizing, folding), ts + call
        timeout (expiring) or ts + DEDUP_TTL (forgetting its id): the next housekeeping comes forward to that.
        """
        wm = self.wm
        cfg = self.config
        if wm is not None and ts < wm - cfg.reject_within_ms:
            return self._rejection(ts, wm)
        if wm is None or ts > wm:
            self.wm = ts
        due = ts + cfg.housekeeping_ms
        if due < self.due:
            self.due = due
        return None

    def _rejection(self, ts: int, wm: int) -> Applied:
        """Why an event at ``ts`` behind the watermark by more than ``reject_within_ms`` is rejected."""
        if ts < wm - self.config.max_event_age_ms:
            return Applied(
                "too_old",
                [],
                f"ts is {(wm - ts) / 1000:.0f} s behind the stream time "
                f"(max_event_age_s={self.config.max_event_age_ms // 1000})",
            )
        return Applied(  # then ts < wm - grace
            "late",
            [],
            f"ts is {(wm - ts) / 1000:.0f} s behind the stream time (grace_s={self.config.grace_ms // 1000})",
        )

    def _apply_to_tombstone(self, tomb: Tombstone, event: CallEvent) -> list[Fact]:
        tomb.add_event(event.event_id, event.ts_ms)
        self.tombstones.changed(tomb)
        if event.type == "survey":
            if not tomb.survey_key:
                return []
            return [
                Fact(
                    "survey",
                    tomb.survey_key,
                    event.ts_ms,
                    "survey:" + event.event_id,
                    event.call_id or "",
                    scale=event.scale or "",
                    score=event.score or 0,
                )
            ]
        co = tomb.open_completed
        if co is None:
            return []
        tomb.open_completed = None
        amended = co.with_wrapup(event.ts_ms)
        return [co.retraction(), amended]

    def _apply_agent(self, event: CallEvent) -> Applied:
        agent = event.agent or ""
        session = self.agents.get(agent)
        if session is not None and event.event_id in session.seen:
            return Applied("duplicate", [])
        late = self._admit(event.ts_ms)
        if late is not None:
            return late
        if session is None:
            session = self.agents[agent] = AgentSession()
        session.seen[event.event_id] = event.ts_ms
        item = _new(
            AgentEvent, (event.ts_ms, event.event_id, event.state or "", event.queue, event.reason or "")
        )
        rules = self.config.agent_rules(agent)
        facts = session.add(agent, item, rules, self.agent_clock(), later=self.defer_agents)
        self._walked_or_staged(agent, session, event.ts_ms)
        return _new(Applied, ("ok", facts, "", ""))

    def agent_clock(self) -> int:
        """How far the agents' timelines go: the watermark, or the latest work received if that is later."""
        wm = self.wm
        return self.agent_wm if wm is None or self.agent_wm > wm else wm

    def apply_work(self, update: WorkUpdate) -> list[Fact]:
        """Apply an agent's work on one call, as the call's bucket derived it (an upsert: replays converge).

        It is not judged late: the call's bucket already admitted its events. Its times move ``agent_wm``, not the
        watermark (they may lie ahead of this bucket's own events).
        """
        ts = max((max(w.start_ms, w.end_ms, w.wrapup_ms) for w in update.works), default=-1)
        if ts > self.agent_wm:
            self.agent_wm = ts
        session = self.agents.get(update.agent)
        if session is None:
            if not update.works:
                return []
            session = self.agents[update.agent] = AgentSession()
        clock = self.agent_clock()
        if clock < 0:
            return []
        rules = self.config.agent_rules(update.agent)
        if session.folded_away(update, rules):
            self.late_work += 1
        facts = session.set_work(update, rules, clock, later=self.defer_agents)
        self._walked_or_staged(update.agent, session, ts)
        return facts

    def caller_clock(self) -> int:
        """How far the callers' histories go: the watermark, or the latest caller update if that is later."""
        wm = self.wm
        return self.caller_wm if wm is None or self.caller_wm > wm else wm

    def apply_caller(self, update: CallerUpdate) -> list[Fact]:
        """Apply what one call did for its caller, as the call's bucket derived it (an upsert: replays converge)."""
        ts = update.last_ms()
        if ts > self.caller_wm:
            self.caller_wm = ts
        session = self.callers.get(update.caller)
        if session is None:
            if not update.stints and update.reached_ms < 0:
                return []
            session = self.callers[update.caller] = CallerSession()
        if update.stints or update.reached_ms >= 0:
            session.calls[update.call_id] = update
        else:
            session.calls.pop(update.call_id, None)
        facts = self._derive_caller(update.caller, session, self.caller_clock())
        self.caller_due = min(self.caller_due, ts + self.config.caller_rules.keep_ms)
        return facts

    def _derive_caller(self, caller: str, session: CallerSession, clock: int) -> list[Fact]:
        facts, opened, closed = session.update(caller, self.config.caller_rules, clock)
        self.callbacks_out.extend((c, True) for c in opened)
        self.callbacks_out.extend((c, False) for c in closed)
        if session.next_ms >= 0:
            self.caller_due = min(self.caller_due, session.next_ms)
        return facts

    def pending_callbacks(self, now_ms: int) -> list[Callback]:
        """The callback entries of this bucket's callers still open at ``now_ms`` (within their TTL)."""
        ttl = self.config.caller_rules.callback_ttl_ms
        return [c for s in self.callers.values() for c in s.callbacks if c.last_ms + ttl > now_ms]

    def _walked_or_staged(self, agent: str, session: AgentSession, ts: int) -> None:
        """After an agent's input at ``ts``: it waits for ``settle_agents``, or its housekeeping comes due."""
        if self.defer_agents:
            self.staged[agent] = None
        else:
            self._agent_due(session, ts + self.config.housekeeping_ms)

    def settle_agents(self) -> list[Fact]:
        """Walk the agents whose inputs were staged (``defer_agents``); the facts they change."""
        facts: list[Fact] = []
        if self.staged:
            clock = self.agent_clock()
            for agent in self.staged:
                session = self.agents[agent]
                facts.extend(session.settle(agent, self.config.agent_rules(agent), clock))
                self._agent_due(session, clock + self.config.housekeeping_ms)
            self.staged.clear()
        return facts

    def _agent_due(self, session: AgentSession, bound: int) -> None:
        """The agents' housekeeping is due no later than ``bound``, nor than the session's next change."""
        n = session.next_ms()
        due = min(bound, n) if n >= 0 else bound
        if due < self.agent_due:
            self.agent_due = due

    # -- housekeeping ---------------------------------------------------------------------------------------
    def sweep(self) -> list[Fact]:
        """Expire idle calls, finalize ended ones, fold agent timelines, forget old tombstones.

        Runs on event time (the watermark) only, so it is deterministic; call it after each message.
        """
        facts = self.settle_agents()
        wm = self.wm
        if wm is None:
            return facts
        clock = self.agent_clock()
        if wm >= self.due:
            self._sweep_calls(wm, facts)
        if clock >= self.agent_due:
            self._sweep_agents(wm, clock, facts)
        caller_clock = self.caller_clock()
        if self.callers and caller_clock >= self.caller_due:
            self._sweep_callers(caller_clock, facts)
        return facts

    def _sweep_callers(self, clock: int, facts: list[Fact]) -> None:
        """Move the callers' histories on to ``clock`` (time-driven changes), forget old calls and callers."""
        rules = self.config.caller_rules
        forget_before = clock - rules.keep_ms
        # A forgotten call's answers are read by the repeats of calls up to the repeat window after them, and
        # such a call is kept until keep_ms after its last event, at most a call timeout after its entry.
        keep_answers_ms = rules.keep_ms + rules.repeat_window_ms + self.config.call_timeout_ms
        self.caller_due = _NEVER
        for caller in list(self.callers):
            session = self.callers[caller]
            forgot = session.forget_before(forget_before, clock - keep_answers_ms)
            if forgot or 0 <= session.next_ms <= clock:
                facts.extend(self._derive_caller(caller, session, clock))
            if session.idle():
                del self.callers[caller]
                continue
            if session.next_ms >= 0:
                self.caller_due = min(self.caller_due, session.next_ms)
            oldest_call = min((u.last_ms() for u in session.calls.values()), default=_NEVER)
            oldest_answer = min((h[1] for h in session.history), default=_NEVER)
            self.caller_due = min(
                self.caller_due, oldest_call + rules.keep_ms, oldest_answer + keep_answers_ms
            )

    def _sweep_calls(self, wm: int, facts: list[Fact]) -> None:
        """Expire, finalize and forget calls (rule 3)."""
        cfg = self.config
        min_talk = cfg.contact_min_talk_ms
        final_before = wm - cfg.grace_ms
        # The next watermark at which anything below can happen (see ``due``).
        due = _NEVER
        for call_id in list(self.calls):
            session = self.calls[call_id]
            derivation = session.derived(call_id, min_talk)
            if not derivation.ended and wm - session.last_ts >= cfg.call_timeout_ms:
                old, old_works = derivation.facts, derivation.works
                expire = StoredEvent(
                    session.last_ts + cfg.call_timeout_ms, "expire", "~expire:" + call_id, None, None, None, 0
                )
                insert_sorted(session.events, expire)
                session.eids.add(expire.event_id)
                session.derivation = None
                derivation = session.derived(call_id, min_talk)
                facts.extend(diff(old, derivation.facts))
                self._work_changed(call_id, old_works, derivation.works)
                self._caller_changed(None, derivation.caller)
            if derivation.ended and session.last_ts < final_before:
                self.tombstones.finalize(
                    call_id,
                    session.last_ts,
                    SEP.join(ev.event_id for ev in session.events),
                    derivation.survey_key,
                    derivation.open_completed,
                )
                del self.calls[call_id]
            else:
                last = session.last_ts
                due = min(due, last + cfg.grace_ms if derivation.ended else last + cfg.call_timeout_ms)
        forget_before = wm - cfg.dedup_ttl_ms
        self.tombstones.forget_before(forget_before)
        oldest = self.tombstones.oldest_chunk()
        if oldest is not None:
            due = min(due, oldest + TOMB_CHUNK_MS + cfg.dedup_ttl_ms)
        self.due = due

    def _sweep_agents(self, wm: int, clock: int, facts: list[Fact]) -> None:
        """Move the agents' timelines on to ``clock``, fold them, forget old event ids."""
        cfg = self.config
        forget_before = wm - cfg.dedup_ttl_ms
        # An agent's work comes one hop after its call's events: its timeline folds at least two grace periods
        # back, and by default an hour.
        fold_lag = cfg.agent_fold_lag_ms
        fold_before = clock - fold_lag
        due = _NEVER
        for agent in list(self.agents):
            agent_session = self.agents[agent]
            rules = cfg.agent_rules(agent)
            facts.extend(agent_session.advance(agent, rules, clock))
            fold_from = agent_session.fold_from(rules)
            if 0 <= fold_from <= fold_before:
                agent_session.fold(agent, rules, fold_before)
                fold_from = agent_session.fold_from(rules)
            for eid in _older_keys(agent_session.seen, forget_before):
                del agent_session.seen[eid]
            if agent_session.idle():
                del self.agents[agent]
                continue
            if fold_from >= 0:
                due = min(due, fold_from + fold_lag)
            n = agent_session.next_ms()
            if n >= 0:
                due = min(due, n)
            if agent_session.seen:
                due = min(due, next(iter(agent_session.seen.values())) + cfg.dedup_ttl_ms)
        self.agent_due = due

    # -- persistence ------------------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Return the state as plain JSON-able data.

        The cached derivations are left out, and so are the tombstones, which are persisted by chunk
        (``Tombstones.checkpoint``); the chunks' slots are in.
        """
        return {
            "hw": self.hw,
            "wm": self.wm,
            "awm": self.agent_wm,
            "calls": {c: [ev.to_wire() for ev in s.events] for c, s in self.calls.items()},
            "chunks": self.tombstones.slots_wire(),
            "agents": {a: s.to_wire() for a, s in self.agents.items()},
            "callers": {c: s.to_wire() for c, s in self.callers.items()},
            "cwm": self.caller_wm,
        }

    @classmethod
    def restore(
        cls,
        data: dict[str, Any],
        config: SessionConfig,
        load_chunk: Callable[[int, int], dict[str, list[object]] | None] = lambda _c, _s: None,
    ) -> BucketState:
        """Rebuild a bucket from ``snapshot()`` output and its chunks (``load_chunk(chunk, slot)`` reads one)."""
        bucket = cls(config)
        bucket.hw = data["hw"]
        bucket.wm = data["wm"]
        bucket.agent_wm = data.get("awm", -1)
        bucket.calls = {
            c: CallSession([StoredEvent.from_wire(ev) for ev in evs]) for c, evs in data["calls"].items()
        }
        bucket.tombstones = Tombstones.restore(data["chunks"], load_chunk)
        bucket.agents = {a: AgentSession.from_wire(s) for a, s in data["agents"].items()}
        bucket.caller_wm = data.get("cwm", -1)
        clock = bucket.caller_clock()
        for caller, wire in data.get("callers", {}).items():
            session = bucket.callers[caller] = CallerSession.from_wire(caller, wire)
            session.update(
                caller, config.caller_rules, clock
            )  # what it had derived (a pure function of both)
        return bucket


def _unexpected_in(unexpected: tuple[Unexpected, ...], eid: str) -> str:
    """The state an event was unexpected in, if the derivation's walk found it so."""
    for u in unexpected:
        if u.event_id == eid:
            return u.state
    return ""


def _older_keys(table: dict[str, int], before: int) -> list[str]:
    """Keys at the start of ``table`` (insertion order) whose time is before ``before``."""
    out = []
    for key, ts in table.items():
        if ts >= before:
            break
        out.append(key)
    return out
