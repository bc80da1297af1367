"""Agent timelines from explicit agent events and from the agents' calls (streams.sessions.agents).

The expectations are worked out by hand from the precedence rule of ``streams.sessions.agents``: times are
seconds after T0; sales has a 5 s wrap-up time, support 0 s.
"""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.events import CallEvent, call_bucket
from streams.facts import Fact
from streams.sessions import BucketState, SessionConfig
from streams.sessions.agents import NEVER, AgentEvent, AgentSession, Work, WorkUpdate, walk

T0 = 1_767_225_600_000
CFG = SessionConfig(
    grace_ms=120_000,
    call_timeout_ms=3_600_000,
    dedup_ttl_ms=86_400_000,
    max_event_age_ms=86_400_000,
    wrapup_ms={"sales": 5_000},
    static_members={"alice": ("sales",), "carol": ("sales", "support")},
)


def E(eid, etype, sec, call="c1", **kw):
    return CallEvent(event_id=eid, type=etype, ts_ms=T0 + sec * 1000, call_id=call, **kw)


def A(eid, sec, agent, state, queue=None, reason=None):
    return CallEvent(
        event_id=eid,
        type="agent_state",
        ts_ms=T0 + sec * 1000,
        agent=agent,
        state=state,
        queue=queue,
        reason=reason,
    )


class World:
    """Buckets by message key, with the work updates routed between them as the shell does (in order)."""

    def __init__(self, config: SessionConfig = CFG, defer: bool = False) -> None:
        self.config = config
        #: Walk an agent once per message, at the sweep, as the shell does.
        self.defer = defer
        self.buckets: dict[str, BucketState] = {}
        self.emitted: list[Fact] = []
        #: Work updates sent and not yet delivered: (agent bucket, update).
        self.in_flight: list[tuple[str, WorkUpdate]] = []

    def bucket(self, key: str) -> BucketState:
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = self.buckets[key] = BucketState(self.config)
            bucket.defer_agents = self.defer
        return bucket

    def send_message(self, events: list[CallEvent]) -> None:
        """Events of one message (of one bucket each, as producers batch them), then the sweep."""
        by_key: dict[str, list[CallEvent]] = {}
        for event in events:
            by_key.setdefault(event.key, []).append(event)
        for key, evs in by_key.items():
            bucket = self.bucket(key)
            for event in evs:
                self.emitted += bucket.apply(event).facts
            self.emitted += bucket.sweep()
            self._collect(bucket)
        self.deliver()

    def send(self, event: CallEvent, deliver: bool = True) -> str:
        bucket = self.bucket(event.key)
        applied = bucket.apply(event)
        self.emitted += applied.facts
        self.emitted += bucket.sweep()
        self._collect(bucket)
        if deliver:
            self.deliver()
        return applied.status

    def _collect(self, bucket: BucketState) -> None:
        self.in_flight += [(call_bucket(u.agent), u) for u in bucket.outbox]
        bucket.outbox.clear()

    def deliver(self) -> None:
        while self.in_flight:
            key, update = self.in_flight.pop(0)
            bucket = self.bucket(key)
            self.emitted += bucket.apply_work(update)
            self.emitted += bucket.sweep()
            self._collect(bucket)

    def shown(self, sec: int, prefix: str = "q:") -> dict[tuple[str, str], tuple[str, str]]:
        """(agent, queue) -> (status, reason) in force at ``sec`` (after every fact emitted so far)."""
        now = T0 + sec * 1000
        opened, nexts = in_force_upserts(self.emitted)
        out = {}
        for (agent, key), f in opened.items():
            if not key.startswith(prefix):
                continue
            nxt = nexts.get((agent, key))
            if nxt is not None and now >= nxt.since_ms:
                if nxt.status != "offline":
                    out[(agent, key[2:])] = (nxt.status, nxt.reason)
            else:
                out[(agent, key[2:])] = (f.status, f.reason)
        return out

    def overall(self, sec: int) -> dict[str, tuple[str, str]]:
        """agent -> its overall (status, reason) at ``sec``: the agent's own key."""
        return {agent: v for (agent, _), v in self.shown(sec, "a:").items()}

    def intervals(self, prefix: str = "q:") -> Counter:
        """Closed intervals in force: (agent, queue, status, reason, from s, to s) -> count."""
        c: Counter = Counter()
        for f in self.emitted:
            if f.kind == "agent_time" and f.key.startswith(prefix):
                c[
                    (
                        f.agent,
                        f.key[2:],
                        f.status,
                        f.reason,
                        (f.since_ms - T0) // 1000,
                        (f.ts_ms - T0) // 1000,
                    )
                ] += f.sign
        return Counter({k: n for k, n in c.items() if n})  # a retraction of what was never sent shows as -1


