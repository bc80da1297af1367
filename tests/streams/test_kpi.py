"""The KPI engine: every formula at its boundaries, retractions, idempotency, live values, occupancy.

Expected numbers are worked out by hand in the comments (T = 20 s, S = 10 s unless stated).
"""

import pytest

from streams.config import QueueTargets, TargetsConfig
from streams.facts import Fact, to_wire
from streams.kpi import (
    RETENTION_MS,
    KeyState,
    KpiConfig,
    KpiEngine,
    kpis,
    merge_states,
    read_key,
    read_peaks,
    read_volume,
    survey_band,
    waiting_callers,
)
from streams.windows import WindowSpec


def apply_facts(engine, key, src, off, facts, seq=-1):
    """Apply facts as the aggregator receives them: in their wire form."""
    return engine.apply_wire(key, src, off, [to_wire(f) for f in facts], seq)


T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z, a minute boundary
SEC = 1000


def F(kind, sec, key="q:sales", **kw):
    return Fact(kind, key, T0 + int(sec * SEC), f"{kind}:{sec}:{kw}", **kw)


def engine(**targets):
    return KpiEngine(
        KpiConfig(
            targets=TargetsConfig(QueueTargets(**targets)),
            windows=WindowSpec(),
            call_timeout_ms=3600 * SEC,
            dedup_ttl_ms=86_400 * SEC,
        )
    )


def read(eng, key="q:sales", now_sec=59, window="5m"):
    return read_key(eng.keys[key], eng.config, T0 + now_sec * SEC)["windows"][window]


BOUNDARY_FACTS = [
    F("entered", 0),
    F("answered", 1, wait_ms=20_000),
    F("answered", 2, wait_ms=20_001),
    F("answered", 3, wait_ms=0),
    F("abandoned", 4, wait_ms=9_999),
    F("abandoned", 5, wait_ms=10_000),
    F("abandoned", 6, wait_ms=20_000),
    F("abandoned", 7, wait_ms=25_000),
    F("exited", 8, wait_ms=5_000, reason="timeout"),
]


def test_counters_and_formulas_at_the_thresholds():
    eng = engine()
    assert apply_facts(eng, "q:sales", "b1", 0, BOUNDARY_FACTS)
    w = read(eng)
    c = w["counts"]
    # answered: 20.000 s is within T (<=), 20.001 s is not; abandons: 9.999 s is short (< S), 10.000 s is not;
    # within SL among abandons: 9.999, 10.000, 20.000 (<= 20 s)
    assert (
        c["answered"],
        c["answered_within_sl"],
        c["abandoned"],
        c["short_abandoned"],
        c["abandoned_within_sl"],
        c["exited"],
        c["exited:timeout"],
        c["entered"],
    ) == (3, 2, 4, 1, 3, 1, 1, 1)
    k = w["kpis"]
    assert k["offered_calls"] == 8.0  # 3 + 4 + 1
    assert k["abandonment_ratio"] == pytest.approx(3 / 7)  # (4 - 1) / (8 - 1)
    assert k["service_level_ratio"] == pytest.approx(2 / 6)  # 2 / (3 + 4 - 1)
    assert k["average_speed_of_answer_seconds"] == pytest.approx(40.001 / 3)  # (20 + 20.001 + 0) / 3
    assert k["average_abandon_wait_seconds"] == pytest.approx(64.999 / 4)  # (9.999 + 10 + 20 + 25) / 4
    assert k["longest_wait_seconds"] == 25.0


def test_short_abandon_threshold_zero_counts_no_short_abandons():
    eng = engine(short_abandon_s=0)
    apply_facts(eng, "q:sales", "b1", 0, BOUNDARY_FACTS)
    w = read(eng)
    assert "short_abandoned" not in w["counts"]
    assert w["kpis"]["abandonment_ratio"] == pytest.approx(4 / 8)
    assert w["kpis"]["service_level_ratio"] == pytest.approx(2 / 7)


