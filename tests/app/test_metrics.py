"""The metrics collector: folding beyond CALLPULSE_MAX_QUEUES, durable counters, absent ratios, golden names."""

from prometheus_client import CollectorRegistry, generate_latest

from app.metrics import KpiCollector
from app.settings import Settings
from streams.facts import Fact, to_wire
from streams.kpi import KpiEngine


def apply_facts(engine, key, src, off, facts, seq=-1):
    """Apply facts as the aggregator receives them: in their wire form."""
    return engine.apply_wire(key, src, off, [to_wire(f) for f in facts], seq)


T0 = 1_767_225_600_000


def collector(max_queues: int):
    settings = Settings.from_env({"CALLPULSE_MAX_QUEUES": str(max_queues), "CALLPULSE_CALLER_KEY": "k"})
    engine = KpiEngine(settings.kpi)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(KpiCollector(lambda: engine, settings, lambda _e: T0 + 59_000))
    return engine, registry


def entered(engine, queue, sec, n=1):
    key = f"q:{queue}"
    apply_facts(
        engine, key, "b", sec, [Fact("entered", key, T0 + sec * 1000, f"e{queue}{i}") for i in range(n)]
    )
    state = engine.keys[key]
    engine.settle(state)
    state.exported = dict(state.hwm)  # as a durable checkpoint would


def test_queues_beyond_the_cap_fold_into_other_in_order_of_first_appearance():
    engine, registry = collector(max_queues=2)
    entered(engine, "zeta", 1, 2)  # first seen at 1 s
    entered(engine, "alpha", 2, 3)
    entered(engine, "mid", 3, 5)
    entered(engine, "late", 4, 7)
    value = registry.get_sample_value
    assert value("callpulse_calls_entered_total", {"queue": "zeta"}) == 2
    assert value("callpulse_calls_entered_total", {"queue": "alpha"}) == 3
    assert value("callpulse_calls_entered_total", {"queue": "mid"}) is None
    assert value("callpulse_calls_entered_total", {"queue": "_other"}) == 12  # mid 5 + late 7


def test_counters_export_the_durable_values_only():
    engine, registry = collector(max_queues=10)
    entered(engine, "q", 1, 2)
    apply_facts(engine, "q:q", "b", 9, [Fact("entered", "q:q", T0, "x")])  # applied, no checkpoint yet
    assert registry.get_sample_value("callpulse_calls_entered_total", {"queue": "q"}) == 2
    assert registry.get_sample_value("callpulse_offered_calls", {"queue": "q", "window": "5m"}) == 0.0


def test_every_family_of_the_design_is_exposed_with_its_labels():
    engine, registry = collector(max_queues=10)
    entered(engine, "q", 1)
    apply_facts(engine, "c:k", "b", 2, [Fact("attempt", "c:k", T0, "a")])
    engine.settle(engine.keys["c:k"])
    engine.keys["c:k"].exported = dict(engine.keys["c:k"].hwm)
    text = generate_latest(registry).decode()
    names = {
        line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")
    }
    expected = {
        "callpulse_calls_entered_total",
        "callpulse_calls_offered_total",
        "callpulse_calls_answered_total",
        "callpulse_calls_abandoned_total",
        "callpulse_calls_short_abandoned_total",
        "callpulse_calls_answered_within_sl_total",
        "callpulse_calls_abandoned_within_sl_total",
        "callpulse_calls_transferred_total",
        "callpulse_calls_completed_total",
        "callpulse_calls_expired_total",
        "callpulse_calls_exited_total",
        "callpulse_calls_refused_total",
        "callpulse_agent_missed_total",
        "callpulse_ring_abandoned_total",
        "callpulse_holds_total",
        "callpulse_outbound_attempts_total",
        "callpulse_outbound_connected_total",
        "callpulse_outbound_contacts_total",
        "callpulse_outbound_conversions_total",
        "callpulse_survey_responses_total",
        "callpulse_queue_wait_seconds_bucket",
        "callpulse_queue_wait_seconds_sum",
        "callpulse_queue_wait_seconds_count",
        "callpulse_talk_seconds_bucket",
        "callpulse_handle_seconds_bucket",
        "callpulse_offered_calls",
        "callpulse_calls_waiting",
        "callpulse_oldest_wait_seconds",
        "callpulse_calls_waiting_over_sl",
        "callpulse_calls_talking",
        "callpulse_calls_on_hold",
        "callpulse_agents",
        "callpulse_sl_threshold_seconds",
        "callpulse_short_abandon_seconds",
        "callpulse_service_level_goal_ratio",
        "callpulse_abandonment_goal_ratio",
    }
    assert expected <= names, expected - names
    assert 'callpulse_queue_wait_seconds_bucket{le="20.0",outcome="answered",queue="q"} 0.0' in text
    assert 'callpulse_calls_exited_total{queue="q",reason="timeout"} 0.0' in text
    # a ratio without a denominator is absent, not 0 or 1; with one (1 attempt, 0 connected) it is 0
    assert "callpulse_service_level_ratio{" not in text
    assert 'callpulse_connection_ratio{campaign="k",window="5m"} 0.0' in text