def in_force_upserts(facts: list[Fact]) -> tuple[dict, dict]:
    opened: dict = {}
    nexts: dict = {}
    for f in facts:
        table = opened if f.kind == "agent" else nexts if f.kind == "agent_next" else None
        if table is None:
            continue
        ident = (f.agent, f.key)
        if f.sign > 0:
            table[ident] = f
        elif table.get(ident) == f.retraction():
            del table[ident]
    return opened, nexts


def answered_call(call, queue, agent, enq, ans, end):
    return [
        E(f"{call}-q", "queue", enq, call=call, queue=queue),
        E(f"{call}-a", "answer", ans, call=call, agent=agent),
        E(f"{call}-h", "hangup", end, call=call),
    ]


def test_an_agent_who_answers_is_on_the_call_then_in_wrap_up_for_the_queue_s_time_then_available():
    w = World()
    for ev in answered_call("c1", "sales", "alice", 0, 10, 70):
        w.send(ev)
    # alice is a static member of sales: on the call 10-70, wrap-up 70-75 (sales: 5 s), available from 75
    assert w.shown(70) == {("alice", "sales"): ("acw", "")}
    assert w.shown(74) == {("alice", "sales"): ("acw", "")}
    # no event has come after 70 yet: the end of wrap-up was announced, and holds from 75 on
    assert w.shown(75) == {("alice", "sales"): ("available", "")}
    assert w.intervals() == Counter({("alice", "sales", "on_call", "", 10, 70): 1})
    w.send(E("x-q", "queue", 100, call="x", queue="support"))  # the stream time passes 75 in alice's bucket?
    w.send(A("tick", 100, "alice", "available", "sales"))  # an event of alice's own bucket at 100
    assert w.intervals() == Counter(
        {("alice", "sales", "on_call", "", 10, 70): 1, ("alice", "sales", "acw", "", 70, 75): 1}
    )
    assert w.shown(100) == {("alice", "sales"): ("available", "")}


def test_an_agent_of_two_queues_on_a_call_from_one_is_on_the_call_in_both():
    w = World()
    for ev in answered_call("c1", "support", "carol", 0, 4, 64):
        w.send(ev)
    # carol serves sales and support; the call comes from support (no wrap-up time): available in both at 64
    assert w.shown(64) == {("carol", "sales"): ("available", ""), ("carol", "support"): ("available", "")}
    assert w.intervals() == Counter(
        {("carol", "sales", "on_call", "", 4, 64): 1, ("carol", "support", "on_call", "", 4, 64): 1}
    )


def test_a_pause_during_a_call_holds_after_its_wrap_up_and_one_after_the_call_ends_wrap_up():
    w = World()
    w.send(E("c1-q", "queue", 0, call="c1", queue="sales"))
    w.send(E("c1-a", "answer", 10, call="c1", agent="alice"))
    w.send(A("p1", 30, "alice", "paused", reason="Lunch"))
    # during the call alice is on the call, whatever she asked for
    assert w.shown(30) == {("alice", "sales"): ("on_call", "")}
    w.send(E("c1-h", "hangup", 70, call="c1"))
    assert w.shown(72) == {("alice", "sales"): ("acw", "")}
    assert w.shown(75) == {("alice", "sales"): ("paused", "Lunch")}
    # a pause after the call's end cuts the wrap-up short
    w.send(A("p2", 73, "alice", "paused", reason="Break"))
    assert w.shown(73) == {("alice", "sales"): ("paused", "Break")}
    w.send(A("u", 200, "alice", "available"))
    assert w.intervals() == Counter(
        {
            ("alice", "sales", "on_call", "", 10, 70): 1,
            ("alice", "sales", "acw", "", 70, 73): 1,
            ("alice", "sales", "paused", "Break", 73, 200): 1,
        }
    )


def test_a_wrap_up_event_ends_after_call_work():
    w = World()
    for ev in answered_call("c1", "support", "dave", 0, 10, 70):
        w.send(ev)
    w.send(A("j", 0, "dave", "available", "support"))  # dave joins support at 0 (arrives late, within grace)
    assert w.shown(70) == {("dave", "support"): ("available", "")}  # support: no wrap-up time
    w.send(E("c1-w", "wrapup", 90, call="c1"))
    # the wrap-up event says the after-call work lasted 70-90
    assert w.shown(90) == {("dave", "support"): ("available", "")}
    assert w.intervals() == Counter(
        {
            ("dave", "support", "available", "", 0, 10): 1,
            ("dave", "support", "on_call", "", 10, 70): 1,
            ("dave", "support", "acw", "", 70, 90): 1,
        }
    )


