"""Parsing and validation: every rejection reason, timestamps, pseudonymisation, batches."""

import zlib

import orjson
import pytest

from streams.events import REJECTION_REASONS, call_bucket
from streams.exceptions import EventValidationError
from streams.validation import ValidationConfig, parse_message, parse_timestamp, pseudonymise, validate_event

NOW_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
CFG = ValidationConfig(max_event_bytes=1024, max_clock_skew_ms=300_000, caller_key=b"k")


def ev(**fields):
    base = {"event_id": "e1", "type": "queue", "ts": 1_767_225_000, "call_id": "c1", "queue": "sales"}
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}


def reason_of(obj):
    with pytest.raises(EventValidationError) as info:
        validate_event(obj, CFG, NOW_MS)
    return info.value.reason


def test_call_bucket_is_crc32_mod_256():
    # zlib.crc32(b"call-42") computed independently of the function under test.
    assert call_bucket("call-42") == str(zlib.crc32(b"call-42") % 256)
    assert call_bucket("abc") == str(891568578 % 256)  # crc32("abc") = 0x352441C2 = 891568578


@pytest.mark.parametrize(
    ("value", "expected_ms"),
    [
        (1_767_225_000, 1_767_225_000_000),  # epoch seconds, integer
        (1_767_225_000.25, 1_767_225_000_250),  # epoch seconds with a fraction
        ("2026-01-01T00:00:00Z", 1_767_225_600_000),  # RFC 3339, Z
        ("2026-01-01T01:00:00+01:00", 1_767_225_600_000),  # same instant, +01:00
        (
            "2026-01-01T00:00:00.123-00:30",
            1_767_225_600_000 + 1_800_000 + 123,
        ),  # fraction and half-hour offset
    ],
)
def test_timestamps_parse_to_epoch_ms(value, expected_ms):
    assert parse_timestamp(value) == expected_ms


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("2026-01-01T00:00:00", "bad_timestamp"),  # no offset
        ("yesterday", "bad_timestamp"),
        (1_767_225_000_000, "bad_timestamp"),  # milliseconds sent as seconds
        (-5, "bad_timestamp"),
        (float("nan"), "bad_timestamp"),
        (True, "wrong_type"),
        ([1], "wrong_type"),
    ],
)
def test_bad_timestamps_are_rejected(value, reason):
    with pytest.raises(EventValidationError) as info:
        parse_timestamp(value)
    assert info.value.reason == reason


def test_a_valid_queue_event_has_every_field():
    e = validate_event(ev(caller="+15550100"), CFG, NOW_MS)
    assert (e.event_id, e.type, e.ts_ms, e.call_id, e.queue, e.outbound) == (
        "e1",
        "queue",
        1_767_225_000_000,
        "c1",
        "sales",
        False,
    )
    assert e.caller == pseudonymise("+15550100", b"k") and e.caller != "+15550100"
    assert len(e.caller) == 16


def test_the_pseudonym_is_the_start_of_hmac_sha256():
    # RFC 4231, test case 2: HMAC-SHA256(key "Jefe", "what do ya want for nothing?") =
    # 5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843; the pseudonym is its first 16 digits.
    assert pseudonymise("what do ya want for nothing?", b"Jefe") == "5bdcc146bf60754e"


def test_pseudonyms_are_keyed_and_stable():
    assert pseudonymise("+15550100", b"a") == pseudonymise("+15550100", b"a")
    assert pseudonymise("+15550100", b"a") != pseudonymise("+15550100", b"b")
    assert pseudonymise("+15550100", b"a") != pseudonymise("+15550101", b"a")


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        (ev(event_id=None), "missing_field"),
        (ev(event_id=7), "wrong_type"),
        (ev(event_id=""), "wrong_type"),
        (ev(type=None), "missing_field"),
        (ev(type=5), "wrong_type"),
        (ev(type="teleport"), "unknown_type"),
        ({"event_id": "e", "type": "queue", "call_id": "c", "queue": "q"}, "missing_field"),  # no ts
        (ev(ts="soon"), "bad_timestamp"),
        (ev(ts=NOW_MS // 1000 + 301), "too_new"),  # 301 s ahead of the wall clock, skew 300 s
        (ev(call_id=None), "missing_field"),
        (ev(call_id=12), "wrong_type"),
        (ev(queue=None), "missing_field"),  # queue events need a queue
        (ev(queue=["a"]), "wrong_type"),
        (ev(direction="sideways"), "wrong_type"),
        (ev(type="exit", reason=None), "missing_field"),
        (ev(type="exit", reason="bored"), "wrong_type"),
        (ev(type="refused", reason="timeout"), "wrong_type"),  # timeout is an exit reason, not a refusal
        (ev(type="dial", campaign=None), "missing_field"),
        (ev(type="hangup", disposition="maybe"), "wrong_type"),
        (ev(type="survey", scale="csat", score=None), "missing_field"),
        (ev(type="survey", scale="csat", score=6), "wrong_type"),  # csat is 1..5
        (ev(type="survey", scale="nps", score=-1), "wrong_type"),
        (ev(type="survey", scale="nps", score=7.5), "wrong_type"),
        (ev(type="survey", scale="stars", score=3), "wrong_type"),
        (ev(type="agent_state", call_id=None, agent=None, state="available"), "missing_field"),
        (ev(type="agent_state", call_id=None, agent="a1", state="napping"), "wrong_type"),
        (ev(caller=["x"]), "wrong_type"),
        ([1, 2], "not_an_object"),
    ],
)
def test_every_field_rule_has_its_reason(obj, reason):
    assert reason_of(obj) == reason


