"""Prometheus exposure (DESIGN 5): a scrape-time collector over the KPI engine, plus the pipeline's counters.

The collector reads only what this worker's engine holds, which is only the partitions it actively owns,
so ``sum by (queue)`` over workers is exact. Keys beyond CALLPULSE_MAX_QUEUES (per kind, in order of first
appearance) fold into ``_other``. Counters and histograms come from the last durable checkpoint (at most
CALLPULSE_CHECKPOINT_INTERVAL behind), so a restarted worker never exports a value below one already
scraped; windowed and live gauges come from the working state. Every family is built fresh at each scrape: vanished queues stop being
exported and concurrent scrapes cannot race.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from app.settings import Settings
from streams import counters, ewt
from streams.alerts import ABANDONMENT_SPIKE
from streams.events import (
    EVENT_TYPES,
    EXIT_REASONS,
    IMPLICIT_EXIT_REASONS,
    REFUSED_REASONS,
    REJECTION_REASONS,
)
from streams.kpi import (
    AGENT_MEMBER_STATES,
    SURVEY_BANDS,
    TALK_BOUNDS_S,
    KeyState,
    KpiEngine,
    merge_states,
    read_agent,
    read_alerts,
    read_key,
)
from streams.sessions.inbound import TRANSITIONS

OTHER = "_other"
#: The in-app alerts (``callpulse_alert_active``).
ALERTS = (ABANDONMENT_SPIKE,)

#: Counter series per queue: metric name (without _total) -> total name in the engine.
QUEUE_COUNTERS = {
    "callpulse_calls_entered": ("entered", "Calls that entered the queue (E), at enqueue time."),
    "callpulse_calls_offered": ("offered", "Stints that left the queue: answered + abandoned + exited (O)."),
    "callpulse_calls_answered": ("answered", "Calls answered from the queue (A), at answer time."),
    "callpulse_calls_abandoned": ("abandoned", "Callers who hung up while queued (Ab)."),
    "callpulse_calls_short_abandoned": (
        "short_abandoned",
        "Abandons with a wait below the short-abandon threshold S (Ab_s).",
    ),
    "callpulse_calls_answered_within_sl": (
        "answered_within_sl",
        "Calls answered with a wait <= the SL threshold T.",
    ),
    "callpulse_calls_abandoned_within_sl": (
        "abandoned_within_sl",
        "Abandons with a wait <= the SL threshold T.",
    ),
    "callpulse_calls_transferred": (
        "transferred",
        "Answered stints that ended in a transfer, at transfer time.",
    ),
    "callpulse_calls_completed": ("completed", "Handled stints (talk ended), at the end of talk or wrap-up."),
    "callpulse_calls_expired": ("expired", "Calls closed after CALLPULSE_CALL_TIMEOUT without an event."),
    "callpulse_agent_missed": (
        "agent_missed",
        "Rings an agent let run to the ring timeout without answering.",
    ),
    "callpulse_ring_abandoned": (
        "ring_abandoned",
        "Rings ended by the caller hanging up while the agent's phone rang (not held against the agent).",
    ),
    "callpulse_holds": ("holds", "Holds of completed calls."),
    "callpulse_repeat_calls": (
        "repeat",
        "Calls whose caller had another call answered in the queue within CALLPULSE_REPEAT_WINDOW.",
    ),
    "callpulse_abandons_recovered": (
        "abandon_recovered",
        "Abandons (wait >= S) whose caller reached an agent within CALLPULSE_RECOVERY_WINDOW, at that time.",
    ),
    "callpulse_abandons_unrecovered": (
        "abandon_unrecovered",
        "Abandons (wait >= S) whose caller did not reach an agent within CALLPULSE_RECOVERY_WINDOW, at its end.",
    ),
}
CAMPAIGN_COUNTERS = {
    "callpulse_outbound_attempts": ("attempt", "Outbound dial attempts."),
    "callpulse_outbound_connected": (
        "connected",
        "Outbound attempts answered (connected, machines included).",
    ),
    "callpulse_outbound_contacts": ("contact", "Outbound attempts that reached a live person (contact)."),
    "callpulse_outbound_conversions": ("conversion", "Outbound attempts with disposition success."),
}
#: Windowed gauges: metric name -> (kpi name, kind of key it applies to, help).
WINDOW_GAUGES = {
    "callpulse_abandonment_ratio": ("abandonment_ratio", "queue", "(Ab - Ab_s) / (O - Ab_s) in the window."),
    "callpulse_service_level_ratio": (
        "service_level_ratio",
        "queue",
        "A<=T / (A + Ab - Ab_s) in the window.",
    ),
    "callpulse_average_speed_of_answer_seconds": (
        "average_speed_of_answer_seconds",
        "queue",
        "Mean wait of answered calls.",
    ),
    "callpulse_average_abandon_wait_seconds": (
        "average_abandon_wait_seconds",
        "queue",
        "Mean wait of abandoned calls.",
    ),
    "callpulse_longest_wait_seconds": (
        "longest_wait_seconds",
        "queue",
        "Longest wait of the stints that left the queue.",
    ),
    "callpulse_average_handle_time_seconds": (
        "average_handle_time_seconds",
        "queue",
        "(talk + after-call work) / completed.",
    ),
    "callpulse_average_hold_seconds": ("average_hold_seconds", "queue", "Hold time / completed."),
    "callpulse_transfer_ratio": ("transfer_ratio", "queue", "Transferred / answered."),
    "callpulse_csat_ratio": ("csat_ratio", "queue", "CSAT responses scoring 4-5 / CSAT responses."),
    "callpulse_dsat_ratio": ("dsat_ratio", "queue", "CSAT responses scoring 1-2 / CSAT responses."),
    "callpulse_nps_score": ("nps_score", "queue", "(promoters - detractors) / NPS responses, -1..1."),
    "callpulse_offered_calls": ("offered_calls", "queue", "Offered calls O in the window."),
    "callpulse_occupancy_ratio": (
        "occupancy_ratio",
        "queue",
        "Agent time on calls or in wrap-up / time available, on calls or in wrap-up.",
    ),
    "callpulse_repeat_call_ratio": ("repeat_call_ratio", "queue", "Repeat calls / calls entered."),
    "callpulse_abandon_recovery_ratio": (
        "abandon_recovery_ratio",
        "queue",
        "Abandons recovered / abandons recovered or not (decided in the window).",
    ),
    "callpulse_connection_ratio": ("connection_ratio", "campaign", "Connected / attempts."),
    "callpulse_contact_ratio": ("contact_ratio", "campaign", "Contacts / attempts."),
    "callpulse_conversion_ratio": ("conversion_ratio", "campaign", "Conversions (success) / attempts."),
}
LIVE_GAUGES = {
    "callpulse_calls_waiting": ("calls_waiting", "Calls waiting in the queue now."),
    "callpulse_oldest_wait_seconds": (
        "oldest_wait_seconds",
        "Wait of the longest-waiting caller now (0 when none).",
    ),
    "callpulse_calls_waiting_over_sl": ("calls_waiting_over_sl", "Callers already waiting longer than T."),
    "callpulse_calls_talking": ("calls_talking", "Calls connected to an agent now."),
    "callpulse_calls_on_hold": ("calls_on_hold", "Calls on hold now."),
    "callpulse_callbacks_pending": (
        "callbacks_pending",
        "Callers on the callback list: abandoned (wait >= S), not reached by an agent since, within CALLPULSE_CALLBACK_TTL.",
    ),
}
CONFIG_GAUGES = {
    "callpulse_sl_threshold_seconds": ("sl_threshold_s", "Service-level threshold T of the queue."),
    "callpulse_short_abandon_seconds": ("short_abandon_s", "Short-abandon threshold S of the queue."),
    "callpulse_service_level_goal_ratio": ("sl_goal", "Service-level goal of the queue."),
    "callpulse_abandonment_goal_ratio": ("abandon_goal", "Abandonment goal of the queue."),
}
EXIT_LABELS = EXIT_REASONS + IMPLICIT_EXIT_REASONS


class PipelineCounters:
    """What the stages count about themselves (plain Prometheus counters)."""

    def __init__(
        self,
        events: Any,
        rejected: Any,
        duplicate: Any,
        late: Any,
        retracted: Any,
        unexpected: Any,
        agent_work_late: Any,
    ) -> None:
        self.events = events
        self.rejected = rejected
        self.duplicate = duplicate
        self.late = late
        self.retracted = retracted
        self.unexpected = unexpected
        self.agent_work_late = agent_work_late


def make_counters(registry: CollectorRegistry) -> PipelineCounters:
    """The pipeline's own counters, every label value pre-created at 0."""
    events = Counter("callpulse_events", "Valid events received, by type.", ["type"], registry=registry)
    rejected = Counter(
        "callpulse_events_rejected",
        "Events or messages sent to calls.deadletter, by reason.",
        ["reason"],
        registry=registry,
    )
    for t in sorted(EVENT_TYPES):
        events.labels(t)
    for r in REJECTION_REASONS:
        rejected.labels(r)
    duplicate = Counter(
        "callpulse_events_duplicate", "Valid events ignored as duplicates.", registry=registry
    )
    late = Counter("callpulse_events_late", "Valid events rejected as late or too_old.", registry=registry)
    retracted = Counter(
        "callpulse_facts_retracted",
        "Facts retracted by the sessionizer (a correction follows).",
        registry=registry,
    )
    unexpected = Counter(
        "callpulse_events_unexpected",
        "Call events that no transition of the call's state admits (ignored), by event type and call state.",
        ["type", "state"],
        registry=registry,
    )
    for state, admitted in TRANSITIONS.items():
        for t in sorted(EVENT_TYPES - set(admitted) - {"dial", "agent_state"}):
            unexpected.labels(t, state.value)
    agent_work_late = Counter(
        "callpulse_agent_work_late",
        "Work updates of a call that reached its agent's timeline after it had folded the time they change "
        "(CALLPULSE_AGENT_HISTORY): only what follows is changed.",
        registry=registry,
    )
    return PipelineCounters(events, rejected, duplicate, late, retracted, unexpected, agent_work_late)