def test_an_agent_logging_off_during_a_call_is_offline_when_it_ends_without_wrap_up():
    w = World()
    w.send(A("j", 0, "dave", "available", "sales"))
    w.send(E("c1-q", "queue", 5, call="c1", queue="sales"))
    w.send(E("c1-a", "answer", 10, call="c1", agent="dave"))
    w.send(A("off", 40, "dave", "offline", "sales"))
    assert w.shown(40) == {("dave", "sales"): ("on_call", "")}
    w.send(E("c1-h", "hangup", 70, call="c1"))
    assert w.shown(70) == {}
    assert w.intervals() == Counter(
        {("dave", "sales", "available", "", 0, 10): 1, ("dave", "sales", "on_call", "", 10, 70): 1}
    )


def test_an_agent_answering_a_queue_it_has_not_joined_is_on_the_call_there_while_it_lasts():
    w = World()
    for ev in answered_call("c1", "support", "frank", 0, 10, 70):
        w.send(ev)
    assert w.shown(70) == {}
    assert w.intervals() == Counter({("frank", "support", "on_call", "", 10, 70): 1})


def test_an_outbound_call_an_agent_placed_holds_the_agent_from_the_answer_to_the_hang_up():
    w = World()
    w.send(E("d", "dial", 0, call="o1", campaign="renewals", outbound=True))
    w.send(E("a", "answer", 8, call="o1", agent="alice", outbound=True))
    assert w.shown(8) == {("alice", "sales"): ("on_call", "")}
    w.send(E("h", "hangup", 68, call="o1", outbound=True))
    # an outbound call has no queue: no wrap-up time (the default, 0)
    assert w.shown(68) == {("alice", "sales"): ("available", "")}
    assert w.intervals() == Counter({("alice", "sales", "on_call", "", 8, 68): 1})


def test_an_explicit_on_call_is_superseded_once_the_call_is_over_and_an_explicit_acw_holds():
    w = World()
    w.send(A("j", 0, "erin", "available", "support"))
    w.send(E("c1-q", "queue", 5, call="c1", queue="support"))
    w.send(E("c1-a", "answer", 10, call="c1", agent="erin"))
    w.send(A("b", 10, "erin", "on_call"))
    w.send(E("c1-h", "hangup", 70, call="c1"))
    # the source's on_call was about the call: with no wrap-up time erin is available when it ends
    assert w.shown(70) == {("erin", "support"): ("available", "")}
    w.send(A("w", 70, "erin", "acw"))  # the source tells its wrap-up: it holds until the source says more
    assert w.shown(80) == {("erin", "support"): ("acw", "")}
    w.send(A("v", 85, "erin", "available"))
    assert w.shown(85) == {("erin", "support"): ("available", "")}
    assert w.intervals() == Counter(
        {
            ("erin", "support", "available", "", 0, 10): 1,
            ("erin", "support", "on_call", "", 10, 70): 1,
            ("erin", "support", "acw", "", 70, 85): 1,
        }
    )


# Every arrival order gives the in-order answer -------------------------------------------------------------
SCENARIO = [
    A("j", 0, "dave", "available", "sales"),
    E("c1-q", "queue", 2, call="c1", queue="sales"),
    E("c1-a", "answer", 10, call="c1", agent="dave"),
    A("p", 30, "dave", "paused", reason="Coaching"),
    E("c1-h", "hangup", 70, call="c1"),
    A("u", 90, "dave", "available"),
    E("c2-a", "answer", 100, call="c2", agent="dave", queue="sales"),  # a direct call to dave
]


def _final(events, deliver_late: bool):
    w = World()
    for ev in events:
        w.send(ev, deliver=not deliver_late)
    w.deliver()
    return _end(w)


def _end(w):
    w.send(A("end", 200, "dave", "available", "sales"))
    return w.intervals(), w.shown(200)


def test_in_every_arrival_order_the_agent_s_timeline_is_the_in_order_one():
    # By hand: available 0-10, on call 10-70, wrap-up 70-75 (sales 5 s; the pause at 30 came during the
    # call), paused Coaching 75-90, available 90-100, on the second call since 100.
    expected = Counter(
        {
            ("dave", "sales", "available", "", 0, 10): 1,
            ("dave", "sales", "on_call", "", 10, 70): 1,
            ("dave", "sales", "acw", "", 70, 75): 1,
            ("dave", "sales", "paused", "Coaching", 75, 90): 1,
            ("dave", "sales", "available", "", 90, 100): 1,
        }
    )
    for order in itertools.permutations(SCENARIO):
        for late in (False, True):
            intervals, shown = _final(list(order), late)
            assert (intervals, shown) == (expected, {("dave", "sales"): ("on_call", "")}), (
                [e.event_id for e in order],
                late,
            )
        # as the shell does it: several events a message, each agent walked once a message
        w = World(defer=True)
        for i in range(0, len(order), 3):
            w.send_message(list(order[i : i + 3]))
        assert _end(w) == (expected, {("dave", "sales"): ("on_call", "")}), [e.event_id for e in order]


