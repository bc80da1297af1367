"""The in-app abandonment spike: the binomial tail worked out by hand, the test against goal and recent level,
and the hysteresis."""

import pytest

from streams.alerts import MinuteCounts, SpikeRules, binomial_tail, spike_at, spike_state
from streams.config import QueueTargets, TargetsConfig
from streams.facts import Fact, to_wire
from streams.kpi import KpiConfig, KpiEngine, read_alerts

T0 = 1_767_225_600_000
MIN = 60_000


def test_the_binomial_tail_by_hand():
    # P(X >= 2 | 5, 0.05) = 1 - 0.95^5 - 5 x 0.05 x 0.95^4 = 1 - 0.7737809375 - 0.2036265625
    assert binomial_tail(2, 5, 0.05) == pytest.approx(0.0225925, rel=1e-9)
    # P(X >= 3 | 10, 0.1) = 1 - (0.9^10 + 10 x 0.1 x 0.9^9 + 45 x 0.01 x 0.9^8)
    assert binomial_tail(3, 10, 0.1) == pytest.approx(
        1 - (0.3486784401 + 0.387420489 + 0.1937102445), rel=1e-9
    )
    assert binomial_tail(0, 10, 0.1) == 1.0 and binomial_tail(11, 10, 0.1) == 0.0
    assert binomial_tail(20, 20, 0.05) == pytest.approx(0.05**20)


ONE = SpikeRules(window_min=1, baseline_min=0, lookback=5)


def test_two_of_five_do_not_page_and_the_alert_holds_below_the_looser_bar_then_clears():
    minutes = [
        MinuteCounts(5, 2),  # 0.0226: not below 1 %: no alert (2 of 5 do not page)
        MinuteCounts(20, 20),  # 0.05^20: below 1 %: the alert starts here
        MinuteCounts(5, 2),  # 0.0226 < 10 %: it holds
        MinuteCounts(10, 3),  # 1 - (0.95^10 + 0.5 x 0.95^9 + 0.1125 x 0.95^8) = 0.0115 < 10 %: it holds
        MinuteCounts(10, 1),  # 1 - 0.95^10 = 0.40: it clears
        MinuteCounts(10, 0),
    ]
    states = [spike_state(minutes[: i + 1], 0.05, ONE) for i in range(len(minutes))]
    assert [s[0] if s else None for s in states] == [None, 1, 1, 1, None, None]
    assert states[3][1].p_value == pytest.approx(1 - (0.95**10 + 0.5 * 0.95**9 + 0.1125 * 0.95**8))


def test_the_threshold_is_the_higher_of_the_goal_and_the_queue_s_own_recent_level():
    rules = SpikeRules(window_min=1, baseline_min=2, min_baseline=20, lookback=0)
    # the two minutes before: 12 of 40 abandoned (30 %); the window: 3 of 10 is that level, no spike
    minutes = [MinuteCounts(20, 6), MinuteCounts(20, 6), MinuteCounts(10, 3)]
    spike = spike_at(minutes, 2, 0.05, rules)
    assert (spike.threshold, spike.p_value) == (0.3, 1.0)
    # too few calls before (10 < 20): the goal alone
    assert spike_at([MinuteCounts(10, 3), MinuteCounts(10, 3)], 1, 0.05, rules).threshold == 0.05


def test_the_engine_reads_a_spike_from_a_queue_s_minutes():
    eng = KpiEngine(
        KpiConfig(targets=TargetsConfig(QueueTargets(abandon_goal=0.05)), call_timeout_ms=3_600_000)
    )
    # 20 callers abandon sales at 10:05 after 30 s each (short abandons are under 10 s): 20 of 20
    facts = [
        Fact("abandoned", "q:sales", T0 + 10 * 60 * MIN + 5 * MIN, f"ab{i}", f"c{i}", wait_ms=30_000)
        for i in range(20)
    ]
    eng.apply_wire("q:sales", "b1", 0, [to_wire(f) for f in facts])
    state = eng.keys["q:sales"]
    active = read_alerts(state, eng.config, T0 + 10 * 60 * MIN + 6 * MIN)
    assert active["abandonment_spike"]["since_ms"] == T0 + 10 * 60 * MIN + 5 * MIN
    assert (active["abandonment_spike"]["offered"], active["abandonment_spike"]["abandoned"]) == (20, 20)
    # 40 minutes later the 15-minute window holds nothing: no alert
    assert read_alerts(state, eng.config, T0 + 10 * 60 * MIN + 45 * MIN) == {}
