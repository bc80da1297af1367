"""The Faust application (DESIGN 3), wired: topics, tables, the two agents, timers, and the web pages.

``calls.events`` (key: call bucket) -> sessionize -> ``calls.facts`` (key: ``q:<queue>`` / ``c:<campaign>``)
-> aggregate -> KPI engine -> ``/metrics`` and ``/api/v1/queues``. Both agents run with concurrency 1 and
checkpointed state (app.checkpoint; the stages are app.sessionize and app.aggregate, the tables app.store,
the pages app.http_api). Faust reads none of its unprefixed environment variables: the app is built with
``env={}`` from callpulse's own settings.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import faust
from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor
from prometheus_client import CollectorRegistry, disable_created_metrics

from app import batches, compat, http_api, store
from app.aggregate import Aggregator
from app.kafka import (
    TOPIC_CALLBACKS,
    TOPIC_DEADLETTER,
    TOPIC_EVENTS,
    TOPIC_FACTS,
    compression_type,
    fetch_range,
    kafka_security,
)
from app.metrics import KpiCollector, event_now_ms, make_counters, wall_now_ms
from app.sessionize import FLUSH_S, Sessionizer
from app.settings import Settings
from streams.kpi import KpiEngine


@dataclass
class Pipeline:
    """Everything a worker is made of."""

    app: faust.App
    settings: Settings
    registry: CollectorRegistry
    sessionizer: Sessionizer
    aggregator: Aggregator
    engine: KpiEngine
    sessionize_agent: Any
    aggregate_agent: Any


def faust_options(settings: Settings, embedded: bool) -> dict[str, Any]:
    """Keyword arguments of faust.App.

    Against the embedded broker every record is its own batch (its end offsets are exact only then, DESIGN 7)
    and a short session timeout makes a restarted worker rejoin fast.
    """
    options: dict[str, Any] = {
        "broker": settings.broker_url,
        "store": settings.store,
        "datadir": settings.datadir,
        "env": {},
        "web_host": settings.web_host,
        "web_port": settings.web_port,
        "web_bind": settings.web_host,
        "canonical_url": settings.api_url,
        "topic_partitions": settings.partitions,
        "topic_replication_factor": settings.replication_factor,
        "processing_guarantee": "at_least_once",
        "stream_wait_empty": False,
        "web_in_thread": False,
        "autodiscover": False,
        "logging_config": None,
        "producer_compression_type": compression_type(settings),
    }
    credentials = _credentials(settings)
    if credentials is not None:
        options["broker_credentials"] = credentials
    if embedded:
        options.update(
            producer_max_batch_size=1,
            broker_session_timeout=6.0,
            broker_heartbeat_interval=1.0,
            broker_rebalance_timeout=20.0,
        )
    return options


def _credentials(settings: Settings) -> Any:
    security = kafka_security(settings)
    protocol = security["security_protocol"]
    if protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=settings.sasl_username,
            password=settings.sasl_password,
            mechanism=settings.sasl_mechanism,
            ssl_context=security.get("ssl_context"),
        )
    if protocol == "SSL":
        return faust.SSLCredentials(security["ssl_context"])
    return None


def build(settings: Settings, embedded: bool) -> Pipeline:
    """Create the Faust app with its topics, tables, agents and pages."""
    compat.no_production_index()
    app = faust.App(settings.app_id, **faust_options(settings, embedded))
    if embedded:
        compat.short_fetch_wait()
    compat.follow_checkpoints({TOPIC_EVENTS, TOPIC_FACTS})
    partitions = settings.partitions

    def topic(name: str) -> faust.TopicT:
        return app.topic(
            name,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            partitions=partitions,
        )

    events_topic, facts_topic, deadletter_topic, callbacks_topic = (
        topic(TOPIC_EVENTS),
        topic(TOPIC_FACTS),
        topic(TOPIC_DEADLETTER),
        topic(TOPIC_CALLBACKS),
    )
    sessions, aggregates = store.tables(app, partitions)

    disable_created_metrics()  # no `*_created` twin of every counter
    registry = CollectorRegistry(auto_describe=False)
    counters = make_counters(registry)
    app.monitor = PrometheusMonitor(metrics=FaustMetrics.create(registry, "callpulse_faust"))
    engine = KpiEngine(settings.kpi)
    interval = settings.checkpoint_interval
    targets = settings.targets

    def facts_partition(fact_key: str) -> int | None:
        # The queues of a group share the partition of the group's key (their expected waits read each other).
        routing = targets.routing_key(fact_key)
        if routing == fact_key:
            return None
        return int(app.producer.key_partition(TOPIC_FACTS, routing.encode("utf-8")).partition)

    sessionizer = Sessionizer(
        sessions,
        facts_topic,
        deadletter_topic,
        events_topic,
        settings.session,
        settings.validation,
        counters,
        interval,
        facts_partition=facts_partition,
    )
    aggregator = Aggregator(aggregates, engine, interval)
    sessionizer.callbacks_topic = callbacks_topic
    sessionizer.on_fatal = aggregator.on_fatal = app.crash
    aggregator.deadletter_topic, aggregator.rejected = deadletter_topic, counters.rejected
    batches.watch(TOPIC_EVENTS, sessionizer.undecodable.append)
    batches.watch(TOPIC_FACTS, aggregator.undecodable.append)
    sessionizer.fetch_range = functools.partial(fetch_range, settings, TOPIC_EVENTS)
    aggregator.fetch_range = functools.partial(fetch_range, settings, TOPIC_FACTS)
    now_ms = event_now_ms if settings.clock == "event" else wall_now_ms
    registry.register(KpiCollector(lambda: engine, settings, now_ms))

    @app.agent(events_topic, concurrency=1, name="sessionize")
    async def sessionize(stream: faust.StreamT) -> None:
        manual: Any = stream.noack()  # type: ignore[attr-defined]  # Stream has it, StreamT does not say so
        async for event in manual.events():
            await sessionizer.process(event, manual.ack)

    @app.agent(facts_topic, concurrency=1, name="aggregate")
    async def aggregate(stream: faust.StreamT) -> None:
        manual: Any = stream.noack()  # type: ignore[attr-defined]
        async for event in manual.events():
            await aggregator.process(event, manual.ack)

    @app.timer(interval)
    async def checkpoint_idle() -> None:
        await sessionizer.checkpoint_idle()
        await aggregator.checkpoint_idle()

    @app.timer(FLUSH_S)
    async def flush_idle() -> None:
        await sessionizer.flush_idle()

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]  # Faust passes signal= among the kwargs
    async def on_revoked(_app: Any, revoked: Any, **kwargs: Any) -> None:
        # Whatever was not checkpointed is replayed from the committed offsets by the next owner.
        sessionizer.reset()
        aggregator.reset()

    @app.on_rebalance_complete.connect  # type: ignore[arg-type]  # likewise
    async def on_rebalanced(_app: Any, **kwargs: Any) -> None:
        actives = {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == TOPIC_FACTS}
        aggregator.reset()
        aggregator.load(actives)

    http_api.register(
        app,
        settings=settings,
        registry=registry,
        engine=engine,
        aggregates=aggregates,
        facts_topic=facts_topic,
        now_ms=now_ms,
        sessions=sessions,
        pending_callbacks=sessionizer.pending_callbacks,
    )
    return Pipeline(app, settings, registry, sessionizer, aggregator, engine, sessionize, aggregate)