STATIC_SCENARIO = [
    A("p", 5, "alice", "paused", reason="Break"),
    E("c1-q", "queue", 8, call="c1", queue="sales"),
    E("c1-a", "answer", 10, call="c1", agent="alice"),
    E("c1-h", "hangup", 40, call="c1"),
    A("u", 60, "alice", "available"),
]


def test_a_static_member_s_timeline_in_every_arrival_order():
    # alice is a static member of sales, first seen at 5 (paused): paused 5-10, on the call 10-40, wrap-up
    # 40-45 (sales, 5 s; the pause came before the call ended), paused again 45-60, available since 60. The
    # same overall (her only queue).
    expected = Counter()
    for key in ("sales", "alice"):
        for status, reason, a, b in (
            ("paused", "Break", 5, 10),
            ("on_call", "sales" if key == "alice" else "", 10, 40),
            ("acw", "", 40, 45),
            ("paused", "Break", 45, 60),
        ):
            expected[("alice", key, status, reason, a, b)] = 1
    for order in itertools.permutations(STATIC_SCENARIO):
        for late in (False, True):
            w = World()
            for ev in order:
                w.send(ev, deliver=not late)
            w.deliver()
            w.send(E("x", "queue", 70, call="x", queue="support"))
            assert (w.intervals(), w.intervals("a:")) == (
                Counter({k: n for k, n in expected.items() if k[1] == "sales"}),
                Counter({k: n for k, n in expected.items() if k[1] == "alice"}),
            ), ([e.event_id for e in order], late)
            assert w.shown(70) == {("alice", "sales"): ("available", "")}


def test_replayed_work_updates_converge_to_the_same_timeline():
    w = World()
    for ev in SCENARIO:
        w.send(ev, deliver=False)
    flight = list(w.in_flight)
    w.deliver()
    w.in_flight = flight  # a replay after a crash sends them all again
    w.deliver()
    w.send(A("end", 200, "dave", "available", "sales"))
    assert w.shown(200) == {("dave", "sales"): ("on_call", "")}
    assert w.intervals()[("dave", "sales", "acw", "", 70, 75)] == 1


def test_an_agent_session_survives_its_snapshot():
    session = AgentSession()
    rules = CFG.agent_rules("alice")
    session.set_work(
        WorkUpdate("alice", "c1", (Work("sales", T0 + 10_000, T0 + 70_000),)), rules, T0 + 70_000
    )
    restored = AgentSession.from_wire(session.to_wire())
    wm = T0 + 80_000
    assert restored.advance("alice", rules, wm) == session.advance("alice", rules, wm)
    assert restored.to_wire() == session.to_wire()


