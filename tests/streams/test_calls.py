"""The call sessionizer: every transition, arrival-order independence, duplicates, lateness, expiry.

Expected facts are written out by hand from the event times: a wait is answer (or abandon, exit) time minus
the queue time, a talk is hangup (or transfer) time minus the answer time, and so on.
"""

import dataclasses
import itertools
import random
from collections import Counter

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.events import CallEvent
from streams.facts import LIVE_KINDS, live_identity
from streams.sessions import BucketState, SessionConfig
from streams.sessions.call import derive
from streams.sessions.stored import StoredEvent

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z in ms
CFG = SessionConfig(
    grace_ms=120_000,
    call_timeout_ms=3_600_000,
    dedup_ttl_ms=86_400_000,
    max_event_age_ms=86_400_000,
    contact_min_talk_ms=30_000,
)


def E(eid, etype, sec, call="c1", **kw):
    """An event ``sec`` seconds after T0."""
    return CallEvent(event_id=eid, type=etype, ts_ms=T0 + sec * 1000, call_id=call, **kw)


def A(eid, sec, agent, state, queue=None):
    return CallEvent(
        event_id=eid, type="agent_state", ts_ms=T0 + sec * 1000, agent=agent, state=state, queue=queue
    )


def run(events, config=CFG, sweep=True):
    """Feed events one message each; return (emitted facts, statuses, bucket)."""
    bucket = BucketState(config)
    emitted, statuses = [], []
    for e in events:
        applied = bucket.apply(e)
        statuses.append(applied.status)
        emitted.extend(applied.facts)
        if sweep:
            emitted.extend(bucket.sweep())
    return emitted, statuses, bucket


def in_force(emitted):
    """The facts in force after a stream, as the aggregator sees them: counted facts are additions minus
    retractions (each must net to 0 or 1); live and agent facts are upserts, one value per identity, and a
    retraction must name the value in force."""
    net = Counter()
    live = {}
    for f in emitted:
        if f.kind in LIVE_KINDS:
            identity = live_identity(f)
            if f.sign > 0:
                live[identity] = f
            else:
                assert live.get(identity) == f.retraction(), (f, live.get(identity))
                del live[identity]
        else:
            net[f if f.sign > 0 else f.retraction()] += f.sign
    assert all(v in (0, 1) for v in net.values()), net
    return {f for f, v in net.items() if v == 1} | set(live.values())