def first_seen(engine: KpiEngine, prefix: str) -> list[KeyState]:
    """The keys of one kind (``q:``, ``c:``, ``a:``) that hold facts, first seen first."""
    return sorted(
        (s for k, s in engine.keys.items() if k.startswith(prefix) and s.first),
        key=lambda s: (s.first, s.key),
    )


def exported_states(engine: KpiEngine, max_keys: int) -> list[KeyState]:
    """The keys to export, the ones beyond ``max_keys`` per kind folded into ``q:_other`` / ``c:_other``."""
    out: list[KeyState] = []
    for prefix in ("q:", "c:"):
        states = first_seen(engine, prefix)
        out.extend(states[:max_keys])
        if len(states) > max_keys:
            out.append(merge_states(states[max_keys:], prefix + OTHER))
    return out


class KpiCollector(Collector):
    """Builds every business metric from the engine at scrape time."""

    def __init__(
        self,
        engine_getter: Callable[[], KpiEngine | None],
        settings: Settings,
        now_ms: Callable[[KpiEngine], int],
    ) -> None:
        self.engine_getter = engine_getter
        self.settings = settings
        self.now_ms = now_ms

    def describe(self) -> list:
        """No metric names, so that registering the collector does not call ``collect``."""
        return []  # no collect() at registration time

    def collect(self) -> Iterator[Any]:  # one loop per metric family
        """Every business metric family of the exported queues and campaigns (none without an engine)."""
        engine = self.engine_getter()
        if engine is None:
            return
        config = engine.config
        states = exported_states(engine, self.settings.max_queues)
        now = self.now_ms(engine)
        reads = {s.key: read_key(s, config, now) for s in states}
        queues = [s for s in states if s.kind == "queue"]
        campaigns = [s for s in states if s.kind == "campaign"]

        for name, (total, doc) in QUEUE_COUNTERS.items():
            fam = CounterMetricFamily(name, doc, labels=["queue"])
            for s in queues:
                fam.add_metric([s.name], s.exported.get(total, 0))
            yield fam
        for name, (total, doc) in CAMPAIGN_COUNTERS.items():
            fam = CounterMetricFamily(name, doc, labels=["campaign"])
            for s in campaigns:
                fam.add_metric([s.name], s.exported.get(total, 0))
            yield fam
        fam = CounterMetricFamily(
            "callpulse_calls_exited",
            "Flow-outs (left the queue without an agent), by reason.",
            labels=["queue", "reason"],
        )
        for s in queues:
            for reason in EXIT_LABELS:
                fam.add_metric([s.name, reason], s.exported.get(counters.exited(reason), 0))
        yield fam
        fam = CounterMetricFamily(
            "callpulse_calls_refused",
            "Calls that could not enter the queue, by reason.",
            labels=["queue", "reason"],
        )
        for s in queues:
            for reason in REFUSED_REASONS:
                fam.add_metric([s.name, reason], s.exported.get(counters.refused(reason), 0))
        yield fam
        fam = CounterMetricFamily(
            "callpulse_survey_responses",
            "Post-call survey responses by scale and band.",
            labels=["queue", "scale", "band"],
        )
        for s in queues:
            for scale, bands in SURVEY_BANDS.items():
                for band, _, _ in bands:
                    fam.add_metric([s.name, scale, band], s.exported.get(counters.survey(scale, band), 0))
        yield fam

        wait_bounds = engine.config.wait_bounds_s
        hist = HistogramMetricFamily(
            "callpulse_queue_wait_seconds",
            "Queue wait of the stints that left the queue.",
            labels=["queue", "outcome"],
        )
        for s in queues:
            for outcome in counters.WAIT_OUTCOMES:
                hist.add_metric(
                    [s.name, outcome], *_histogram(s, counters.wait_histogram(outcome), wait_bounds)
                )
        yield hist
        for metric, hist_name, doc in (
            (
                "callpulse_talk_seconds",
                counters.TALK_HISTOGRAM,
                "Talk time of completed calls (hold included).",
            ),
            ("callpulse_handle_seconds", counters.HANDLE_HISTOGRAM, "Handle time (talk + after-call work)."),
        ):
            hist = HistogramMetricFamily(metric, doc, labels=["queue"])
            for s in queues:
                hist.add_metric([s.name], *_histogram(s, hist_name, TALK_BOUNDS_S))
            yield hist
        hist = HistogramMetricFamily(
            "callpulse_ewt_error_seconds",
            "Expected wait announced at entry minus the wait, of answered calls (CALLPULSE_EWT_ESTIMATOR; "
            "negative: callers waited longer than told).",
            labels=["queue"],
        )
        for s in queues:
            hist.add_metric([s.name], *_histogram(s, ewt.ERROR_HISTOGRAM, ewt.ERROR_BOUNDS_S))
        yield hist

        for name, (kpi, kind, doc) in WINDOW_GAUGES.items():
            label = "queue" if kind == "queue" else "campaign"
            gauge = GaugeMetricFamily(name, doc, labels=[label, "window"])
            for s in queues if kind == "queue" else campaigns:
                for window, data in reads[s.key]["windows"].items():
                    value = data["kpis"][kpi]
                    if value is not None:
                        gauge.add_metric([s.name, window], value)
            yield gauge
        for name, (field, doc) in LIVE_GAUGES.items():
            gauge = GaugeMetricFamily(name, doc, labels=["queue"])
            for s in queues:
                gauge.add_metric([s.name], reads[s.key]["live"][field])
            yield gauge
        gauge = GaugeMetricFamily(
            "callpulse_alert_active",
            "1 while an in-app alert of the queue is active (abandonment_spike: docs/alerts.md), else 0.",
            labels=["queue", "alert"],
        )
        for s in queues:
            if s.name != OTHER:
                active = read_alerts(s, config, now)
                for alert in ALERTS:
                    gauge.add_metric([s.name, alert], 1 if alert in active else 0)
        yield gauge
        gauge = GaugeMetricFamily(
            "callpulse_expected_wait_seconds",
            "Expected wait of a caller entering the queue now (CALLPULSE_EWT_ESTIMATOR; none before any answer).",
            labels=["queue"],
        )
        for s in queues:
            if s.name != OTHER:
                expected = engine.expected_wait(s, now)["estimates"][config.ewt_estimator]
                if expected is not None:
                    gauge.add_metric([s.name], expected / 1000)
        yield gauge
        gauge = GaugeMetricFamily(
            "callpulse_agents", "Agents who are members of the queue, by state.", labels=["queue", "state"]
        )
        for s in queues:
            for agent_state in AGENT_MEMBER_STATES:
                gauge.add_metric([s.name, agent_state], reads[s.key]["live"]["agents"][agent_state])
        yield gauge
        gauge = GaugeMetricFamily(
            "callpulse_agents_staffed", "Agents logged in to the queue (in any state).", labels=["queue"]
        )
        for s in queues:
            gauge.add_metric([s.name], reads[s.key]["live"]["agents_staffed"])
        yield gauge
        gauge = GaugeMetricFamily(
            "callpulse_agents_paused",
            'Paused agents of the queue, by pause reason ("" for none; at most 20 reasons, the rest "other").',
            labels=["queue", "reason"],
        )
        for s in queues:
            for reason, n in reads[s.key]["live"]["agents_paused"].items():
                gauge.add_metric([s.name, reason], n)
        yield gauge
        for name, (field, doc) in CONFIG_GAUGES.items():
            gauge = GaugeMetricFamily(name, doc, labels=["queue"])
            for s in queues:
                gauge.add_metric([s.name], getattr(config.targets.for_queue(s.name), field))
            yield gauge
        if self.settings.agent_metrics == "true":
            yield from agent_metrics(engine, self.settings.max_agents, now)