def test_clock_skew_boundary_is_inclusive():
    # Exactly max_clock_skew ahead is accepted; one second more is not (previous test).
    assert validate_event(ev(ts=NOW_MS // 1000 + 300), CFG, NOW_MS).ts_ms == NOW_MS + 300_000


def test_agent_state_needs_no_call_and_surveys_and_dials_validate():
    a = validate_event(
        ev(type="agent_state", call_id=None, queue=None, agent="a1", state="paused"), CFG, NOW_MS
    )
    assert (a.agent, a.state, a.call_id) == ("a1", "paused", None)
    s = validate_event(ev(type="survey", scale="nps", score=10.0), CFG, NOW_MS)
    assert (s.scale, s.score) == ("nps", 10)
    d = validate_event(ev(type="dial", campaign="renewals", queue=None), CFG, NOW_MS)
    assert d.outbound and d.campaign == "renewals"


def test_whole_message_rejections():
    big = orjson.dumps(ev(padding="x" * 2000))
    cases = {
        b"\xff\xfe{}": "not_utf8",
        b'{"event_id": ': "invalid_json",
        b'"just a string"': "not_an_object",
        b"42": "not_an_object",
        big: "too_large",
    }
    for raw, reason in cases.items():
        events, rejections = parse_message(raw, CFG, NOW_MS)
        assert events == []
        assert [(r.reason, r.raw) for r in rejections] == [(reason, raw)]
    assert {"not_utf8", "invalid_json", "not_an_object", "too_large"} <= set(REJECTION_REASONS)


def test_a_batch_keeps_its_good_events_and_rejects_each_bad_one_with_its_own_bytes():
    good1, good2 = ev(event_id="a"), ev(event_id="b", type="answer", queue=None)
    bad = ev(event_id="c", type="bogus")
    raw = orjson.dumps([good1, bad, "text", good2])
    events, rejections = parse_message(raw, CFG, NOW_MS)
    assert [e.event_id for e in events] == ["a", "b"]
    assert [(r.reason, orjson.loads(r.raw)) for r in rejections] == [
        ("unknown_type", bad),
        ("not_an_object", "text"),
    ]


def test_an_oversized_element_of_a_batch_is_rejected_alone():
    raw = orjson.dumps([ev(event_id="a"), ev(event_id="b", padding="x" * 2000)])
    events, rejections = parse_message(raw, CFG, NOW_MS)
    assert [e.event_id for e in events] == ["a"]
    assert [r.reason for r in rejections] == ["too_large"]
    assert orjson.loads(rejections[0].raw)["event_id"] == "b"


def test_a_valid_event_carries_every_field_in_its_place():
    from streams.events import CallEvent

    got = validate_event(
        {
            "event_id": "e9",
            "type": "hangup",
            "ts": 1_767_225_000,
            "call_id": "c9",
            "queue": "sales",
            "agent": "a7",
            "direction": "outbound",
            "caller": "+15550100",
            "campaign": "k",
            "reason": "timeout",
            "disposition": "success",
            "target": "q2",
            "tenant": "t1",
        },
        CFG,
        NOW_MS,
    )
    assert got == CallEvent(
        event_id="e9",
        type="hangup",
        ts_ms=1_767_225_000_000,
        call_id="c9",
        queue="sales",
        agent="a7",
        outbound=True,
        caller=pseudonymise("+15550100", b"k"),
        campaign="k",
        reason="timeout",
        disposition="success",
        target="q2",
        score=None,
        scale=None,
        state=None,
        tenant="t1",
        number="+15550100",
    )
    survey = validate_event(ev(type="survey", scale="nps", score=9), CFG, NOW_MS)
    assert (survey.scale, survey.score, survey.state, survey.outbound) == ("nps", 9, None, False)
    agent = validate_event(
        {"event_id": "e8", "type": "agent_state", "ts": 1_767_225_000, "agent": "a1", "state": "busy"},
        CFG,
        NOW_MS,
    )
    # busy is the earlier name of on_call
    assert (agent.agent, agent.state, agent.call_id, agent.queue) == ("a1", "on_call", None, None)


@pytest.mark.parametrize(
    ("priority", "accepted"),
    [
        (0, 0),
        (2, 2),
        (-1, -1),
        (1_000_000, 1_000_000),  # the bound is inclusive
        (True, None),  # a JSON boolean is not a number here
        (1.5, None),
        ("1", None),
        (1_000_001, None),
    ],
)
def test_a_priority_is_a_whole_number(priority, accepted):
    if accepted is None:
        assert reason_of(ev(priority=priority)) == "wrong_type"
    else:
        assert validate_event(ev(priority=priority), CFG, NOW_MS).priority == accepted
    assert validate_event(ev(), CFG, NOW_MS).priority is None


@pytest.mark.parametrize(
    ("caller", "number"),
    [
        ("+15550100", "+15550100"),
        ("+1 (555) 010-0", "+15550100"),  # the same number, written another way
        ("555.0100", "5550100"),
        ("101", "101"),  # an extension can be called back
        ("12", None),  # too short
        ("anonymous", None),
        ("Restricted", None),
        ("0000", None),
        ("+", None),
        ("１２３４", None),  # digits of another script are no dialable number
        ("1" * 21, None),
    ],
)
def test_only_a_plausible_number_is_kept_and_it_names_its_caller_however_written(caller, number):
    e = validate_event(ev(caller=caller), CFG, NOW_MS)
    assert e.number == number
    # the pseudonym is of the number (so two ways of writing it are one caller), else of the field as given
    assert e.caller == pseudonymise(number or caller, b"k")