def test_zero_denominators_give_no_value_not_100_percent():
    eng = engine()
    apply_facts(eng, "q:sales", "b1", 0, [F("entered", 0)])
    k = read(eng)["kpis"]
    assert k["offered_calls"] == 0.0
    for name in (
        "abandonment_ratio",
        "service_level_ratio",
        "average_speed_of_answer_seconds",
        "longest_wait_seconds",
        "average_handle_time_seconds",
        "transfer_ratio",
        "connection_ratio",
        "csat_ratio",
        "nps_score",
        "occupancy_ratio",
    ):
        assert k[name] is None, name


def test_only_short_abandons_leave_abandonment_undefined():
    # O = 1 and Ab_s = 1: (1 - 1) / (1 - 1) has no value
    assert kpis({"abandoned": 1, "short_abandoned": 1}, 3000)["abandonment_ratio"] is None


def test_handle_hold_transfer_surveys_outbound():
    eng = engine()
    apply_facts(
        eng,
        "q:sales",
        "b1",
        0,
        [
            F("answered", 1, wait_ms=0),
            F("answered", 2, wait_ms=0),
            F("completed", 10, talk_ms=90_000, hold_ms=20_000, holds=2, acw_ms=30_000, transferred=1),
            F("completed", 11, talk_ms=60_000),
            F("survey", 12, scale="csat", score=5),
            F("survey", 13, scale="csat", score=4),
            F("survey", 14, scale="csat", score=3),
            F("survey", 15, scale="csat", score=1),
            F("survey", 16, scale="nps", score=10),
            F("survey", 17, scale="nps", score=9),
            F("survey", 18, scale="nps", score=8),
            F("survey", 19, scale="nps", score=6),
            F("survey", 20, scale="nps", score=0),
        ],
    )
    apply_facts(
        eng,
        "c:renew",
        "b1",
        0,
        [
            F("attempt", 1, "c:renew"),
            F("attempt", 2, "c:renew"),
            F("attempt", 3, "c:renew"),
            F("attempt", 4, "c:renew"),
            F("connected", 5, "c:renew"),
            F("connected", 6, "c:renew"),
            F("contact", 7, "c:renew"),
            F("conversion", 8, "c:renew"),
        ],
    )
    k = read(eng)["kpis"]
    assert k["average_handle_time_seconds"] == 90.0  # (90 + 30 + 60 + 0) / 2
    assert k["average_hold_seconds"] == 10.0  # 20 / 2
    assert k["transfer_ratio"] == 0.5  # 1 transferred / 2 answered
    assert k["csat_ratio"] == 0.5 and k["dsat_ratio"] == 0.25  # 4-5: 2 of 4; 1-2: 1 of 4
    assert k["nps_score"] == 0.0  # promoters 10, 9; detractors 6, 0: (2 - 2) / 5
    o = read(eng, "c:renew")["kpis"]
    assert (o["connection_ratio"], o["contact_ratio"], o["conversion_ratio"]) == (0.5, 0.25, 0.25)


@pytest.mark.parametrize(
    ("scale", "score", "band"),
    [
        ("csat", 1, "negative"),
        ("csat", 2, "negative"),
        ("csat", 3, "neutral"),
        ("csat", 4, "positive"),
        ("nps", 6, "detractor"),
        ("nps", 7, "passive"),
        ("nps", 8, "passive"),
        ("nps", 9, "promoter"),
    ],
)
def test_survey_bands(scale, score, band):
    assert survey_band(scale, score) == band


def test_a_retraction_corrects_windows_but_exported_counters_never_decrease():
    eng = engine()
    ab = F("abandoned", 30, wait_ms=100_000)
    apply_facts(eng, "q:sales", "b1", 0, [F("entered", 0), ab])
    state = eng.keys["q:sales"]
    eng.settle(state)  # a checkpoint: abandoned 1 is exported
    apply_facts(eng, "q:sales", "b1", 1, [ab.retraction(), F("answered", 10, wait_ms=10_000)])
    eng.settle(state)
    w = read(eng)
    assert w["counts"].get("abandoned", 0) == 0 and w["counts"]["answered"] == 1
    assert w["kpis"]["longest_wait_seconds"] == 10.0  # the 100 s wait is gone with its fact
    assert state.totals.get("abandoned", 0) == 0
    assert state.hwm["abandoned"] == 1  # exported stays 1: a decrease would look like a counter reset
    assert state.hwm["offered"] == 1  # true offered is 1 (the answer), was 1 (the abandon)
    apply_facts(eng, "q:sales", "b1", 2, [F("abandoned", 40, wait_ms=1_000)])
    eng.settle(state)
    assert state.hwm["abandoned"] == 1  # the next abandon is absorbed: true total is now 1 again
    apply_facts(eng, "q:sales", "b1", 3, [F("abandoned", 41, wait_ms=1_000)])
    eng.settle(state)
    assert state.hwm["abandoned"] == 2