def test_an_agent_timeline_stored_before_call_derived_states_reads_busy_as_on_call():
    old = ["busy", {"sales": T0}, [[T0 + 5_000, "e9", "available", None]], {"e9": T0 + 5_000}]
    session = AgentSession.from_wire(old)
    rules = CFG.agent_rules("bob")
    # the earlier version emitted busy 0-5 and available since 5, the aggregator reads busy as on_call: the
    # same facts, so moving on emits nothing
    assert session.advance("bob", rules, T0 + 6_000) == []
    facts = session.facts("bob", rules, T0 + 6_000)
    # in sales; and overall (the agent's own key, which the earlier version did not have) from the first
    # event it had not yet folded
    assert [(f.kind, f.key, f.status, (f.since_ms - T0) // 1000, (f.ts_ms - T0) // 1000) for f in facts] == [
        ("agent_time", "q:sales", "on_call", 0, 5),
        ("agent", "q:sales", "available", 5, 5),
        ("agent", "a:bob", "available", 5, 5),
    ]


@pytest.mark.parametrize("grace_s", [120])
def test_folding_keeps_the_timeline(grace_s):
    # Hours of calls, folded as the watermark moves on, give the intervals an unfolded timeline gives.
    # no history kept beyond two grace periods (CALLPULSE_AGENT_HISTORY=0): folding as often as it can
    config = SessionConfig(
        grace_ms=grace_s * 1000,
        agent_history_ms=0,
        wrapup_ms={"sales": 5_000},
        static_members={"alice": ("sales",)},
    )
    unfolded = SessionConfig(grace_ms=10**9, wrapup_ms={"sales": 5_000}, static_members={"alice": ("sales",)})
    events = []
    for i in range(40):
        t = i * 300
        events += answered_call(f"c{i}", "sales", "alice", t, t + 20, t + 200)
    events.append(A("end", 40 * 300 + 10, "alice", "available", "sales"))
    a, b = World(config), World(unfolded)
    for ev in events:
        a.send(ev)
        b.send(ev)
    assert a.intervals() == b.intervals()
    # per call: on the call, wrap-up, and available before it (but the first: alice is not seen before it)
    assert len(a.intervals()) == 40 * 3 - 1
    agent_bucket = a.buckets[call_bucket("alice")]
    assert len(agent_bucket.agents["alice"].works) <= 2  # finished calls were dropped


@st.composite
def agent_inputs(draw):
    """An agent's explicit events and work updates of a few calls, roughly in time order, some out of it."""
    out, t = [], 0
    calls: dict[str, list] = {}
    for i in range(draw(st.integers(1, 30))):  # enough points for a walk to mark its state (MARK_EVERY)
        t += draw(st.integers(-20, 40))
        if draw(st.integers(0, 5)) == 0:
            out.append(("fold", draw(st.integers(0, 120))))
        elif draw(st.booleans()):
            state = draw(st.sampled_from(["available", "paused", "acw", "on_call", "offline"]))
            queue = draw(st.sampled_from(["sales", "support", None]))
            out.append(("event", t, f"e{i}", state, queue))
        else:
            call = draw(st.sampled_from(["c1", "c2", "c3"]))
            works = calls.setdefault(call, [])
            ts = T0 + t * 1000
            if not works or works[-1][2] >= 0:
                works.append([draw(st.sampled_from(["sales", "support", ""])), ts, -1, -1])
            elif draw(st.booleans()):
                works[-1][2] = max(ts, works[-1][1])
            else:
                works[-1][3] = ts
            out.append(("work", call, tuple(Work(*w) for w in works)))
    return out


@settings(max_examples=400, deadline=None)
@given(agent_inputs())
def test_a_walk_that_goes_on_from_the_last_gives_what_walking_it_all_again_gives(inputs):
    rules = CFG.agent_rules("carol")
    session, wm = AgentSession(), -(10**9)
    for item in inputs:
        if item[0] == "fold":
            session.advance("carol", rules, wm)
            # inputs go back at most 30 x 20 s: a fold 600 s back never folds what a later input changes
            session.fold("carol", rules, wm - (600 + item[1]) * 1000)
        elif item[0] == "event":
            _, t, eid, state, queue = item
            ts = T0 + t * 1000
            wm = max(wm, ts)
            session.add("carol", AgentEvent(ts, eid, state, queue), rules, wm)
        else:
            _, call, works = item
            wm = max(wm, *(max(w.start_ms, w.end_ms, w.wrapup_ms) for w in works))
            session.set_work(WorkUpdate("carol", call, works), rules, wm)
        fresh = walk("carol", session.base, session.pending, session._all_works(), rules, wm)
        got = session.derived("carol", rules, wm)
        # what the walk says (where it may go on from can differ: a walk that went on knows less of its past)
        assert (got.closed, got.open, got.next, got.next_ms) == (
            fresh.closed,
            fresh.open,
            fresh.next,
            fresh.next_ms,
        )
        assert got.base.to_wire()[1:] == fresh.base.to_wire()[1:]  # the state it reached (not where it began)


def test_work_from_a_partition_running_ahead_makes_none_of_the_bucket_s_own_events_late():
    bucket = BucketState(CFG)
    assert bucket.apply(E("q", "queue", 0, call="c1", queue="sales")).status == "ok"
    # an agent of this bucket answered a call an hour later, in a bucket whose partition is read ahead
    bucket.apply_work(WorkUpdate("zoe", "elsewhere", (Work("sales", T0 + 3_600_000),)))
    # this bucket's own call goes on at 10 s: not late (grace is 120 s behind this bucket's own events)
    assert bucket.apply(E("h", "abandon", 10, call="c1")).status == "ok"
    assert bucket.wm == T0 + 10_000 and bucket.agent_wm == T0 + 3_600_000
    # zoe's timeline goes up to the work it has: on the call since an hour in
    facts = bucket.sweep()
    assert facts == [] and bucket.agents["zoe"].until == NEVER