def brief(facts, *fields):
    """(kind, key, seconds after T0, field values...) tuples, for readable assertions."""
    out = set()
    for f in facts:
        values = tuple(getattr(f, name) for name in fields) if fields else ()
        out.add((f.kind, f.key, (f.ts_ms - T0) // 1000, *values))
    return out


def counts(facts):
    return Counter(f.kind for f in facts if f.kind not in ("live", "agent"))


# -- transitions -----------------------------------------------------------------------------------------------


def test_answered_call_enters_waits_talks_and_completes():
    emitted, statuses, _ = run(
        [E("1", "ring", 0), E("2", "queue", 5, queue="sales"), E("3", "answer", 17), E("4", "hangup", 137)]
    )
    assert statuses == ["ok"] * 4
    assert not [f for f in emitted if f.sign < 0 and f.kind != "live"]  # in order: no retraction
    facts = in_force(emitted)
    # wait 17-5 = 12 s; talk 137-17 = 120 s
    assert brief(facts, "wait_ms", "talk_ms") == {
        ("entered", "q:sales", 5, 0, 0),
        ("answered", "q:sales", 17, 12_000, 0),
        ("completed", "q:sales", 137, 0, 120_000),
    }


def test_a_live_status_change_is_sent_as_the_new_value_alone():
    bucket = BucketState(CFG)
    bucket.apply(E("1", "queue", 0, queue="q"))
    answer = bucket.apply(E("2", "answer", 10)).facts
    # the talking value replaces the waiting one in q:q (an upsert): no retraction of it is sent
    assert [(f.kind, f.status, f.sign) for f in answer if f.kind == "live"] == [("live", "talking", 1)]
    hangup = bucket.apply(E("3", "hangup", 60)).facts
    # nothing replaces the talking value when the call ends: it is retracted
    assert [(f.kind, f.status, f.sign) for f in hangup if f.kind == "live"] == [("live", "talking", -1)]


def test_an_agent_state_change_is_sent_as_the_new_value_and_a_queue_left_is_retracted():
    bucket = BucketState(CFG)
    bucket.apply(A("1", 0, "ag", "available", "q1"))
    bucket.apply(A("2", 0, "ag", "available", "q2"))
    busy = [f for f in bucket.apply(A("3", 60, "ag", "on_call")).facts if f.key.startswith("q:")]
    assert sorted((f.kind, f.key, f.status, f.sign) for f in busy) == [
        ("agent", "q:q1", "on_call", 1),
        ("agent", "q:q2", "on_call", 1),
        ("agent_time", "q:q1", "available", 1),
        ("agent_time", "q:q2", "available", 1),
    ]
    off = [f for f in bucket.apply(A("4", 90, "ag", "offline", "q2")).facts if f.key.startswith("q:")]
    assert sorted((f.kind, f.key, f.status, f.sign) for f in off) == [
        ("agent", "q:q2", "on_call", -1),
        ("agent_time", "q:q2", "on_call", 1),
    ]


def test_live_status_follows_the_call():
    bucket = BucketState(CFG)
    steps = [
        (E("1", "queue", 0, queue="q"), ("waiting", 0)),
        (E("2", "answer", 10), ("talking", 10)),
        (E("3", "hold", 20), ("held", 20)),
        (E("4", "unhold", 50), ("talking", 10)),
        (E("5", "hangup", 60), None),
    ]
    live = {}
    for event, expected in steps:
        for f in bucket.apply(event).facts:
            if f.kind == "live":
                if f.sign > 0:
                    live[f.call] = (f.status, (f.since_ms - T0) // 1000)
                else:
                    live.pop(f.call, None)
        assert live.get("c1") == expected


def test_the_live_fact_names_the_caller_and_the_priority_in_the_queue():
    bucket = BucketState(CFG)
    seen = []
    for event in [
        E("1", "ring", 0, caller="p-ring"),
        E("2", "queue", 5, queue="q", priority=3),
        E("3", "queue", 9, queue="r"),  # moved on: a priority is a queue's, so none in r
        E("4", "answer", 20, agent="a1"),
        E("5", "hangup", 30),
    ]:
        seen += [
            (f.status, f.caller, f.priority, f.sign) for f in bucket.apply(event).facts if f.kind == "live"
        ]
    assert seen == [
        ("waiting", "p-ring", 3, 1),
        ("waiting", "p-ring", 3, -1),  # left q (r's value is another identity)
        ("waiting", "p-ring", 0, 1),
        ("talking", "p-ring", 0, 1),
        ("talking", "p-ring", 0, -1),
    ]
    # A queue event that names the caller (the Asterisk adapter's ENTERQUEUE) names it without a ring.
    facts, _, _ = run([E("1", "queue", 0, call="c2", queue="q", caller="p-queue")], sweep=False)
    assert [(f.caller, f.priority) for f in facts if f.kind == "live"] == [("p-queue", 0)]


@pytest.mark.parametrize("ending", ["abandon", "hangup"])
def test_a_caller_hanging_up_in_queue_abandons(ending):
    emitted, _, _ = run([E("1", "queue", 0, queue="q"), E("2", ending, 7)])
    assert brief(in_force(emitted), "wait_ms") == {("entered", "q:q", 0, 0), ("abandoned", "q:q", 7, 7000)}


def test_abandon_then_hangup_counts_one_abandon():
    emitted, _, _ = run([E("1", "queue", 0, queue="q"), E("2", "abandon", 7), E("3", "hangup", 8)])
    assert counts(in_force(emitted)) == Counter(entered=1, abandoned=1)


@pytest.mark.parametrize("reason", ["timeout", "key", "empty", "withdraw", "callback"])
def test_an_exit_is_a_flow_out_not_an_abandon(reason):
    emitted, _, _ = run(
        [E("1", "queue", 0, queue="q"), E("2", "exit", 300, reason=reason), E("3", "hangup", 301)]
    )
    assert brief(in_force(emitted), "wait_ms", "reason") == {
        ("entered", "q:q", 0, 0, ""),
        ("exited", "q:q", 300, 300_000, reason),
    }


def test_refused_calls_are_counted_alone_and_not_offered():
    emitted, _, _ = run([E("1", "refused", 0, queue="q", reason="full"), E("2", "hangup", 1)])
    assert brief(in_force(emitted), "reason") == {("refused", "q:q", 0, "full")}


def test_a_refused_call_may_then_enter_another_queue():
    emitted, _, _ = run(
        [
            E("1", "refused", 0, queue="q1", reason="joinempty"),
            E("2", "queue", 1, queue="q2"),
            E("3", "answer", 4),
            E("4", "hangup", 10),
        ]
    )
    assert counts(in_force(emitted)) == Counter(refused=1, entered=1, answered=1, completed=1)


def test_ivr_hangup_makes_no_queue_fact():
    emitted, _, _ = run([E("1", "ring", 0), E("2", "hangup", 30)])
    assert in_force(emitted) == set()


def test_moving_to_another_queue_without_exit_is_a_transfer_flow_out_and_a_new_stint():
    emitted, _, _ = run(
        [
            E("1", "queue", 0, queue="q1"),
            E("2", "queue", 40, queue="q2"),
            E("3", "answer", 45),
            E("4", "hangup", 100),
        ]
    )
    assert brief(in_force(emitted), "wait_ms", "reason") == {
        ("entered", "q:q1", 0, 0, ""),
        ("exited", "q:q1", 40, 40_000, "transfer"),
        ("entered", "q:q2", 40, 0, ""),
        ("answered", "q:q2", 45, 5_000, ""),
        ("completed", "q:q2", 100, 0, ""),
    }


def test_an_exit_and_the_next_queue_in_the_same_second_close_the_first_stint():
    # Asterisk logs EXITWITHTIMEOUT and the ENTERQUEUE of the overflow queue in the same second; the exit
    # names no queue here, so only the rule "the exit closes the current attempt first" places it.
    emitted, _, _ = run(
        [
            E("1", "queue", 0, queue="q1"),
            E("2", "exit", 30, reason="timeout"),
            E("3", "queue", 30, queue="q2"),
            E("4", "answer", 35),
            E("5", "hangup", 60),
        ]
    )
    assert brief(in_force(emitted), "wait_ms", "reason") == {
        ("entered", "q:q1", 0, 0, ""),
        ("exited", "q:q1", 30, 30_000, "timeout"),
        ("entered", "q:q2", 30, 0, ""),
        ("answered", "q:q2", 35, 5_000, ""),
        ("completed", "q:q2", 60, 0, ""),
    }


def test_an_exit_in_the_same_second_as_the_first_queue_event_exits_that_queue():
    # ENTERQUEUE then EXITEMPTY in one second: there is no earlier attempt, so the exit ends this one.
    emitted, _, _ = run(
        [E("1", "queue", 0, queue="q"), E("2", "exit", 0, reason="empty"), E("3", "hangup", 1)]
    )
    assert brief(in_force(emitted), "wait_ms", "reason") == {
        ("entered", "q:q", 0, 0, ""),
        ("exited", "q:q", 0, 0, "empty"),
    }


def test_a_refusal_and_the_next_queue_in_the_same_second():
    emitted, _, _ = run(
        [E("1", "refused", 0, queue="q1", reason="full"), E("2", "queue", 0, queue="q2"), E("3", "hangup", 4)]
    )
    assert brief(in_force(emitted), "reason") == {
        ("refused", "q:q1", 0, "full"),
        ("entered", "q:q2", 0, ""),
        ("abandoned", "q:q2", 4, ""),
    }


def test_a_transfer_and_the_next_queue_in_the_same_second():
    emitted, _, _ = run(
        [
            E("1", "queue", 0, queue="q1"),
            E("2", "answer", 5),
            E("3", "transfer", 50, target="q2"),
            E("4", "queue", 50, queue="q2"),
            E("5", "hangup", 52),
        ]
    )
    assert brief(in_force(emitted), "talk_ms", "transferred", "wait_ms") == {
        ("entered", "q:q1", 0, 0, 0, 0),
        ("answered", "q:q1", 5, 0, 0, 5_000),
        ("completed", "q:q1", 50, 45_000, 1, 0),
        ("entered", "q:q2", 50, 0, 0, 0),
        ("abandoned", "q:q2", 52, 0, 0, 2_000),
    }


def test_a_repeated_queue_event_for_the_same_queue_keeps_the_stint():
    emitted, _, _ = run(
        [
            E("1", "queue", 0, queue="q"),
            E("2", "queue", 3, queue="q"),
            E("3", "answer", 10),
            E("4", "hangup", 20),
        ]
    )
    assert brief(in_force(emitted), "wait_ms") >= {("answered", "q:q", 10, 10_000)}
    assert counts(in_force(emitted))["entered"] == 1


def test_holds_are_summed_and_a_hangup_on_hold_closes_the_hold():
    emitted, _, _ = run(
        [
            E("1", "queue", 0, queue="q"),
            E("2", "answer", 10),
            E("3", "hold", 20),
            E("4", "unhold", 50),
            E("5", "hold", 70),
            E("6", "hangup", 100),
        ]
    )
    (co,) = [f for f in in_force(emitted) if f.kind == "completed"]
    # talk 100-10 = 90 s (includes hold); hold (50-20) + (100-70) = 60 s in 2 holds
    assert (co.talk_ms, co.hold_ms, co.holds, co.transferred) == (90_000, 60_000, 2, 0)


def test_a_transfer_to_another_queue_completes_the_first_stint_as_transferred():
    emitted, _, _ = run(
        [
            E("1", "queue", 0, queue="q1"),
            E("2", "answer", 5),
            E("3", "transfer", 65, target="q2"),
            E("4", "queue", 66, queue="q2"),
            E("5", "answer", 80),
            E("6", "hangup", 200),
        ]
    )
    assert brief(in_force(emitted), "wait_ms", "talk_ms", "transferred") == {
        ("entered", "q:q1", 0, 0, 0, 0),
        ("answered", "q:q1", 5, 5_000, 0, 0),
        ("completed", "q:q1", 65, 0, 60_000, 1),
        ("entered", "q:q2", 66, 0, 0, 0),
        ("answered", "q:q2", 80, 14_000, 0, 0),
        ("completed", "q:q2", 200, 0, 120_000, 0),
    }


def test_a_transfer_to_an_agent_is_a_second_handled_segment_of_the_same_queue():
    emitted, _, _ = run(
        [
            E("1", "queue", 0, queue="q"),
            E("2", "answer", 5),
            E("3", "transfer", 35, target="agent7"),
            E("4", "answer", 40),
            E("5", "hangup", 100),
        ]
    )
    assert brief(in_force(emitted), "talk_ms", "transferred") == {
        ("entered", "q:q", 0, 0, 0),
        ("answered", "q:q", 5, 0, 0),
        ("completed", "q:q", 35, 30_000, 1),
        ("completed", "q:q", 100, 60_000, 0),
    }


def test_a_requeue_while_talking_completes_the_talk_as_transferred():
    emitted, _, _ = run(
        [
            E("1", "queue", 0, queue="q1"),
            E("2", "answer", 5),
            E("3", "queue", 25, queue="q2"),
            E("4", "hangup", 30),
        ]
    )
    assert brief(in_force(emitted), "talk_ms", "transferred") >= {("completed", "q:q1", 25, 20_000, 1)}
    assert counts(in_force(emitted)) == Counter(entered=2, answered=1, completed=1, abandoned=1)


def test_a_wrapup_moves_the_completion_to_its_time_and_adds_after_call_work():
    emitted, _, _ = run(
        [E("1", "queue", 0, queue="q"), E("2", "answer", 10), E("3", "hangup", 70), E("4", "wrapup", 100)]
    )
    completed = [f for f in emitted if f.kind == "completed"]
    # emitted at hangup, then retracted and re-emitted at wrap-up time with acw 100-70 = 30 s
    assert [(f.sign, (f.ts_ms - T0) // 1000, f.acw_ms) for f in completed] == [
        (1, 70, 0),
        (-1, 70, 0),
        (1, 100, 30_000),
    ]


def test_agent_missed_is_counted_for_the_queue():
    emitted, _, _ = run(
        [
            E("1", "queue", 0, queue="q"),
            E("2", "agent_missed", 15, agent="a1"),
            E("3", "agent_missed", 30, agent="a2"),
            E("4", "answer", 40),
            E("5", "hangup", 50),
        ]
    )
    missed = [f.key for f in in_force(emitted) if f.kind == "agent_missed"]
    # the queue's two, and each agent's own one
    assert sorted(missed) == ["a:a1", "a:a2", "q:q", "q:q"]


def test_a_survey_is_attributed_to_the_answering_queue_at_survey_time():
    emitted, _, _ = run(
        [
            E("1", "queue", 0, queue="q1"),
            E("2", "queue", 5, queue="q2"),
            E("3", "answer", 9),
            E("4", "hangup", 20),
            E("5", "survey", 60, scale="csat", score=4),
        ]
    )
    assert ("survey", "q:q2", 60, "csat", 4) in brief(in_force(emitted), "scale", "score")


def test_direct_answer_without_queue_is_handled_but_not_offered():
    emitted, _, _ = run([E("1", "answer", 0, queue="q"), E("2", "hangup", 45)])
    assert brief(in_force(emitted), "talk_ms") == {("completed", "q:q", 45, 45_000)}


def test_events_after_the_end_change_nothing():
    emitted, _, _ = run(
        [E("1", "queue", 0, queue="q"), E("2", "hangup", 10), E("3", "answer", 11), E("4", "hold", 12)]
    )
    assert counts(in_force(emitted)) == Counter(entered=1, abandoned=1)


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        # connected, disposition contact: attempt, connected, contact
        (
            [("dial", 0, {"campaign": "k"}), ("answer", 20, {}), ("hangup", 25, {"disposition": "contact"})],
            Counter(attempt=1, connected=1, contact=1),
        ),
        # success is a contact and a conversion
        (
            [("dial", 0, {"campaign": "k"}), ("answer", 20, {}), ("hangup", 200, {"disposition": "success"})],
            Counter(attempt=1, connected=1, contact=1, conversion=1),
        ),
        # no disposition: a contact when talk >= 30 s (exactly 30 here)
        (
            [("dial", 0, {"campaign": "k"}), ("answer", 20, {}), ("hangup", 50, {})],
            Counter(attempt=1, connected=1, contact=1),
        ),
        # no disposition, 29 s talk: not a contact
        (
            [("dial", 0, {"campaign": "k"}), ("answer", 20, {}), ("hangup", 49, {})],
            Counter(attempt=1, connected=1),
        ),
        # answering machine: connected, not a contact
        (
            [
                ("dial", 0, {"campaign": "k"}),
                ("answer", 20, {}),
                ("hangup", 90, {"disposition": "voicemail"}),
            ],
            Counter(attempt=1, connected=1),
        ),
        ([("dial", 0, {"campaign": "k"}), ("hangup", 40, {"disposition": "no_answer"})], Counter(attempt=1)),
        ([("dial", 0, {"campaign": "k"}), ("hangup", 3, {"disposition": "on_call"})], Counter(attempt=1)),
    ],
)
def test_outbound_attempts_connections_contacts_conversions(events, expected):
    evs = [E(str(i), t, s, **kw) for i, (t, s, kw) in enumerate(events)]
    emitted, _, _ = run(evs)
    facts = in_force(emitted)
    assert counts(facts) == expected
    assert {f.key for f in facts} == {"c:k"}


def test_outbound_events_without_a_dial_count_nothing_and_campaign_defaults():
    emitted, _, _ = run([E("1", "answer", 0, outbound=True), E("2", "hangup", 60, outbound=True)])
    assert in_force(emitted) == set()
    emitted, _, _ = run([E("1", "dial", 0, campaign="x"), E("2", "hangup", 5, outbound=True, campaign="y")])
    assert {f.key for f in in_force(emitted)} == {"c:x"}


# -- expiry and finalization ------------------------------------------------------------------------------------


def test_a_call_idle_past_the_timeout_expires_where_it_waits():
    # call_timeout 3600 s: the queued call expires when the bucket's stream time reaches 3600 s after its
    # last event; another call's event moves the stream time.
    emitted, _, bucket = run([E("1", "queue", 0, queue="q"), E("9", "queue", 3599, call="c2", queue="q")])
    assert counts(in_force(emitted))["expired"] == 0
    emitted2 = list(emitted)
    a = bucket.apply(E("10", "queue", 3600, call="c3", queue="q"))
    emitted2 += a.facts + bucket.sweep()
    facts = in_force(emitted2)
    assert ("expired", "q:q", 3600) in brief(facts)
    assert not [f for f in facts if f.kind == "live" and f.call == "c1"]  # no longer waiting


def test_a_talking_call_expires_too():
    emitted, _, _ = run(
        [E("1", "queue", 0, queue="q"), E("2", "answer", 5), E("9", "ring", 3605 + 1, call="c2")]
    )
    assert ("expired", "q:q", 3605) in brief(in_force(emitted))
    assert counts(in_force(emitted))["completed"] == 0


def test_ended_calls_are_finalized_after_grace_and_remembered_for_duplicates():
    emitted, statuses, bucket = run(
        [E("1", "queue", 0, queue="q"), E("2", "hangup", 10), E("9", "ring", 131, call="c2")]
    )  # 131 - 120 > 10: c1 is final
    assert "c1" not in bucket.calls and "c1" in bucket.tombstones.by_call
    assert bucket.apply(E("2", "hangup", 10)).status == "duplicate"
    # not a duplicate and older than stream time - grace: late
    assert bucket.apply(E("3", "answer", 5)).status == "late"


def test_a_wrapup_after_finalization_still_amends_the_completion():
    emitted, _, bucket = run(
        [
            E("1", "queue", 0, queue="q"),
            E("2", "answer", 5),
            E("3", "hangup", 65),
            E("9", "ring", 500, call="c2"),
        ]
    )
    assert "c1" in bucket.tombstones.by_call
    amended = bucket.apply(E("4", "wrapup", 440))
    assert amended.status == "ok"
    assert [(f.sign, (f.ts_ms - T0) // 1000, f.acw_ms) for f in amended.facts] == [
        (-1, 65, 0),
        (1, 440, 375_000),
    ]
    assert bucket.apply(E("5", "survey", 450, scale="nps", score=9)).facts[0].key == "q:q"
    assert bucket.apply(E("4", "wrapup", 440)).status == "duplicate"


def test_tombstones_are_forgotten_with_their_chunk_after_the_dedup_ttl():
    # c1 is finalized with its last event at 1 s: chunk [0, 600 s) (T0 is a chunk boundary). With a TTL of
    # 60 s the chunk is forgotten when the stream time reaches 600 + 60 = 660 s, not before.
    config = SessionConfig(grace_ms=1000, call_timeout_ms=10**9, dedup_ttl_ms=60_000, max_event_age_ms=10**9)
    _, _, bucket = run(
        [E("1", "queue", 0, queue="q"), E("2", "hangup", 1), E("9", "ring", 30, call="c2")], config
    )
    assert "c1" in bucket.tombstones.by_call and list(bucket.tombstones.chunks) == [T0]
    bucket.apply(E("10", "ring", 659, call="c3"))
    bucket.sweep()
    assert "c1" in bucket.tombstones.by_call
    bucket.apply(E("11", "ring", 660, call="c4"))
    bucket.sweep()
    assert (
        "c1" not in bucket.tombstones.by_call
        and T0 in bucket.tombstones.deleted
        and T0 not in bucket.tombstones.chunks
    )


def checkpoint(bucket, store):
    """Persist ``bucket`` as the shell does; apply the writes to ``store`` and return them in changelog order."""
    writes, deletes = bucket.tombstones.checkpoint()
    ops = [(("t", chunk, slot), orjson.dumps(tombstones)) for chunk, slot, tombstones in writes]
    ops.append(("bucket", orjson.dumps(bucket.snapshot())))
    ops += [(("t", chunk, slot), None) for chunk, slot in deletes]
    replay(store, ops)
    return ops


def replay(store, ops):
    for key, value in ops:
        if value is None:
            store.pop(key, None)
        else:
            store[key] = value


def restore(store, config=CFG):
    def load(chunk, slot):
        value = store.get(("t", chunk, slot))
        return orjson.loads(value) if value is not None else None

    return BucketState.restore(orjson.loads(store["bucket"]), config, load)


def persisted(bucket):
    """What a restore must give back: the snapshot and every tombstone (JSON round trip)."""
    return orjson.loads(orjson.dumps([bucket.snapshot(), bucket.tombstones.by_call]))


def test_tombstones_persist_in_chunks_and_come_back():
    _, _, bucket = run([E("1", "queue", 0, queue="q"), E("2", "hangup", 10), E("9", "ring", 131, call="c2")])
    assert bucket.tombstones.dirty == {T0}
    store = {}
    checkpoint(bucket, store)
    restored = restore(store)
    assert persisted(restored) == persisted(bucket)
    assert restored.apply(E("2", "hangup", 10)).status == "duplicate"
    assert restored.apply(E("3", "survey", 140, scale="csat", score=5)).facts[0].key == "q:q"


def test_a_changed_chunk_goes_to_the_other_slot_and_the_old_version_is_deleted_after_the_bucket():
    _, _, bucket = run([E("1", "queue", 0, queue="q"), E("2", "hangup", 10), E("9", "ring", 131, call="c2")])
    store = {}
    assert [key for key, _ in checkpoint(bucket, store)] == [("t", T0, 0), "bucket"]
    bucket.apply(E("3", "survey", 140, scale="csat", score=5))  # changes c1's tombstone
    assert [(key, value is None) for key, value in checkpoint(bucket, store)] == [
        (("t", T0, 1), False),
        ("bucket", False),
        (("t", T0, 0), True),
    ]
    bucket.apply(E("4", "survey", 141, scale="nps", score=9))
    assert [key for key, _ in checkpoint(bucket, store)] == [("t", T0, 0), "bucket", ("t", T0, 1)]
    assert checkpoint(bucket, store) == [("bucket", orjson.dumps(bucket.snapshot()))]  # nothing changed
    assert set(store) == {"bucket", ("t", T0, 0)}


def test_every_prefix_of_a_checkpoint_restores_one_of_the_two_checkpoints():
    # Checkpoint 1: c1 finalized in chunk T0, c2 rung at 131 s. Then c2 queues at 140 s, hangs up at 150 s,
    # and is finalized into the same chunk when c3 rings at 300 s (150 < 300 - 120). A crash may cut
    # checkpoint 2 after any of its writes (the changelog keeps their order).
    first = [E("1", "queue", 0, queue="q"), E("2", "hangup", 10), E("9", "ring", 131, call="c2")]
    later = [
        E("10", "queue", 140, call="c2", queue="q"),
        E("11", "hangup", 150, call="c2"),
        E("12", "ring", 300, call="c3"),
    ]
    _, _, bucket = run(first)
    store = {}
    checkpoint(bucket, store)
    one = persisted(bucket)
    for e in later:
        bucket.apply(e)
        bucket.sweep()
    assert "c2" in bucket.tombstones.by_call
    after_one = dict(store)
    ops = checkpoint(bucket, store)
    two = persisted(bucket)
    assert len(ops) == 3
    for cut in range(len(ops) + 1):
        store = dict(after_one)
        replay(store, ops[:cut])
        restored = restore(store)
        if cut < 2:  # the bucket of checkpoint 2 not written: checkpoint 1, and c2's events replay as new
            assert persisted(restored) == one, cut
            emitted = [f for e in later for f in restored.apply(e).facts]
            assert counts(in_force(emitted)) == Counter(entered=1, abandoned=1), cut
        else:
            assert persisted(restored) == two, cut


def test_a_forgotten_chunk_is_deleted_in_both_slots():
    # as in the TTL test above: chunk T0 is forgotten when the stream time reaches 660 s
    config = SessionConfig(grace_ms=1000, call_timeout_ms=10**9, dedup_ttl_ms=60_000, max_event_age_ms=10**9)
    _, _, bucket = run(
        [E("1", "queue", 0, queue="q"), E("2", "hangup", 1), E("9", "ring", 30, call="c2")], config
    )
    store = {}
    checkpoint(bucket, store)
    bucket.apply(E("11", "ring", 660, call="c4"))
    bucket.sweep()
    assert [(key, value) for key, value in checkpoint(bucket, store) if key != "bucket"] == [
        (("t", T0, 0), None),
        (("t", T0, 1), None),
    ]
    assert set(store) == {"bucket"} and restore(store, config).tombstones.by_call == {}


# -- duplicates and lateness -------------------------------------------------------------------------------------


def test_duplicates_are_ignored_and_counted():
    emitted, statuses, _ = run(
        [
            E("1", "queue", 0, queue="q"),
            E("1", "queue", 0, queue="q"),
            E("2", "answer", 3),
            E("2", "answer", 3),
            E("3", "hangup", 9),
        ]
    )
    assert statuses == ["ok", "duplicate", "ok", "duplicate", "ok"]
    assert counts(in_force(emitted)) == Counter(entered=1, answered=1, completed=1)


@pytest.mark.parametrize(
    ("late_sec", "status"),
    [
        (80, "ok"),  # stream time 200 s, grace 120 s: 80 s is exactly on the bound, still accepted
        (79, "late"),  # 1 s beyond grace
        (200 - 86_400, "too_old"),  # max_event_age 86,400 s behind: still within max age -> late
        (200 - 86_401, "too_old"),
    ],
)
def test_lateness_bounds(late_sec, status):
    bucket = BucketState(CFG)
    bucket.apply(E("w", "ring", 200, call="other"))
    result = bucket.apply(E("x", "ring", late_sec, call="c9"))
    expected = "late" if late_sec == 200 - 86_400 else status
    assert result.status == expected
    if expected != "ok":
        assert result.facts == [] and "c9" not in bucket.calls


def test_watermark_never_moves_back():
    bucket = BucketState(CFG)
    bucket.apply(E("1", "ring", 100))
    bucket.apply(E("2", "queue", 50, queue="q"))
    assert bucket.wm == T0 + 100_000


# -- arrival order -----------------------------------------------------------------------------------------------

SMALL_CALLS = {
    "answered": [
        E("1", "ring", 0),
        E("2", "queue", 2, queue="q"),
        E("3", "answer", 12),
        E("4", "hold", 20),
        E("5", "unhold", 30),
        E("6", "hangup", 60),
        E("7", "wrapup", 70),
    ],
    "abandoned": [
        E("1", "queue", 0, queue="q"),
        E("2", "agent_missed", 5, agent="a"),
        E("3", "abandon", 9),
        E("4", "hangup", 9),
        E("5", "survey", 20, scale="csat", score=2),
    ],
    "requeued": [
        E("1", "queue", 0, queue="q1"),
        E("2", "exit", 30, reason="timeout"),
        E("3", "queue", 30, queue="q2"),
        E("4", "answer", 31),
        E("5", "transfer", 50, target="q3"),
        E("6", "queue", 50, queue="q3"),
        E("7", "hangup", 52),
    ],
    "same_second": [
        E("1", "ring", 0),
        E("2", "queue", 0, queue="q"),
        E("3", "answer", 0),
        E("4", "hangup", 0),
        E("5", "wrapup", 0),
        E("6", "survey", 0, scale="nps", score=10),
    ],
    "outbound": [
        E("1", "dial", 0, campaign="k"),
        E("2", "answer", 10),
        E("3", "hangup", 100, disposition="success"),
        E("4", "survey", 110, scale="csat", score=5),
    ],  # all within the 120 s grace
}


@pytest.mark.parametrize("name", sorted(SMALL_CALLS))
def test_every_arrival_order_of_a_small_call_gives_the_in_order_facts(name):
    events = SMALL_CALLS[name]
    expected = in_force(run(events)[0])
    assert expected  # the call makes facts at all
    for order in itertools.permutations(events):
        emitted, statuses, _ = run(list(order))
        assert statuses == ["ok"] * len(events)
        assert in_force(emitted) == expected, [e.event_id for e in order]


def test_in_order_streams_emit_no_retraction_but_wrapup_amendments():
    for name, events in SMALL_CALLS.items():
        emitted, _, _ = run(events)
        retracted = [f for f in emitted if f.sign < 0 and f.kind not in ("live",)]
        assert all(f.kind == "completed" for f in retracted), name


def test_derive_is_a_function_of_the_sorted_events():
    events = SMALL_CALLS["requeued"]
    evs = sorted((StoredEvent.of(e) for e in events), key=StoredEvent.sort_key)
    shuffled = sorted(random.Random(3).sample(evs, len(evs)), key=StoredEvent.sort_key)
    assert derive("c1", evs, 30_000).facts == derive("c1", shuffled, 30_000).facts


@st.composite
def interleaved_calls(draw):
    """Several calls with random shapes and times, delivered with random delays below the grace period."""
    events = []
    n_calls = draw(st.integers(1, 5))
    for c in range(n_calls):
        call = f"call{c}"
        t = draw(st.integers(0, 300))
        q = draw(st.sampled_from(["q1", "q2"]))
        events.append(E(f"{call}-q", "queue", t, call=call, queue=q))
        wait = draw(st.integers(0, 60))
        outcome = draw(st.sampled_from(["answer", "abandon", "exit", "hangup"]))
        if outcome == "answer":
            events.append(E(f"{call}-a", "answer", t + wait, call=call))
            talk = draw(st.integers(0, 200))
            if draw(st.booleans()):
                h = draw(st.integers(0, talk))
                events.append(E(f"{call}-h", "hold", t + wait + h, call=call))
                events.append(
                    E(f"{call}-u", "unhold", t + wait + h + draw(st.integers(0, talk - h)), call=call)
                )
            events.append(E(f"{call}-x", "hangup", t + wait + talk, call=call))
            if draw(st.booleans()):
                events.append(E(f"{call}-w", "wrapup", t + wait + talk + draw(st.integers(0, 30)), call=call))
        elif outcome == "exit":
            events.append(E(f"{call}-e", "exit", t + wait, call=call, reason="timeout"))
        else:
            events.append(E(f"{call}-b", outcome, t + wait, call=call))
    delays = [draw(st.integers(0, 110)) for _ in events]  # every delay < grace (120 s)
    arrival = [
        e
        for _, _, e in sorted(
            zip(
                [e.ts_ms + d * 1000 for e, d in zip(events, delays, strict=True)],
                range(len(events)),
                events,
                strict=True,
            )
        )
    ]
    return sorted(events, key=lambda e: (e.ts_ms, StoredEvent.of(e).sort_key())), arrival


@settings(max_examples=300, deadline=None)
@given(interleaved_calls())
def test_interleaved_calls_with_delays_within_grace_total_as_in_order(case):
    in_order, arrival = case
    expected = in_force(run(in_order)[0])
    emitted, statuses, _ = run(arrival)
    assert statuses == ["ok"] * len(arrival)
    assert in_force(emitted) == expected


def test_snapshot_and_restore_in_the_middle_changes_nothing():
    events = SMALL_CALLS["answered"] + [A("a1", 1, "ag", "available", "q")]
    straight, _, _ = run(events)
    bucket = BucketState(CFG)
    emitted = []
    for i, e in enumerate(events):
        if i % 2:
            bucket = BucketState.restore(orjson.loads(orjson.dumps(bucket.snapshot())), CFG)
        emitted += bucket.apply(e).facts + bucket.sweep()
    assert emitted == straight


# -- agents ------------------------------------------------------------------------------------------------------


def agent_totals(facts):
    """Seconds per (queue, state) from closed intervals, and the open states."""
    closed, open_ = Counter(), {}
    for f in facts:
        if f.kind == "agent_time":
            closed[(f.key, f.status)] += (f.ts_ms - f.since_ms) // 1000
        elif f.kind == "agent":
            open_[(f.key, f.agent)] = (f.status, (f.since_ms - T0) // 1000)
    return closed, open_


AGENT_DAY = [
    A("1", 0, "ag", "available", "q1"),
    A("2", 0, "ag", "available", "q2"),
    A("3", 60, "ag", "on_call"),
    A("4", 200, "ag", "acw"),
    A("5", 230, "ag", "paused"),
    A("6", 300, "ag", "offline", "q2"),
    A("7", 320, "ag", "available"),
]


def test_agent_states_become_intervals_per_queue():
    closed, open_ = agent_totals(in_force(run(AGENT_DAY)[0]))
    # q1: available 0-60, busy 60-200, acw 200-230, paused 230-320; then available since 320
    # q2: the same until it leaves q2 at 300 (paused 230-300)
    assert closed == Counter(
        {
            ("q:q1", "available"): 60,
            ("q:q1", "on_call"): 140,
            ("q:q1", "acw"): 30,
            ("q:q1", "paused"): 90,
            ("q:q2", "available"): 60,
            ("q:q2", "on_call"): 140,
            ("q:q2", "acw"): 30,
            ("q:q2", "paused"): 70,
            # overall (the agent's own key): as in q1, which it serves to the end
            ("a:ag", "available"): 60,
            ("a:ag", "on_call"): 140,
            ("a:ag", "acw"): 30,
            ("a:ag", "paused"): 90,
        }
    )
    assert open_ == {("q:q1", "ag"): ("available", 320), ("a:ag", "ag"): ("available", 320)}


def test_agent_events_in_any_order_within_grace_give_the_same_intervals():
    expected = agent_totals(in_force(run(AGENT_DAY)[0]))
    rng = random.Random(7)
    for _ in range(300):
        # each event delayed by 0..119 s (grace is 120 s), arriving in order of arrival time
        order = [
            e for _, _, e in sorted((e.ts_ms + rng.randrange(120_000), i, e) for i, e in enumerate(AGENT_DAY))
        ]
        emitted, statuses, _ = run(order)
        assert statuses == ["ok"] * len(order)
        assert agent_totals(in_force(emitted)) == expected


def test_agent_timelines_fold_past_grace_without_retracting_history():
    events = [*AGENT_DAY, A("8", 1000, "ag", "on_call"), A("9", 2000, "ag", "available")]
    # CALLPULSE_AGENT_HISTORY=0: agent timelines fold two grace periods back
    emitted, _, bucket = run(events, dataclasses.replace(CFG, agent_history_ms=0))
    closed, open_ = agent_totals(in_force(emitted))
    assert closed[("q:q1", "available")] == 60 + 680  # 0-60 and 320-1000
    assert closed[("q:q1", "on_call")] == 140 + 1000  # 60-200 and 1000-2000
    assert open_ == {("q:q1", "ag"): ("available", 2000), ("a:ag", "ag"): ("available", 2000)}
    assert len(bucket.agents["ag"].pending) == 1  # everything older than 2000 - 2 x 120 s is folded
    assert bucket.apply(A("3", 60, "ag", "on_call")).status == "duplicate"


def test_redials_under_one_call_id_are_separate_attempts_in_any_same_second_order():
    # pbxware-2018 rows 905-908: dial, channel unavailable, dial (all at 119 s), then the answered call
    # logged at 162 s with 40 s of talk: 2 attempts, 1 connection, 1 contact (40 s >= 30 s)
    events = [
        E("905", "dial", 119, campaign="default"),
        E("906", "hangup", 119, outbound=True, disposition="failed"),
        E("907", "dial", 119, campaign="default"),
        E("908a", "answer", 122, outbound=True),
        E("908b", "hangup", 162, outbound=True),
    ]
    expected = Counter(attempt=2, connected=1, contact=1)
    for order in itertools.permutations(events):
        emitted, _, bucket = run(list(order))
        assert counts(in_force(emitted)) == expected
    # rows 683-688: three dials and three failures in one second: 3 attempts and nothing else
    burst = [E(f"d{i}", "dial", 6, campaign="default") for i in range(3)] + [
        E(f"f{i}", "hangup", 6, outbound=True, disposition="failed") for i in range(3)
    ]
    assert counts(in_force(run(burst)[0])) == Counter(attempt=3)


def test_an_answer_needs_a_dial_and_a_call_ends_when_every_attempt_did():
    emitted, _, bucket = run(
        [
            E("1", "dial", 0, campaign="k"),
            E("2", "answer", 5, outbound=True),
            E("3", "answer", 6, outbound=True),
            E("4", "hangup", 50, outbound=True),
            E("9", "ring", 400, call="other"),
        ]
    )
    assert counts(in_force(emitted)) == Counter(
        attempt=1, connected=1, contact=1
    )  # the second answer has no dial
    assert "c1" in bucket.tombstones.by_call  # ended and finalized


def test_a_call_that_left_its_queue_and_never_hung_up_ends_without_expiring():
    emitted, _, _ = run(
        [
            E("1", "queue", 0, queue="q"),
            E("2", "answer", 5),
            E("3", "transfer", 60, target="x"),
            E("9", "ring", 3600 + 61, call="c2"),
        ]
    )
    assert counts(in_force(emitted)) == Counter(entered=1, answered=1, completed=1)


def reference_changes(events):
    """What each event changes, by re-deriving the whole call (or agent) from scratch and diffing."""
    from streams.facts import diff
    from streams.sessions.agents import NEVER, AgentEvent, Base, Rules, walk

    def derive_agent(agent, evs):
        if not evs:
            return []
        evs = sorted(evs, key=AgentEvent.order)
        r = walk(agent, Base(evs[0].ts_ms, {}, set(), {}, {}), evs, [], Rules((), lambda q: 0), NEVER)
        return r.closed + r.open + r.next

    per_call, per_agent, out = {}, {}, []
    for e in events:
        if e.type == "agent_state":
            old_events = per_agent.setdefault(e.agent, [])
            old = derive_agent(e.agent, old_events)
            old_events.append(AgentEvent(e.ts_ms, e.event_id, e.state, e.queue))
            new = derive_agent(e.agent, old_events)
        else:
            old_events = per_call.setdefault(e.call_id, [])
            old = (
                derive(e.call_id, sorted(old_events, key=StoredEvent.sort_key), 30_000).facts
                if old_events
                else []
            )
            old_events.append(StoredEvent.of(e))
            new = derive(e.call_id, sorted(old_events, key=StoredEvent.sort_key), 30_000).facts
        out.append(Counter(diff(old, new)))
    return out


@settings(max_examples=200, deadline=None)
@given(interleaved_calls())
def test_the_incremental_walks_emit_exactly_what_a_full_derivation_would(case):
    in_order, arrival = case
    agents = [
        A(f"a{i}", e.ts_ms // 1000 - T0 // 1000, "ag", s, "q1" if i % 3 else None)
        for i, (e, s) in enumerate(
            zip(in_order, ["available", "on_call", "acw", "paused"] * 10, strict=False)
        )
    ]
    for stream in (in_order + agents, arrival + agents):
        bucket = BucketState(SessionConfig(grace_ms=10**9, call_timeout_ms=10**9))  # no folding, no expiry
        got = [Counter(bucket.apply(e).facts) for e in stream]
        assert got == reference_changes(stream)


@st.composite
def long_streams(draw):
    """Calls (some never ending) and agent events over hours, with duplicates, in arrival order."""
    events = []
    for c in range(draw(st.integers(1, 8))):
        call, t = f"call{c}", draw(st.integers(0, 20_000))
        events.append(E(f"{call}-q", "queue", t, call=call, queue=draw(st.sampled_from(["q1", "q2"]))))
        if draw(st.booleans()):
            events.append(E(f"{call}-a", "answer", t + draw(st.integers(0, 60)), call=call))
        if draw(st.booleans()):  # else the call never ends: it expires
            events.append(E(f"{call}-x", "hangup", t + draw(st.integers(60, 400)), call=call))
    for i in range(draw(st.integers(0, 6))):
        events.append(
            A(
                f"ag{i}",
                draw(st.integers(0, 20_000)),
                f"ag{i % 2}",
                draw(st.sampled_from(["available", "on_call", "offline"])),
                draw(st.sampled_from(["q1", None])),
            )
        )
    events.sort(key=lambda e: e.ts_ms)
    repeats = [events[i] for i in draw(st.lists(st.integers(0, len(events) - 1), max_size=4))]
    return events + repeats + [E("end", "queue", 40_000, call="late-caller", queue="q1")]


@settings(max_examples=200, deadline=None)
@given(long_streams())
def test_skipping_housekeeping_until_it_is_due_changes_nothing(stream):
    # grace 120 s, calls expire after 600 s, ids are remembered 1,800 s: all of it happens within the stream
    config = SessionConfig(
        grace_ms=120_000, call_timeout_ms=600_000, dedup_ttl_ms=1_800_000, max_event_age_ms=86_400_000
    )
    lazy, eager = BucketState(config), BucketState(config)
    for event in stream:
        a, b = lazy.apply(event), eager.apply(event)
        assert (a.status, a.facts) == (b.status, b.facts)
        eager.due = eager.agent_due = 0  # always the full pass
        assert lazy.sweep() == eager.sweep()
        assert lazy.snapshot() == eager.snapshot()
        assert lazy.tombstones.chunks == eager.tombstones.chunks


@pytest.mark.parametrize("name", sorted(SMALL_CALLS))
def test_in_every_arrival_order_each_event_changes_what_a_full_derivation_would(name):
    # Equal timestamps included: a walk goes on with an event of the same second that sorts last, except an
    # exit/transfer/refusal, which a queue event of the same instant must follow (requeued, same_second).
    for order in itertools.permutations(SMALL_CALLS[name]):
        bucket = BucketState(SessionConfig(grace_ms=10**9, call_timeout_ms=10**9))
        got = [Counter(bucket.apply(e).facts) for e in order]
        assert got == reference_changes(list(order)), [e.event_id for e in order]
