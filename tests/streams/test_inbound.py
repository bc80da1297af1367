"""The inbound transition table: which events each call state admits, and what an unexpected one does.

The expectations are the event contract of DESIGN 2 read state by state, written out here by hand; the
table in ``streams.sessions.inbound`` is checked against them, not the other way round.
"""

import pytest

from streams.events import CallEvent
from streams.sessions import BucketState, SessionConfig
from streams.sessions.inbound import ROWS, TRANSITIONS, CallState

T0 = 1_767_225_600_000
CALL_TYPES = (
    "ring",
    "queue",
    "agent_missed",
    "ring_canceled",
    "answer",
    "hold",
    "unhold",
    "transfer",
    "exit",
    "refused",
    "abandon",
    "hangup",
    "wrapup",
    "survey",
    "expire",
)

# What each state admits (an action or an explicitly ignored row); everything else is unexpected.
ADMITTED = {
    "new": {
        "ring",
        "queue",
        "agent_missed",
        "ring_canceled",
        "answer",
        "refused",
        "hangup",
        "wrapup",
        "survey",
        "expire",
    },
    "ivr": {
        "queue",
        "agent_missed",
        "ring_canceled",
        "answer",
        "refused",
        "hangup",
        "wrapup",
        "survey",
        "expire",
    },
    "queued": {
        "queue",
        "agent_missed",
        "ring_canceled",
        "answer",
        "transfer",
        "exit",
        "abandon",
        "hangup",
        "wrapup",
        "survey",
        "expire",
    },
    "connected": {
        "queue",
        "agent_missed",
        "ring_canceled",
        "hold",
        "transfer",
        "hangup",
        "wrapup",
        "survey",
        "expire",
    },
    "held": {
        "queue",
        "agent_missed",
        "ring_canceled",
        "unhold",
        "transfer",
        "hangup",
        "wrapup",
        "survey",
        "expire",
    },
    "left": {
        "queue",
        "agent_missed",
        "ring_canceled",
        "answer",
        "refused",
        "hangup",
        "wrapup",
        "survey",
        "expire",
    },
    "ended": {"wrapup", "survey", "expire", "hangup"},
}


def test_each_state_admits_what_the_contract_allows_there():
    assert {state.value: set(rows) for state, rows in TRANSITIONS.items()} == ADMITTED


def test_rows_name_only_call_event_types_and_no_pair_twice():
    pairs = [(etype, state) for etype, states, _ in ROWS for state in states]
    assert len(pairs) == len(set(pairs))
    assert {etype for etype, _ in pairs} == set(CALL_TYPES)
    assert set(TRANSITIONS) == set(CallState)


def E(eid, etype, sec, **kw):
    return CallEvent(event_id=eid, type=etype, ts_ms=T0 + sec * 1000, call_id="c1", **kw)


# A call brought into each state, and an event that state does not admit.
INTO = {
    "ivr": [E("1", "ring", 0)],
    "queued": [E("1", "queue", 0, queue="q")],
    "connected": [E("1", "queue", 0, queue="q"), E("2", "answer", 5, agent="a")],
    "held": [E("1", "queue", 0, queue="q"), E("2", "answer", 5, agent="a"), E("3", "hold", 6)],
    "left": [E("1", "queue", 0, queue="q"), E("2", "exit", 5, queue="q", reason="timeout")],
    "ended": [E("1", "queue", 0, queue="q"), E("2", "abandon", 5, queue="q")],
}


@pytest.mark.parametrize(
    ("state", "etype", "extra"),
    [
        ("ivr", "hold", {}),
        ("queued", "hold", {}),
        ("queued", "refused", {"queue": "q", "reason": "full"}),
        ("connected", "answer", {"agent": "b"}),
        ("connected", "unhold", {}),
        ("held", "hold", {}),
        ("left", "exit", {"queue": "q", "reason": "key"}),
        ("ended", "answer", {"agent": "a"}),
        ("ended", "agent_missed", {"queue": "q", "agent": "a"}),
    ],
)
def test_an_unexpected_event_changes_nothing_and_names_the_state_it_met(state, etype, extra):
    bucket = BucketState(SessionConfig())
    for event in INTO[state]:
        assert bucket.apply(event).unexpected == ""
    applied = bucket.apply(E("9", etype, 8, **extra))
    assert (applied.status, applied.facts, applied.unexpected) == ("ok", [], state)


def test_the_hangup_after_an_abandon_is_expected():
    bucket = BucketState(SessionConfig())
    for event in INTO["ended"]:
        bucket.apply(event)
    assert bucket.apply(E("3", "hangup", 5)) == ("ok", [], "", "")


def test_an_event_inserted_out_of_order_is_judged_in_the_order_of_the_call():
    # The hold arrives first (unexpected in a new call); then the queue and answer before it arrive: the
    # walk that includes all three admits the hold, and the answer's own arrival is not unexpected.
    bucket = BucketState(SessionConfig())
    assert bucket.apply(E("3", "hold", 6)).unexpected == "new"
    assert bucket.apply(E("1", "queue", 0, queue="q")).unexpected == ""
    applied = bucket.apply(E("2", "answer", 5, agent="a"))
    assert applied.unexpected == ""
    assert {f.kind for f in applied.facts if f.sign > 0} == {"answered", "live"}
    assert [f.status for f in applied.facts if f.kind == "live" and f.sign > 0] == ["held"]


def test_a_ring_the_caller_hung_up_on_is_counted_apart_from_an_agent_miss():
    # Asterisk: RINGNOANSWER (rang to the timeout) then RINGCANCELED (the caller hung up while the next
    # agent's phone rang), then ABANDON: one miss for the agent, one abandoned ring, one abandon.
    bucket = BucketState(SessionConfig())
    kinds = []
    for event in [
        E("1", "queue", 0, queue="q"),
        E("2", "agent_missed", 15, queue="q", agent="a"),
        E("3", "ring_canceled", 21, queue="q", agent="b"),
        E("4", "abandon", 21, queue="q"),
    ]:
        kinds += [(f.kind, f.key) for f in bucket.apply(event).facts if f.sign > 0 and f.kind != "live"]
    # the miss also counts for agent a itself (its own key); the ring the caller ended does not count for b
    assert kinds == [
        ("entered", "q:q"),
        ("agent_missed", "q:q"),
        ("agent_missed", "a:a"),
        ("ring_abandoned", "q:q"),
        ("abandoned", "q:q"),
    ]
