"""Callers across their calls: repeats, the callback list and abandon recovery, hand-counted scenarios.

The harness routes each call's caller updates to the caller's bucket, as the shell does through calls.events.
Times are seconds after T0; every queue's short-abandon threshold S is 10 s (the default).
"""

from collections import Counter

import orjson

from streams.events import CallEvent, call_bucket
from streams.facts import live_identity
from streams.sessions import BucketState, SessionConfig
from streams.sessions.callers import CallerRules, CallerSession, CallerUpdate, Stint, derive_caller
from streams.validation import plausible_number

T0 = 1_767_225_600_000
H = 3600
RULES = CallerRules(repeat_window_ms=24 * H * 1000, callback_ttl_ms=8 * H * 1000, recovery_ms=H * 1000)
CFG = SessionConfig(caller_rules=RULES)
NUMBER = "+15550100"


class World:
    """Buckets by key; caller updates go to the caller's bucket; facts and callback changes are collected."""

    def __init__(self) -> None:
        self.buckets: dict[str, BucketState] = {}
        self.facts = []
        self.callbacks = []  # (status, queue, number, attempts)

    def bucket(self, key: str) -> BucketState:
        if key not in self.buckets:
            self.buckets[key] = BucketState(CFG)
        return self.buckets[key]

    def send(self, call, etype, sec, caller=NUMBER, **kw):
        """One event, as validation makes it: a pseudonym always, the number only when it is one."""
        pseudonym = "p:" + (plausible_number(caller) or caller) if caller else None
        number = plausible_number(caller) if caller else None
        event = CallEvent(
            event_id=f"{call}-{etype}-{sec}",
            type=etype,
            ts_ms=T0 + sec * 1000,
            call_id=call,
            caller=pseudonym if etype in ("ring", "queue", "dial") else None,
            number=number if etype in ("ring", "queue", "dial") else None,
            **kw,
        )
        b = self.bucket(event.key)
        self.facts += b.apply(event).facts
        self.facts += b.sweep()
        self.route(b)

    def route(self, b: BucketState) -> None:
        while b.caller_outbox:
            update = b.caller_outbox.pop(0)
            target = self.bucket(call_bucket(update.caller))
            self.facts += target.apply_caller(update)
            self.facts += target.sweep()
            self.collect(target)
        self.collect(b)

    def collect(self, b: BucketState) -> None:
        for entry, opened in b.callbacks_out:
            self.callbacks.append(("open" if opened else "closed", entry.queue, entry.number, entry.attempts))
        b.callbacks_out.clear()

    def counts(self):
        net = Counter()
        for f in self.facts:
            if f.kind in ("repeat", "abandon_recovered", "abandon_unrecovered"):
                net[(f.kind, f.key)] += f.sign
        return +net

    def pending(self):
        live = {}
        for f in self.facts:
            if f.kind == "callback":
                if f.sign > 0:
                    live[live_identity(f)] = f
                else:
                    assert live.pop(live_identity(f)) == f.retraction()
        return sorted(
            (f.key, f.caller, (f.since_ms - T0) // 1000, (f.ts_ms - T0) // 1000) for f in live.values()
        )

    def call(self, call, queue, enter, answer=None, abandon=None, hangup=None, caller=NUMBER):
        self.send(call, "ring", enter, caller)
        self.send(call, "queue", enter, caller, queue=queue)
        if answer is not None:
            self.send(call, "answer", answer, caller, agent="a1")
            self.send(call, "hangup", hangup if hangup is not None else answer + 60, caller)
        elif abandon is not None:
            self.send(call, "abandon", abandon, caller)


def test_a_call_within_the_repeat_window_of_an_answered_one_is_a_repeat():
    w = World()
    w.call("c1", "sales", 0, answer=10)
    w.call("c2", "sales", 2 * H, answer=2 * H + 5)  # 2 h after c1's answer: a repeat
    w.call("c3", "support", 3 * H, answer=3 * H + 5)  # another queue: no answered call there before
    w.call("c4", "sales", 2 * H + 5 + 24 * H, answer=27 * H)  # exactly 24 h after c2's answer: not less
    w.call("c5", "sales", 27 * H + 100, answer=27 * H + 110)  # 100 s after c4's answer: a repeat
    w.call("x1", "sales", 10, answer=20, caller="anonymous")  # no number: never a repeat ...
    w.call("x2", "sales", 30, answer=40, caller="anonymous")  # ... however often it calls
    assert w.counts() == Counter({("repeat", "q:sales"): 2})


def test_an_abandoner_waits_for_a_call_back_until_reaching_an_agent_and_is_counted_recovered():
    w = World()
    w.call("c1", "sales", 100, abandon=130)  # waited 30 s >= S: on the list
    w.call("c2", "sales", 400, abandon=405)  # 5 s < S: a short abandon, no call-back request
    w.call("c3", "sales", 480, abandon=500)  # 20 s: a second attempt of the same entry
    assert w.pending() == [("q:sales", "p:" + NUMBER, 130, 500)]
    assert w.callbacks == [("open", "sales", NUMBER, 1), ("open", "sales", NUMBER, 2)]
    w.call("c4", "support", 1000, answer=1010)  # reached an agent (in another queue): off the list
    assert w.pending() == []
    assert w.callbacks[-1] == ("closed", "sales", NUMBER, 2)
    # both long abandons were recovered (at 1010, within an hour of 130 and of 500); the short one is none
    assert w.counts() == Counter({("abandon_recovered", "q:sales"): 2})


def same_bucket_call(caller: str, n: int) -> list[str]:
    """``n`` call ids whose bucket is the caller's: their events move that bucket's clock."""
    key = call_bucket("p:" + caller)
    return [c for c in (f"t{i}" for i in range(100_000)) if call_bucket(c) == key][:n]


def test_an_abandon_not_recovered_within_the_window_is_counted_when_it_has_passed():
    w = World()
    w.call("c1", "sales", 0, abandon=60)
    assert w.counts() == Counter()
    # time moves on in the caller's bucket (calls of other, anonymous, callers that share it): at 60 + 3600 s
    # the abandon counts as not recovered, at that time
    t1, t2, t3 = same_bucket_call(NUMBER, 3)
    w.send(t1, "ring", H + 59, caller=None)
    assert w.counts() == Counter()
    w.send(t2, "ring", H + 61, caller=None)
    assert w.counts() == Counter({("abandon_unrecovered", "q:sales"): 1})
    [unrecovered] = [f for f in w.facts if f.kind == "abandon_unrecovered"]
    assert unrecovered.ts_ms == T0 + (60 + H) * 1000
    # it stays on the list until its TTL (8 h after the abandon), then leaves
    assert [p[0] for p in w.pending()] == ["q:sales"]
    w.send(t3, "ring", 8 * H + 61, caller=None)
    assert w.pending() == []
    assert w.callbacks[-1] == ("closed", "sales", NUMBER, 1)


def test_an_answered_outbound_call_to_the_number_reaches_the_caller():
    w = World()
    w.call("c1", "sales", 0, abandon=30)
    w.send("d1", "dial", 600, campaign="callbacks", outbound=True)
    assert w.pending() != []
    w.send("d1", "answer", 610, caller=None, outbound=True, agent="a2")
    assert w.pending() == []
    assert w.counts() == Counter({("abandon_recovered", "q:sales"): 1})


def test_the_derivation_is_a_pure_function_of_the_calls_in_any_order():
    calls = {
        "c1": CallerUpdate("p", "c1", NUMBER, (Stint("sales", T0, "abandoned", T0 + 30_000),)),
        "c2": CallerUpdate(
            "p", "c2", NUMBER, (Stint("sales", T0 + 60_000, "answered", T0 + 70_000),), T0 + 70_000
        ),
    }
    clock = T0 + 100_000
    one = derive_caller("p", calls, RULES, clock)
    two = derive_caller("p", dict(reversed(list(calls.items()))), RULES, clock)
    assert sorted(one.facts) == sorted(two.facts)
    assert [(f.kind, f.sign) for f in one.facts] == [("abandon_recovered", 1)]
    # a session restored from its persisted form derives the same
    session = CallerSession()
    session.calls = dict(calls)
    restored = CallerSession.from_wire("p", session.to_wire())
    assert restored.calls == session.calls


def test_a_restored_bucket_goes_on_without_counting_anything_twice():
    w = World()
    w.call("c1", "sales", 0, abandon=60)
    key = call_bucket("p:" + NUMBER)
    b = w.buckets[key]
    before = list(w.facts)
    w.buckets[key] = BucketState.restore(orjson.loads(orjson.dumps(b.snapshot())), CFG)
    w.call("c2", "sales", 300, answer=310)
    new = w.facts[len(before) :]
    # the restored caller emits only what the new call changes: one recovery, the entry's retraction
    caller_kinds = ("repeat", "abandon_recovered", "abandon_unrecovered", "callback")
    assert Counter((f.kind, f.sign) for f in new if f.kind in caller_kinds) == Counter(
        {("abandon_recovered", 1): 1, ("callback", -1): 1}
    )
    assert w.pending() == []


def test_forgetting_an_old_call_takes_back_nothing_it_counted_and_keeps_what_later_repeats_read():
    w = World()
    w.call("c1", "sales", 10 * H, answer=10 * H + 10)  # day 0, 10:00
    w.call("c2", "sales", 20 * H, answer=20 * H + 10)  # day 0, 20:00: a repeat of c1
    assert w.counts() == Counter({("repeat", "q:sales"): 1})
    # day 1, 12:00: c1's last event (10:01) is more than 24 h ago: it is forgotten, c2's repeat stays counted
    (t1,) = same_bucket_call(NUMBER, 1)
    w.send(t1, "ring", 36 * H, caller=None)
    session = w.buckets[call_bucket("p:" + NUMBER)].callers["p:" + NUMBER]
    assert set(session.calls) == {"c2"} and [h[2] for h in session.history] == ["c1"]
    assert w.counts() == Counter({("repeat", "q:sales"): 1})
    w.call("c3", "sales", 39 * H, answer=39 * H + 10)  # day 1, 15:00: a repeat of c2 (19 h before)
    assert w.counts() == Counter({("repeat", "q:sales"): 2})
