"""The expected wait: each estimator's formula on values worked out by hand, the rates over a window of stints,
the announcement made at entry and its score when the caller leaves, corrections, groups, positions."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams import ewt
from streams.config import QueueTargets, TargetsConfig
from streams.facts import Fact, live_fact, to_wire
from streams.kpi import KpiConfig, KpiEngine, read_scores

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def union_and_sum(pieces, lo, hi):
    """Of intervals [a, b) clipped to [lo, hi): the length of their union and the sum of their lengths, by a
    plain scan (the reference the engine's index is checked against)."""
    clipped = sorted((max(a, lo), min(b, hi)) for a, b in pieces if a < hi and b > lo)
    union = total = 0
    end = lo
    for a, b in clipped:
        if b <= a:
            continue
        total += b - a
        if b > end:
            union += b - max(a, end)
            end = b
    return union, total


SEC = 1000


def test_holdtime_is_asterisks_exponential_average_in_answer_order():
    assert ewt.holdtime([]) is None
    # the first answered wait sets it; then new = (3 x old + last) / 4
    assert ewt.holdtime([(1, 20_000)]) == 20_000
    assert ewt.holdtime([(1, 20_000), (2, 40_000)]) == 25_000  # (60 + 40) / 4
    assert ewt.holdtime([(1, 20_000), (2, 40_000), (3, 10_000)]) == 21_250  # (75 + 10) / 4


def test_the_queue_length_wait_sums_the_rates_of_moving_up_one_place():
    # R = 1 answer a minute, theta = 1 abandon per 2 minutes waited; 2 ahead: 60 + 40 + 30 s
    r, theta = 1 / 60_000, 1 / 120_000
    assert ewt.queue_length_wait(2, r, theta) == pytest.approx(130_000)
    assert ewt.queue_length_wait(2, r, 0.0) == pytest.approx(180_000)  # (n + 1) / R
    assert ewt.queue_length_wait(0, r, theta) == pytest.approx(60_000)


def test_each_estimator_from_one_view():
    view = ewt.ScopeView(
        answers=[(1, 20_000), (2, 40_000)],
        head_wait_ms=33_000,
        rate_per_ms=1 / 60_000,
        theta_per_ms=1 / 120_000,
    )
    got = ewt.estimates(view, ahead=2, waited_ms=5_000)
    assert got == {
        "asterisk": 20_000,  # holdtime 25 s minus the 5 s waited
        "les": 35_000,  # the last answered wait, 40 s, minus 5 s
        "hol": 33_000,
        "ql": pytest.approx(180_000),
        "qlm": pytest.approx(130_000),
        "best": pytest.approx(130_000),  # qlm until enough calls are scored
    }
    # R not known: the queue-length estimators say what Asterisk does; nothing answered yet: None
    assert ewt.estimates(view._replace(rate_per_ms=None), 2)["qlm"] == 25_000
    assert ewt.estimates(ewt.ScopeView([], 0, None, 0.0), 0) == {
        "asterisk": None,
        "les": None,
        "hol": 0.0,
        "ql": None,
        "qlm": None,
        "best": None,
    }
    # an empty line: the mean wait of the callers who found it empty, when it is known
    empty = view._replace(empty_line_wait_ms=4_000)
    assert ewt.estimates(empty, 0, line_empty=True)["qlm"] == 4_000
    assert ewt.estimates(empty, 0, line_empty=False)["qlm"] == pytest.approx(60_000)


def test_union_and_sum_of_clipped_intervals():
    pieces = [(0, 10), (5, 20), (30, 40), (35, 36), (50, 70)]
    # clipped to [2, 60): [2,10) [5,20) [30,40) [35,36) [50,60): union 18 + 10 + 10 = 38; sum 8+15+10+1+10 = 44
    assert union_and_sum(pieces, 2, 60) == (38, 44)
    assert union_and_sum([], 0, 10) == (0, 0)


def test_best_is_the_lowest_rmse_once_enough_calls_are_scored():
    totals = {ewt.scored("qlm"): 49, ewt.error_squares("qlm"): 900, ewt.error_squares("hol"): 100}
    assert ewt.best_of(totals) == "qlm"  # 49 < 50 scored
    totals[ewt.scored("qlm")] = 50
    for name in ewt.BASE_ESTIMATORS:
        totals.setdefault(ewt.error_squares(name), 1_000)
    assert ewt.best_of(totals) == "hol"


def test_accuracy_in_seconds_from_the_counters():
    # two answered calls, errors +3 s and -7 s (30 and -70 tenths): mean -2 s, RMSE sqrt((9 + 49) / 2)
    counts = {
        ewt.scored("qlm"): 2,
        ewt.error_sum("qlm"): -40,
        ewt.error_squares("qlm"): 900 + 4900,
        ewt.censored("qlm"): 3,
        ewt.censored_over("qlm"): 1,
    }
    acc = ewt.accuracy(counts)
    assert acc["qlm"] == {
        "answered": 2,
        "rmse_seconds": round(29**0.5, 3),
        "mean_error_seconds": -2.0,
        "abandoned": 3,
        "abandoned_after_announced": 1,
    }
    assert acc["asterisk"]["rmse_seconds"] is None


# -- in the engine ------------------------------------------------------------------------------------------


def engine(**queues):
    targets = TargetsConfig(queues={q: QueueTargets(group=g) for q, g in queues.items()})
    return KpiEngine(KpiConfig(targets=targets, call_timeout_ms=3600 * SEC))


def send(eng, key, off, *facts):
    eng.apply_wire(key, "b1", off, [to_wire(f) for f in facts])


def enter(call, sec, key="q:sales", priority=0):
    ts = T0 + sec * SEC
    return live_fact(key, ts, call, "waiting", ts, "", priority)


def leave(kind, call, sec, wait_s, key="q:sales", sign=1):
    """The stint's exit and the retraction of its live value (as the sessionizer sends them)."""
    ts = T0 + sec * SEC
    entered = ts - wait_s * SEC
    return (
        Fact(kind, key, ts, f"{kind}:{call}", call, wait_ms=wait_s * SEC, sign=sign),
        live_fact(key, entered, call, "waiting", entered).retraction(),
    )


def told(eng, call, key="q:sales"):
    """A waiting caller's announcements, in seconds."""
    entry = eng.keys[key].told[call]
    return dict(zip(ewt.ESTIMATORS, [v / 1000 if v >= 0 else None for v in entry[5:]], strict=True))


def test_a_caller_is_told_at_entry_and_scored_when_answered():
    eng = engine()
    # c1 waits 0-20 s and c2 10-50 s, both answered; c3 enters at 60 s. Over the hour before 60 s:
    # someone waited 0-50 s (busy 50 s); 2 answers -> R = 2 / 50 s; waited 20 + 40 = 60 s, no abandon: theta 0.
    send(eng, "q:sales", 0, enter("c1", 0))
    send(eng, "q:sales", 1, enter("c2", 10))
    send(eng, "q:sales", 2, *leave("answered", "c1", 20, 20))
    send(eng, "q:sales", 3, *leave("answered", "c2", 50, 40))
    send(eng, "q:sales", 4, enter("c3", 60))
    # holdtime: 20 then (60 + 40) / 4 = 25 s; les 40 s; hol 0 (c3 is alone, at its entry); the line is empty,
    # and fewer than 10 callers found it empty: ql and qlm from R: 1 / R = 25 s
    assert told(eng, "c3") == {
        "asterisk": 25.0,
        "les": 40.0,
        "hol": 0.0,
        "ql": 25.0,
        "qlm": 25.0,
        "best": 25.0,
    }
    # c1 was told nothing useful: no answer yet (asterisk, les None), R unknown (ql, qlm fall back to None)
    send(eng, "q:sales", 5, *leave("answered", "c3", 90, 30))
    totals = eng.keys["q:sales"].totals
    # c1 (told asterisk None -> 0, waited 20: -20 s), c2 (entered at 10: holdtime 0? no answer yet: None -> 0,
    # waited 40: -40 s), c3 (told 25, waited 30: -5 s): asterisk errors -20, -40, -5
    assert totals[ewt.scored("asterisk")] == 3
    assert totals[ewt.error_sum("asterisk")] == -650  # tenths of a second
    assert totals[ewt.error_squares("asterisk")] == 200**2 + 400**2 + 50**2
    # hol: c1 told 0 (alone), c2 told 10 (c1 had waited 10 s), c3 told 0: errors -20, -30, -30
    assert totals[ewt.error_sum("hol")] == -800
    assert eng.keys["q:sales"].told["c3"][1] == T0 + 90 * SEC  # scored at 90 s, kept for a correction


def test_a_correction_takes_back_exactly_what_was_scored():
    eng = engine()
    send(eng, "q:sales", 0, enter("c1", 0))
    send(eng, "q:sales", 1, *leave("answered", "c1", 20, 20))
    send(eng, "q:sales", 2, enter("c2", 30))
    before = dict(eng.keys["q:sales"].totals)
    send(eng, "q:sales", 3, *leave("answered", "c2", 45, 15))
    # a late event: c2 was not answered at 45 s but abandoned at 45 s (the sessionizer retracts and corrects)
    answered, _live = leave("answered", "c2", 45, 15, sign=-1)
    abandoned, _ = leave("abandoned", "c2", 45, 15)
    send(eng, "q:sales", 4, answered, abandoned)
    totals = eng.keys["q:sales"].totals
    for name in ewt.ESTIMATORS:
        assert totals.get(ewt.scored(name), 0) == before.get(ewt.scored(name), 0) == 1
        assert totals.get(ewt.error_squares(name), 0) == before.get(ewt.error_squares(name), 0)
        assert totals[ewt.censored(name)] == 1
    # c2 was told 20 s by asterisk (holdtime of c1's 20 s) and waited 15 s before hanging up: not longer
    assert totals.get(ewt.censored_over("asterisk"), 0) == 0
    assert eng.keys["q:sales"].answers == [[T0 + 20 * SEC, 20 * SEC]]


def test_abandons_set_theta_and_time_without_callers_is_not_busy():
    eng = engine()
    # 0-30 s: c1 waits and is answered; 30-100 s nobody waits; 100-160 s c2 waits and abandons, c3 waits
    # 100-140 s and is answered. At 200 s: busy = 30 + 60 = 90 s, answers 2 -> R = 2 / 90 s;
    # waited 30 + 60 + 40 = 130 s, 1 abandon -> theta = 1 / 130 s.
    send(eng, "q:sales", 0, enter("c1", 0))
    send(eng, "q:sales", 1, *leave("answered", "c1", 30, 30))
    send(eng, "q:sales", 2, enter("c2", 100), enter("c3", 100))
    send(eng, "q:sales", 3, *leave("answered", "c3", 140, 40))
    send(eng, "q:sales", 4, *leave("abandoned", "c2", 160, 60))
    # c4 and c5 enter at 200 s and 201 s: c5 has one ahead (c4, still waiting 1 s: busy 91 s, waited 131 s)
    send(eng, "q:sales", 5, enter("c4", 200))
    send(eng, "q:sales", 6, enter("c5", 201))
    r, theta = 2 / 91_000, 1 / 131_000
    assert told(eng, "c5")["qlm"] == pytest.approx(round(1 / r + 1 / (r + theta)) / 1000)
    assert told(eng, "c5")["ql"] == pytest.approx(round(2 / r) / 1000)
    # an answer without a wait (an agent was free) does not count in R
    send(eng, "q:sales", 7, enter("c6", 202), *leave("answered", "c6", 202, 0))
    assert eng.expected_wait(eng.keys["q:sales"], T0 + 202 * SEC)["estimates"]["ql"] == pytest.approx(
        3 / (2 / 92_000)  # c4 waiting since 200 s: busy 30 + 60 + 2 s; c4 and c5 ahead of a new caller
    )


def test_a_group_counts_every_caller_ahead_over_its_queues_by_priority():
    eng = engine(sales="front", support="front", billing="")
    send(eng, "q:sales", 0, enter("s1", 0, priority=0))
    send(eng, "q:support", 0, enter("u1", 5, "q:support", priority=2))
    send(eng, "q:support", 1, enter("u2", 6, "q:support", priority=0))
    send(eng, "q:billing", 0, enter("b1", 1, "q:billing", priority=5))
    sales = eng.keys["q:sales"]
    # a new sales caller of priority 0 has all three of the group ahead (billing is in no group)
    assert eng.expected_wait(sales, T0 + 10 * SEC)["ahead"] == 3
    assert eng.expected_wait(sales, T0 + 10 * SEC, priority=1)["ahead"] == 1  # only u1 (priority 2)
    # s1, first of sales' line: u1 is ahead of it (higher priority), u2 is not (entered later)
    found = eng.expected_wait(sales, T0 + 10 * SEC, position=1)
    assert (found["ahead"], found["waited_ms"]) == (1, 10 * SEC)
    with pytest.raises(LookupError, match="no caller waits at position 2 in sales"):
        eng.expected_wait(sales, T0 + 10 * SEC, position=2)
    assert eng.expected_wait(eng.keys["q:billing"], T0 + 10 * SEC)["ahead"] == 1


def test_the_scores_are_counted_in_the_window_of_the_exit():
    eng = engine()
    send(eng, "q:sales", 0, enter("c1", 0))
    send(eng, "q:sales", 1, *leave("answered", "c1", 20, 20))
    minute = eng.keys["q:sales"].minutes[T0]
    assert minute["e"][ewt.scored("qlm")] == 1 and minute["e"][ewt.error_sum("qlm")] == -200
    assert not any(name.startswith("ewt_") for name in minute["c"])  # apart from the KPIs' counters
    scores = read_scores(eng.keys["q:sales"], eng.config, T0 + 30 * SEC)
    assert ewt.accuracy(scores["5m"])["qlm"]["mean_error_seconds"] == -20.0
    assert scores["today"] == scores["5m"] and ewt.accuracy(scores["interval"])["qlm"]["answered"] == 1


@given(
    st.lists(
        st.tuples(st.integers(0, 500), st.integers(0, 60), st.integers(0, 3), st.integers(0, 1)),
        max_size=40,
    ),
    st.integers(0, 600),
    st.integers(0, 600),
)
@settings(max_examples=300, deadline=None)
def test_the_scope_line_answers_as_a_scan_of_every_stint(raw, lo, span):
    stints = [(start + wait, start, outcome, empty) for start, wait, outcome, empty in raw]
    line = ewt.ScopeLine()
    for stint in stints:  # in any order: the line keeps end order itself
        line.add(*stint)
    hi = lo + span
    ended = [s for s in stints if lo < s[0] <= hi]
    assert line.window(lo, hi) == (
        sum(e - s for e, s, _o, _m in ended),
        sum(1 for _e, _s, o, _m in ended if o == 0),
        sum(1 for _e, _s, o, _m in ended if o == 1),
        sum(1 for _e, _s, o, m in ended if m and o in (0, 3)),
        sum(e - s for e, s, o, m in ended if m and o == 0),
    )
    assert line.busy(lo, hi) == union_and_sum([(s, e) for e, s, _o, _m in stints], lo, hi)[0]
    assert len(ewt.ScopeLine(stints)) == len(stints)