#: Per-agent counters (CALLPULSE_AGENT_METRICS): metric -> (total of the agent's key, scale, help)
AGENT_COUNTERS = {
    "callpulse_agent_calls_answered": ("answered", 1, "Calls the agent answered."),
    "callpulse_agent_rings_missed": ("agent_missed", 1, "Rings the agent let run to the ring timeout."),
    "callpulse_agent_calls_transferred": ("transferred", 1, "Calls the agent transferred away."),
    "callpulse_agent_talk_seconds": (
        "talk_ms",
        1000,
        "The agent's talk time on completed calls (hold included).",
    ),
}


def agent_metrics(engine: KpiEngine, max_agents: int, now: int) -> Iterator[Any]:
    """The per-agent series of the first ``max_agents`` agents this worker holds (by first fact)."""
    states = first_seen(engine, "a:")[:max_agents]
    reads = {s.key: read_agent(s, engine.config, now) for s in states}
    gauge = GaugeMetricFamily(
        "callpulse_agent_state", "1 for the agent's state now (all 0: logged off).", labels=["agent", "state"]
    )
    for s in states:
        current = reads[s.key]["state"]
        for agent_state in AGENT_MEMBER_STATES:
            gauge.add_metric(
                [s.name, agent_state], 1 if current is not None and current[0] == agent_state else 0
            )
    yield gauge
    for name, (total, scale, doc) in AGENT_COUNTERS.items():
        fam = CounterMetricFamily(name, doc, labels=["agent"])
        for s in states:
            fam.add_metric([s.name], s.exported.get(total, 0) / scale)
        yield fam
    gauge = GaugeMetricFamily(
        "callpulse_agent_occupancy_ratio",
        "The agent's time on calls or in wrap-up / time available, on calls or in wrap-up.",
        labels=["agent", "window"],
    )
    for s in states:
        for window, data in reads[s.key]["windows"].items():
            if data["occupancy_ratio"] is not None:
                gauge.add_metric([s.name, window], data["occupancy_ratio"])
    yield gauge


def _histogram(
    state: KeyState, name: str, bounds_s: tuple[float, ...]
) -> tuple[list[tuple[str, float]], float]:
    """Cumulative buckets and sum (seconds) of one exported histogram, from the never-decreasing values."""
    buckets: list[tuple[str, float]] = []
    for i, bound in enumerate(bounds_s):
        buckets.append((_le(bound), state.exported.get(counters.histogram_bucket(name, i), 0)))
    buckets.append(("+Inf", state.exported.get(counters.histogram_bucket(name, len(bounds_s)), 0)))
    return buckets, state.exported.get(counters.histogram_sum(name), 0) / 1000


def _le(bound: float) -> str:
    return str(float(bound)) if not math.isinf(bound) else "+Inf"


def wall_now_ms(_engine: KpiEngine) -> int:
    """The wall clock in ms: the "now" of CALLPULSE_CLOCK=wall."""
    return int(time.time() * 1000)


def event_now_ms(engine: KpiEngine) -> int:
    """The engine's stream time in ms (the largest fact time): the "now" of CALLPULSE_CLOCK=event."""
    return engine.stream_time_ms()
