"""The worker's HTTP endpoints: ``/metrics`` and the JSON API, with its formatting.

A worker holds only the queues and campaigns of the partitions it actively owns. ``/api/v1/queues`` merges
the answers of every worker of the ``aggregates`` table (``?local=1``: this worker's alone; the workers it
could not reach are listed under ``unreachable``). ``/api/v1/queues/{queue}`` is answered by the worker
that owns the queue's calls.facts partition (forwarded there unless ``?local=1``). Times are RFC 3339 UTC.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import faust
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from app.metrics import exported_states
from app.settings import Settings
from streams import counters
from streams.kpi import KpiEngine, read_key

log = logging.getLogger(__name__)


def register(
    app: faust.App,
    *,
    settings: Settings,
    registry: CollectorRegistry,
    engine: KpiEngine,
    aggregates: Any,
    facts_topic: Any,
    now_ms: Callable[[KpiEngine], int],
) -> None:
    """Serve ``/metrics``, ``/api/v1/queues`` and ``/api/v1/queues/{queue}`` from ``app``'s web server."""

    def api_now() -> int:
        return now_ms(engine)

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        # On the event loop, not in a thread: the collector reads state the agents change.
        return web.bytes(generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    @app.page("/api/v1/queues")
    async def queues_page(web: Any, request: Any) -> Any:
        local = queues_json(engine, settings, api_now())
        if request.query.get("local"):
            return web.json(local)
        for url in _other_workers(app, aggregates):
            try:
                async with app.http_client.get(f"{url}/api/v1/queues?local=1") as response:
                    remote = await response.json()
            except Exception as exc:  # a worker may be going away; say so, answer the rest
                log.warning("could not reach worker %s: %s", url, exc)
                local.setdefault("unreachable", []).append(url)
                continue
            local["queues"].extend(remote["queues"])
            local["campaigns"].extend(remote["campaigns"])
        local["queues"].sort(key=lambda q: q["queue"])
        local["campaigns"].sort(key=lambda c: c["campaign"])
        return web.json(local)

    @app.page("/api/v1/queues/{queue}")
    async def queue_page(web: Any, request: Any, queue: str) -> Any:
        try:
            owner = str(app.router.external_topic_key_store(facts_topic, f"q:{queue}".encode())).rstrip("/")
        except Exception:  # no assignment known yet: answer from here
            owner = settings.api_url.rstrip("/")
        if not request.query.get("local") and owner != settings.api_url.rstrip("/"):
            async with app.http_client.get(f"{owner}/api/v1/queues/{queue}?local=1") as response:
                return web.json(await response.json(), status=response.status)
        state = engine.keys.get(f"q:{queue}")
        if state is None:
            return web.json({"error": f"queue {queue!r} has no data"}, status=404)
        return web.json(queue_json(state, engine, api_now()))


def _other_workers(app: faust.App, table: Any) -> list[str]:
    me = str(app.conf.canonical_url).rstrip("/")
    try:
        hosts = app.router.table_metadata(table.name)
    except Exception:  # no assignment yet
        return []
    return sorted({str(h).rstrip("/") for h in hosts} - {me})


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def queue_json(state: Any, engine: KpiEngine, now: int) -> dict:
    """The JSON of one queue or campaign: live values, every window's KPIs and counts, targets."""
    data = read_key(state, engine.config, now)
    out: dict[str, Any] = {state.kind: state.name}
    windows = {}
    for name, w in data["windows"].items():
        windows[name] = {
            "start": _iso(w["start_ms"]),
            "end": _iso(w["end_ms"]),
            "kpis": w["kpis"],
            "counts": counters.readable(w["counts"]),
        }
    if state.kind == "queue":
        targets = engine.config.targets.for_queue(state.name)
        out["live"] = data["live"]
        out["targets"] = {
            "sl_threshold_seconds": targets.sl_threshold_s,
            "short_abandon_seconds": targets.short_abandon_s,
            "service_level_goal": targets.sl_goal,
            "abandonment_goal": targets.abandon_goal,
        }
    out["windows"] = windows
    return out


def queues_json(engine: KpiEngine, settings: Settings, now: int) -> dict:
    """This worker's answer to ``/api/v1/queues``: the JSON of its exported queues and campaigns at ``now``.

    Those beyond CALLPULSE_MAX_QUEUES per kind are folded into ``_other``.
    """
    states = exported_states(engine, settings.max_queues)
    return {
        "now": _iso(now),
        "clock": settings.clock,
        "queues": [queue_json(s, engine, now) for s in states if s.kind == "queue"],
        "campaigns": [queue_json(s, engine, now) for s in states if s.kind == "campaign"],
    }