def test_a_retraction_and_its_correction_between_two_checkpoints_never_show():
    eng = engine()
    ab = F("abandoned", 30, wait_ms=100_000)
    apply_facts(eng, "q:sales", "b1", 0, [F("entered", 0), ab])
    apply_facts(eng, "q:sales", "b1", 1, [ab.retraction(), F("answered", 10, wait_ms=10_000)])
    state = eng.keys["q:sales"]
    eng.settle(state)
    assert state.hwm.get("abandoned", 0) == 0 and state.hwm["answered"] == 1


def test_the_same_source_message_applies_once():
    eng = engine()
    facts = [F("entered", 0)]
    assert apply_facts(eng, "q:sales", "b1", 5, facts)
    assert not apply_facts(eng, "q:sales", "b1", 5, facts)  # re-emitted
    assert not apply_facts(eng, "q:sales", "b1", 4, facts)  # older
    assert apply_facts(eng, "q:sales", "b2", 5, facts)  # another bucket
    assert read(eng)["counts"]["entered"] == 2


def test_windows_select_minutes_by_event_time():
    eng = engine()
    # entered at 00:00:30 and at 00:10:00; at 00:14:10 the 5m window is 00:10..00:15, 15m is 00:00..00:15
    apply_facts(eng, "q:sales", "b1", 0, [F("entered", 30), F("entered", 600)])
    r = read_key(eng.keys["q:sales"], eng.config, T0 + 850 * SEC)["windows"]
    assert r["5m"]["counts"]["entered"] == 1
    assert r["15m"]["counts"]["entered"] == 2
    # at 00:15:00 exactly the 15m window is 00:01..00:16 and the first minute has left it
    r = read_key(eng.keys["q:sales"], eng.config, T0 + 900 * SEC)["windows"]
    assert r["15m"]["counts"]["entered"] == 1


def test_live_values_tick_with_now():
    eng = engine()
    apply_facts(
        eng,
        "q:sales",
        "b1",
        0,
        [
            Fact("live", "q:sales", T0, "l1", "c1", status="waiting", since_ms=T0),
            Fact("live", "q:sales", T0 + 5 * SEC, "l2", "c2", status="waiting", since_ms=T0 + 5 * SEC),
            Fact("live", "q:sales", T0, "l3", "c3", status="talking", since_ms=T0),
            Fact("live", "q:sales", T0, "l4", "c4", status="held", since_ms=T0),
        ],
    )
    state = eng.keys["q:sales"]
    live = read_key(state, eng.config, T0 + 25 * SEC)["live"]
    # waits 25 s and 20 s: oldest 25 s; over T = 20 s strictly: only the first
    assert (live["calls_waiting"], live["oldest_wait_seconds"], live["calls_waiting_over_sl"]) == (2, 25.0, 1)
    assert (live["calls_talking"], live["calls_on_hold"]) == (1, 1)
    live = read_key(state, eng.config, T0 + 30 * SEC)["live"]
    assert (live["oldest_wait_seconds"], live["calls_waiting_over_sl"]) == (30.0, 2)
    # a waiting entry older than the call timeout (3600 s) is an orphan and no longer shown
    live = read_key(state, eng.config, T0 + 3602 * SEC)["live"]
    assert live["calls_waiting"] == 1
    apply_facts(
        eng,
        "q:sales",
        "b1",
        1,
        [Fact("live", "q:sales", T0, "l1", "c1", status="waiting", since_ms=T0, sign=-1)],
    )
    assert read_key(state, eng.config, T0 + 30 * SEC)["live"]["calls_waiting"] == 1


def test_the_waiting_callers_are_listed_in_the_order_they_are_served():
    eng = engine()

    def waiting(call, sec, caller="", priority=0, sign=1):
        ts = T0 + sec * SEC
        return Fact(
            "live",
            "q:sales",
            ts,
            "live:" + call,
            call,
            status="waiting",
            since_ms=ts,
            caller=caller,
            priority=priority,
            sign=sign,
        )

    apply_facts(
        eng,
        "q:sales",
        "b1",
        0,
        [
            waiting("c1", 0, "p1"),
            waiting("c2", 5, "p2", priority=2),
            waiting("c3", 5, "p3", priority=2),  # same time and priority as c2: the call id decides
            waiting("c4", 8, "p4", priority=1),
            waiting("c5", 1, "p5"),
            Fact("live", "q:sales", T0, "live:c6", "c6", status="talking", since_ms=T0, caller="p6"),
        ],
    )
    state = eng.keys["q:sales"]
    # Priority 2 first (c2, c3 by id), then 1 (c4), then 0 by entry: c1 (t=0) before c5 (t=1).
    got = waiting_callers(state, eng.config, T0 + 60 * SEC)
    assert [(w.position, w.call, w.caller, w.priority, (w.since_ms - T0) // SEC) for w in got] == [
        (1, "c2", "p2", 2, 5),
        (2, "c3", "p3", 2, 5),
        (3, "c4", "p4", 1, 8),
        (4, "c1", "p1", 0, 0),
        (5, "c5", "p5", 0, 1),
    ]
    apply_facts(eng, "q:sales", "b1", 1, [waiting("c2", 5, "p2", priority=2, sign=-1)])  # c2 answered
    assert [w.call for w in waiting_callers(state, eng.config, T0 + 60 * SEC)] == ["c3", "c4", "c1", "c5"]
    # Past the call timeout (3600 s) an entry is an orphan: c1 (t=0) goes, c5 (t=1) stays a second longer.
    assert [w.call for w in waiting_callers(state, eng.config, T0 + 3600 * SEC)] == ["c3", "c4", "c5"]


def test_live_values_written_before_callers_were_kept_still_count_and_retract():
    eng = engine()
    # The 6-field wire form of a live fact (before caller and priority).
    eng.apply_wire("q:sales", "b1", 0, [["live", T0, 1, "c1", "waiting", T0]])
    # ... and a live value stored as [status, since] by then.
    snapshot = eng.keys["q:sales"].snapshot()
    restored = KeyState.restore(
        "q:sales", {**snapshot, "live": {**snapshot["live"], "c2": ["waiting", T0 + SEC]}}, {}
    )
    eng.keys["q:sales"] = restored
    assert [w.call for w in waiting_callers(restored, eng.config, T0 + 5 * SEC)] == ["c1", "c2"]
    eng.apply_wire("q:sales", "b1", 1, [["live", T0 + SEC, -1, "c2", "waiting", T0 + SEC]])
    assert [(w.call, w.caller, w.priority) for w in waiting_callers(restored, eng.config, T0 + 5 * SEC)] == [
        ("c1", "", 0)
    ]


def test_occupancy_counts_closed_intervals_and_open_states_up_to_now():
    eng = engine()
    apply_facts(
        eng,
        "q:sales",
        "b1",
        0,
        [
            Fact(
                "agent_time",
                "q:sales",
                T0 + 90 * SEC,
                "t1",
                agent="a",
                status="available",
                since_ms=T0 + 30 * SEC,
            ),
            Fact(
                "agent_time",
                "q:sales",
                T0 + 150 * SEC,
                "t2",
                agent="a",
                status="on_call",
                since_ms=T0 + 90 * SEC,
            ),
            Fact("agent", "q:sales", T0 + 150 * SEC, "o1", agent="a", status="acw", since_ms=T0 + 150 * SEC),
            Fact("agent", "q:sales", T0, "o2", agent="b", status="paused", since_ms=T0),
        ],
    )
    r = read_key(eng.keys["q:sales"], eng.config, T0 + 170 * SEC)
    # available 60 s, busy 60 s, acw open 20 s (150..170); paused does not count: (60 + 20) / (60 + 60 + 20)
    assert r["windows"]["5m"]["kpis"]["occupancy_ratio"] == pytest.approx(80 / 140)
    assert r["windows"]["5m"]["counts"]["agent_ms:available"] == 60_000  # split over minutes 0 and 1, summed
    assert r["live"]["agents"] == {"available": 0, "on_call": 0, "acw": 1, "paused": 1}


def test_old_minutes_are_pruned_behind_the_watermark():
    eng = engine()
    apply_facts(eng, "q:sales", "b1", 0, [F("entered", 0)])
    apply_facts(eng, "q:sales", "b1", 1, [F("entered", RETENTION_MS / SEC + 60)])
    state = eng.keys["q:sales"]
    assert T0 in state.minutes  # pruning happens at checkpoints
    eng.settle(state)
    assert T0 not in state.minutes and T0 in state.deleted_minutes
    assert state.totals["entered"] == 2  # cumulative counters keep everything


def test_merged_states_add_up():
    eng = engine()
    apply_facts(eng, "q:a", "b1", 0, [F("answered", 1, "q:a", wait_ms=5_000)])
    apply_facts(
        eng,
        "q:b",
        "b1",
        0,
        [
            F("abandoned", 2, "q:b", wait_ms=30_000),
            Fact("live", "q:b", T0, "l", "c1", status="waiting", since_ms=T0),
        ],
    )
    merged = merge_states([eng.keys["q:a"], eng.keys["q:b"]], "q:_other")
    r = read_key(merged, eng.config, T0 + 59 * SEC)
    assert r["windows"]["5m"]["kpis"]["offered_calls"] == 2.0
    assert r["windows"]["5m"]["kpis"]["longest_wait_seconds"] == 30.0
    assert r["live"]["calls_waiting"] == 1
    assert merged.totals == {
        "answered": 1,
        "wait_answered_ms": 5_000,
        "answered_within_sl": 1,
        "abandoned": 1,
        "wait_abandoned_ms": 30_000,
    }


def test_histogram_bounds_include_every_threshold():
    cfg = KpiConfig(
        targets=TargetsConfig(QueueTargets(), {"vip": QueueTargets(sl_threshold_s=7, short_abandon_s=3)})
    )
    assert {3, 7, 10, 20} <= set(cfg.wait_bounds_s)


def test_a_replay_after_a_partial_checkpoint_adds_only_to_the_minutes_that_lack_it():
    # Facts message 7 touched minutes 0 and 1; a checkpoint cut short persisted minute 1 (holding message 7)
    # but neither minute 0 nor the key state. Replaying message 7 must add to minute 0 only.
    eng = engine()
    facts = [F("entered", 10), F("entered", 70)]
    apply_facts(eng, "q:sales", "b1", 3, facts, seq=7)
    persisted_minute_1 = dict(eng.keys["q:sales"].minutes[T0 + 60 * SEC])
    fresh = engine()
    fresh.state("q:sales").minutes[T0 + 60 * SEC] = {"c": dict(persisted_minute_1["c"]), "w": {}, "h": 7}
    assert apply_facts(fresh, "q:sales", "b1", 3, facts, seq=7)
    minutes = fresh.keys["q:sales"].minutes
    assert minutes[T0]["c"] == {"entered": 1} and minutes[T0 + 60 * SEC]["c"] == {"entered": 1}
    assert fresh.keys["q:sales"].totals["entered"] == 2


def test_several_facts_of_one_message_in_one_minute_all_count():
    eng = engine()
    apply_facts(
        eng, "q:sales", "b1", 3, [F("entered", 1), F("answered", 5, wait_ms=4_000), F("entered", 9)], seq=11
    )
    apply_facts(
        eng, "q:sales", "b2", 8, [F("entered", 20)], seq=11
    )  # another group of the same facts message
    assert read(eng)["counts"]["entered"] == 3 and read(eng)["counts"]["answered"] == 1
    apply_facts(eng, "q:sales", "b1", 4, [F("entered", 30)], seq=12)
    assert read(eng)["counts"]["entered"] == 4


def agent_time(since_sec, until_sec, status="available", sign=1):
    return Fact(
        "agent_time",
        "q:sales",
        T0 + until_sec * SEC,
        f"t:{since_sec}",
        agent="a",
        status=status,
        since_ms=T0 + since_sec * SEC,
        sign=sign,
    )


HOUR = 3600


def test_a_long_agent_interval_adds_its_whole_minutes_as_one_span():
    # An agent left available overnight: 00:00:30 .. 10:00:20. Whole minutes 00:01 .. 10:00 (599 of them) are
    # one span; 30 s go to minute 00:00 and 20 s to minute 10:00, the only two minutes written.
    eng = engine()
    apply_facts(eng, "q:sales", "b1", 0, [agent_time(30, 10 * HOUR + 20)], seq=1)
    state = eng.keys["q:sales"]
    assert state.dirty_minutes == {T0, T0 + 10 * HOUR * SEC}
    assert state.spans == {f"available|{T0 + 60 * SEC}|{T0 + 10 * HOUR * SEC}": 1}
    now = 10 * HOUR + 20
    # 5m = [09:56, 10:01): 4 whole minutes + 20 s; 1h = [09:01, 10:01): 59 minutes + 20 s;
    # today = [00:00, 10:01): 30 s + 599 minutes + 20 s = the whole interval, 36,000 - 30 + 20 s
    assert read(eng, now_sec=now)["counts"]["agent_ms:available"] == 260_000
    assert read(eng, now_sec=now, window="1h")["counts"]["agent_ms:available"] == 3_560_000
    assert read(eng, now_sec=now, window="today")["counts"]["agent_ms:available"] == 35_990_000
    # a window before the interval's last minute: 5m at 05:00:00 = [04:56, 05:01), 5 whole minutes
    assert read(eng, now_sec=5 * HOUR)["counts"]["agent_ms:available"] == 300_000


def test_an_interval_of_59_whole_minutes_stays_in_minutes():
    eng = engine()
    apply_facts(eng, "q:sales", "b1", 0, [agent_time(30, 60 * 60 + 10)], seq=1)  # 00:00:30 .. 01:00:10
    state = eng.keys["q:sales"]
    assert state.spans == {}
    assert len(state.dirty_minutes) == 61  # 00:00 .. 01:00
    assert read(eng, now_sec=3610, window="today")["counts"]["agent_ms:available"] == 3_580_000


def test_a_retracted_span_is_gone_and_a_span_survives_snapshot_and_merge():
    eng = engine()
    apply_facts(eng, "q:sales", "b1", 0, [agent_time(0, 2 * HOUR)], seq=1)
    state = eng.keys["q:sales"]
    restored = KeyState.restore("q:sales", state.snapshot(), dict(state.minutes))
    assert restored.spans == {f"available|{T0}|{T0 + 2 * HOUR * SEC}": 1}
    merged = merge_states([state, restored], "q:_other")
    # 1h window at 02:00:00 = [01:01, 02:01): 59 minutes of the span, twice
    assert (
        read_key(merged, eng.config, T0 + 2 * HOUR * SEC)["windows"]["1h"]["counts"]["agent_ms:available"]
        == 2 * 59 * 60_000
    )
    apply_facts(eng, "q:sales", "b1", 1, [agent_time(0, 2 * HOUR, sign=-1)], seq=2)
    assert state.spans == {}
    assert "agent_ms:available" not in read(eng, now_sec=2 * HOUR, window="today")["counts"]


def test_pruning_trims_a_span_to_the_minutes_a_minute_bucket_would_keep():
    eng = engine()
    apply_facts(eng, "q:sales", "b1", 0, [agent_time(0, 10 * HOUR)], seq=1)  # whole minutes 00:00 .. 10:00
    # the watermark moves to RETENTION + 5 h + 30 s: minutes before 05:00:30 go, so the span keeps 05:01 .. 10:00
    apply_facts(eng, "q:sales", "b1", 1, [F("entered", RETENTION_MS // SEC + 5 * HOUR + 30)], seq=2)
    state = eng.keys["q:sales"]
    eng.settle(state)
    assert state.spans == {f"available|{T0 + (5 * HOUR + 60) * SEC}|{T0 + 10 * HOUR * SEC}": 1}
    # a span wholly behind the horizon is dropped
    apply_facts(eng, "q:sales", "b1", 2, [F("entered", RETENTION_MS // SEC + 11 * HOUR)], seq=3)
    eng.settle(state)
    assert state.spans == {}


def test_peaks_per_interval_see_what_scrapes_miss():
    # interval 15 min from midnight (T0). Waiting: c1 0:10-0:40 (answered), c2 0:20-0:50 (answered), c3 0:30-1:40
    # (abandoned); at 0:30 all three wait: peak 3 in [0, 15 min). c1 talks 0:40-3:20 (completed): peak 1.
    # c4 waits since 15:00 (live): 1 in [15, 30 min); c5 talks since 16:40 (live): 1.
    eng = engine()
    m = 60
    apply_facts(
        eng,
        "q:sales",
        "b1",
        0,
        [
            F("answered", 40, wait_ms=30 * SEC, call="c1"),
            F("answered", 50, wait_ms=30 * SEC, call="c2"),
            F("abandoned", 100, wait_ms=70 * SEC, call="c3"),
            F("completed", 200, talk_ms=160 * SEC, call="c1"),
            Fact(
                "live", "q:sales", T0 + 15 * m * SEC, "l4", "c4", status="waiting", since_ms=T0 + 15 * m * SEC
            ),
            Fact("live", "q:sales", T0 + 1000 * SEC, "l5", "c5", status="talking", since_ms=T0 + 1000 * SEC),
        ],
    )
    rows = read_peaks(eng.keys["q:sales"], eng.config, T0 + 1100 * SEC)
    assert [(r["waiting"], r["talking"], r["offered"]) for r in rows] == [(3, 1, 3), (1, 1, 0)]
    assert (rows[0]["start_ms"], rows[1]["end_ms"]) == (T0, T0 + 1140 * SEC)  # up to the current minute's end
    # a correction takes back its change: c3 was not abandoned (retracted): at most 2 wait at once
    apply_facts(eng, "q:sales", "b1", 1, [F("abandoned", 100, wait_ms=70 * SEC, call="c3", sign=-1)])
    assert read_peaks(eng.keys["q:sales"], eng.config, T0 + 1100 * SEC)[0]["waiting"] == 2


@pytest.mark.parametrize(("tz", "hour"), [("UTC", 9), ("Asia/Kolkata", 14)])
def test_volume_by_weekday_and_hour_keeps_minutes_past_their_retention(tz, hour):
    # 2026-01-01 is a Thursday. Three calls answered at 09:10 UTC (14:40 in Kolkata, UTC+5:30), then a call 60 h
    # later (Saturday 21:10 UTC): the first minute passes the 50 h retention and is folded into its local hour.
    eng = KpiEngine(KpiConfig(targets=TargetsConfig(), windows=WindowSpec(tz=tz), call_timeout_ms=3600 * SEC))
    at = 9 * 3600 + 600
    apply_facts(eng, "q:sales", "b1", 0, [F("answered", at, wait_ms=5 * SEC, call=f"c{i}") for i in range(3)])
    apply_facts(eng, "q:sales", "b1", 1, [F("abandoned", at + 60 * 3600, wait_ms=40 * SEC, call="c9")])
    state = eng.keys["q:sales"]
    eng.settle(state)
    eng.settle(state)  # folding again (as after a checkpoint cut short) counts once
    assert T0 + at * SEC - (at % 60) * SEC not in state.minutes and len(state.hours) == 1
    data = read_volume(state, eng.config, T0 + (at + 60 * 3600) * SEC, weeks=1)
    answered, abandoned = data["counts"]["answered"], data["counts"]["abandoned"]
    assert answered[3][hour] == 3 and sum(map(sum, answered)) == 3  # Thursday (3)
    saturday_hour = 21 if tz == "UTC" else 2  # Saturday 21:10 UTC is Sunday 02:40 in Kolkata
    day = 5 if tz == "UTC" else 6
    assert abandoned[day][saturday_hour] == 1 and sum(map(sum, abandoned)) == 1
    # the range starts at the queue's first fact's local hour: Thursday, Friday, Saturday (and Sunday in Kolkata)
    assert data["days"] == ([0, 0, 0, 1, 1, 1, 0] if tz == "UTC" else [0, 0, 0, 1, 1, 1, 1])
