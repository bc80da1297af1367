"""The worker's HTTP endpoints: ``/metrics`` and the JSON API, with its formatting.

A worker holds only the queues, campaigns and agents of the partitions it actively owns. ``/api/v1/queues`` merges
the answers of every worker of the ``aggregates`` table (``?local=1``: this worker's alone; the workers it
could not reach are listed under ``unreachable``). ``/api/v1/queues/{queue}`` and its waiting callers
(``/api/v1/queues/{queue}/callers``) are answered by the worker that owns the queue's calls.facts partition
(forwarded there unless ``?local=1``). ``/api/v1/agents`` and
``/api/v1/agents/{agent}`` merge every worker's answer like ``/api/v1/queues`` (an agent's states in its
queues come from the workers of those queues). Times are RFC 3339 UTC.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import resources
from typing import Any
from urllib.parse import quote

import faust
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from app.metrics import exported_states
from app.settings import Settings
from streams import counters, ewt
from streams.kpi import (
    KpiEngine,
    agents_at,
    read_agent,
    read_alerts,
    read_key,
    read_peaks,
    read_scores,
    read_volume,
    waiting_callers,
)
from streams.sessions.agents import OVERALL_ORDER
from streams.sessions.callers import Callback
from streams.validation import MAX_PRIORITY

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
    sessions: Any = None,
    pending_callbacks: Callable[[int], list[Callback]] = lambda _now: [],
) -> None:
    """Serve ``/metrics``, ``/api/v1/queues[/{queue}[/callers]]`` and ``/api/v1/agents[/{agent}]`` from ``app``'s web server."""

    def api_now() -> int:
        return now_ms(engine)

    floor = resources.files("app").joinpath("web/floor.html").read_bytes()

    @app.page("/")
    async def floor_page(web: Any, request: Any) -> Any:
        return web.bytes(floor, headers={"Content-Type": "text/html; charset=utf-8"})

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        # On the event loop, not in a thread: the collector reads state the agents change.
        return web.bytes(generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    @app.page("/api/v1/queues")
    async def queues_page(web: Any, request: Any) -> Any:
        local = queues_json(engine, settings, api_now())
        if not request.query.get("local"):
            await _merge(local, "/api/v1/queues?local=1", {"queues": "queue", "campaigns": "campaign"})
        return web.json(local)

    @app.page("/api/v1/queues/{queue}")
    async def queue_page(web: Any, request: Any, queue: str) -> Any:
        return await _queue_answer(
            web, request, queue, "", lambda state: queue_json(state, engine, api_now())
        )

    @app.page("/api/v1/queues/{queue}/callers")
    async def callers_page(web: Any, request: Any, queue: str) -> Any:
        def answer(state: Any) -> dict:
            return callers_json(state, engine, settings, api_now())

        return await _queue_answer(web, request, queue, "/callers", answer)

    @app.page("/api/v1/queues/{queue}/ewt")
    async def ewt_page(web: Any, request: Any, queue: str) -> Any:
        try:
            position = _whole(request.query.get("position"), "position", 1)
            priority = _whole(request.query.get("priority"), "priority", -MAX_PRIORITY) or 0
        except ValueError as exc:
            return web.json({"error": str(exc)}, status=400)
        accuracy = request.query.get("accuracy") in ("1", "true")

        def answer(state: Any) -> dict:
            return ewt_json(state, engine, settings, api_now(), position, priority, accuracy)

        tail = "/ewt" + ("?" + request.query_string if request.query_string else "")
        return await _queue_answer(web, request, queue, tail, answer)

    async def _queue_answer(
        web: Any, request: Any, queue: str, tail: str, answer: Callable[[Any], dict]
    ) -> Any:
        """Answer about one queue here if this worker owns its facts partition, else forward to the owner."""
        try:
            routing = settings.targets.routing_key("q:" + queue).encode()
            owner = str(app.router.external_topic_key_store(facts_topic, routing)).rstrip("/")
        except Exception:  # no assignment known yet: answer from here
            owner = settings.api_url.rstrip("/")
        if not request.query.get("local") and owner != settings.api_url.rstrip("/"):
            url = f"{owner}/api/v1/queues/{quote(queue, safe='')}{tail}{'&' if '?' in tail else '?'}local=1"
            async with app.http_client.get(url) as response:
                return web.json(await response.json(), status=response.status)
        state = engine.keys.get(f"q:{queue}")
        if state is None:
            return web.json({"error": f"queue {queue!r} has no data"}, status=404)
        try:
            return web.json(answer(state))
        except LookupError as exc:
            return web.json({"error": str(exc).strip("'\"")}, status=404)

    @app.page("/api/v1/agents")
    async def agents_page(web: Any, request: Any) -> Any:
        return web.json(await _agents(request, request.query.get("agent")))

    @app.page("/api/v1/agents/{agent}")
    async def agent_page(web: Any, request: Any, agent: str) -> Any:
        data = await _agents(request, agent)
        if not data["agents"]:
            return web.json({"error": f"agent {agent!r} has no data"}, status=404)
        out = data["agents"][0]
        if "unreachable" in data:
            out["unreachable"] = data["unreachable"]
        return web.json(out)

    @app.page("/api/v1/queues/{queue}/volume")
    async def volume_page(web: Any, request: Any, queue: str) -> Any:
        try:
            weeks = _whole(request.query.get("weeks"), "weeks", 1) or 4
        except ValueError as exc:
            return web.json({"error": str(exc)}, status=400)
        if weeks > settings.volume_weeks:
            message = f"weeks must be at most CALLPULSE_VOLUME_WEEKS={settings.volume_weeks}, not {weeks}"
            return web.json({"error": message}, status=400)

        def answer(state: Any) -> dict:
            return volume_json(state, engine, settings, api_now(), weeks)

        return await _queue_answer(web, request, queue, f"/volume?weeks={weeks}", answer)

    @app.page("/api/v1/queues/{queue}/peaks")
    async def peaks_page(web: Any, request: Any, queue: str) -> Any:
        window = request.query.get("window", "today")
        if window not in ("today", "interval", "1h", "15m", "5m"):
            return web.json(
                {"error": f"window must be today, interval, 1h, 15m or 5m, not {window!r}"}, status=400
            )

        def answer(state: Any) -> dict:
            now = api_now()
            rows = read_peaks(state, engine.config, now, window)
            return {
                "queue": state.name,
                "now": _iso(now),
                "clock": settings.clock,
                "window": window,
                "intervals": [
                    {
                        "start": _iso(r["start_ms"]),
                        "end": _iso(r["end_ms"]),
                        "peak_waiting": r["waiting"],
                        "peak_talking": r["talking"],
                        "offered": r["offered"],
                    }
                    for r in rows
                ],
            }

        return await _queue_answer(web, request, queue, f"/peaks?window={window}", answer)

    @app.page("/api/v1/alerts")
    async def alerts_page(web: Any, request: Any) -> Any:
        local = alerts_json(engine, settings, api_now())
        if not request.query.get("local"):
            await _merge(local, "/api/v1/alerts?local=1", {"alerts": ("queue", "alert")})
        return web.json(local)

    @app.page("/api/v1/callbacks")
    async def callbacks_page(web: Any, request: Any) -> Any:
        denied = _denied(web, request)
        if denied is not None:
            return denied
        now = api_now()
        queue = request.query.get("queue")
        local = callbacks_json(pending_callbacks(now), settings, now, queue)
        if request.query.get("local"):
            return web.json(local)
        query = "?local=1" + (f"&queue={quote(queue, safe='')}" if queue is not None else "")
        auth = {"Authorization": request.headers.get("Authorization", "")}
        order = {"callbacks": ("queue", "first_abandon", "caller")}
        await _merge(local, "/api/v1/callbacks" + query, order, sessions, auth)
        return web.json(local)

    def _denied(web: Any, request: Any) -> Any:
        """The answer to a request for callers' numbers without the token (None: it has it)."""
        token = settings.api_token
        if not token:
            return web.json(
                {"error": "this endpoint is off: set CALLPULSE_API_TOKEN to turn it on"}, status=403
            )
        given = request.headers.get("Authorization", "").encode("utf-8")
        if not hmac.compare_digest(given, f"Bearer {token}".encode()):
            return web.json(
                {"error": "a bearer token is required (Authorization: Bearer <CALLPULSE_API_TOKEN>)"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="callpulse"'},
            )
        return None

    async def _merge(
        local: dict, path: str, order: dict[str, Any], table: Any = None, headers: Any = None
    ) -> None:
        """Add every other worker's answer to ``path`` to ``local``.

        Per list named in ``order``: the rows of every worker, sorted by its field (or fields).
        """
        for remote in await _others(local, path, table, headers):
            for name in order:
                local[name].extend(remote[name])
        for name, by in order.items():
            fields = (by,) if isinstance(by, str) else by
            local[name].sort(key=lambda row, fields=fields: tuple(row[f] for f in fields))

    async def _others(local: dict, path: str, table: Any = aggregates, headers: Any = None) -> list[dict]:
        """Every other worker's answer to ``path``; those that cannot be reached are listed in ``local``."""
        answers = []
        for url in _other_workers(app, table if table is not None else aggregates):
            try:
                async with app.http_client.get(url + path, headers=headers) as response:
                    answers.append(await response.json())
            except Exception as exc:  # a worker may be going away; say so, answer the rest
                log.warning("could not reach worker %s: %s", url, exc)
                local.setdefault("unreachable", []).append(url)
        return answers

    async def _agents(request: Any, only: str | None) -> dict:
        """This worker's agents (``?local=1``), or every worker's, merged by agent."""
        local = agents_json(engine, settings, api_now(), only)
        if request.query.get("local"):
            return local
        query = "?local=1" + (f"&agent={quote(only, safe='')}" if only is not None else "")
        parts = [local, *await _others(local, "/api/v1/agents" + query)]
        merged = merge_agents([a for part in parts for a in part["agents"]])
        return {**{k: v for k, v in local.items() if k != "agents"}, "agents": merged}


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
        expected = engine.expected_wait(state, now)["estimates"][engine.config.ewt_estimator]
        out["live"] = {**data["live"], "expected_wait_seconds": _seconds(expected)}
        out["targets"] = {
            "sl_threshold_seconds": targets.sl_threshold_s,
            "short_abandon_seconds": targets.short_abandon_s,
            "service_level_goal": targets.sl_goal,
            "abandonment_goal": targets.abandon_goal,
        }
    out["windows"] = windows
    return out


def callers_json(state: Any, engine: KpiEngine, settings: Settings, now: int) -> dict:
    """The callers waiting in one queue, in the order they are served (their pseudonyms, never a number)."""
    return {
        "queue": state.name,
        "now": _iso(now),
        "clock": settings.clock,
        "callers": [
            {
                "position": w.position,
                "call_id": w.call,
                "caller": w.caller or None,
                "priority": w.priority,
                "waiting_since": _iso(w.since_ms),
                "wait_seconds": (now - w.since_ms) / 1000,
            }
            for w in waiting_callers(state, engine.config, now)
        ],
    }


def _whole(raw: str | None, name: str, low: int) -> int | None:
    """A query parameter that is a whole number of at least ``low`` (None when absent)."""
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if value < low or value > MAX_PRIORITY:
        msg = f"{name} must be a whole number from {low} to {MAX_PRIORITY}, not {raw!r}"
        raise ValueError(msg)
    return value


def _seconds(ms: float | None) -> float | None:
    return round(ms / 1000, 3) if ms is not None else None


def ewt_json(
    state: Any,
    engine: KpiEngine,
    settings: Settings,
    now: int,
    position: int | None,
    priority: int,
    accuracy: bool = False,
) -> dict:
    """The expected wait of a caller of one queue: the announced one, every estimator's (and their accuracy)."""
    found = engine.expected_wait(state, now, position, priority)
    estimates = {name: _seconds(ms) for name, ms in found["estimates"].items()}
    best = ewt.best_of(state.totals)
    out: dict[str, Any] = {"queue": state.name, "now": _iso(now), "clock": settings.clock}
    out["caller"] = (
        {"position": position, "waited_seconds": found["waited_ms"] / 1000}
        if position is not None
        else {"position": None, "priority": priority}
    )
    out.update(
        {
            "estimator": settings.ewt_estimator,
            "expected_wait_seconds": estimates[settings.ewt_estimator],
            "best_estimator": best,
            "callers_ahead": found["ahead"],
            "estimates": estimates,
        }
    )
    if accuracy:
        scores = read_scores(state, engine.config, now)
        out["accuracy"] = {name: ewt.accuracy(counts) for name, counts in scores.items()}
    return out


def callbacks_json(entries: list[Callback], settings: Settings, now: int, queue: str | None = None) -> dict:
    """This worker's callers pending a call back (of ``queue`` alone if given), oldest first, with their numbers."""
    rows = [
        {
            "queue": c.queue,
            "number": c.number,
            "caller": c.caller,
            "first_abandon": _iso(c.since_ms),
            "last_abandon": _iso(c.last_ms),
            "attempts": c.attempts,
            "call_id": c.call_id,
            "wait_seconds": c.wait_ms / 1000,
            "pending_seconds": (now - c.since_ms) / 1000,
        }
        for c in sorted(entries, key=lambda c: (c.queue, c.since_ms, c.caller))
        if queue is None or c.queue == queue
    ]
    return {"now": _iso(now), "clock": settings.clock, "callbacks": rows}


def alerts_json(engine: KpiEngine, settings: Settings, now: int) -> dict:
    """This worker's active in-app alerts, by queue (those it exports)."""
    rows = []
    for state in exported_states(engine, settings.max_queues):
        if state.kind != "queue" or state.name.startswith("_"):
            continue
        for alert, found in read_alerts(state, engine.config, now).items():
            offered = found["offered"]
            rows.append(
                {
                    "queue": state.name,
                    "alert": alert,
                    "since": _iso(found["since_ms"]),
                    "abandonment_ratio": found["abandoned"] / offered if offered else None,
                    "offered": offered,
                    "abandoned": found["abandoned"],
                    "threshold": found["threshold"],
                    "p_value": found["p_value"],
                }
            )
    return {"now": _iso(now), "clock": settings.clock, "alerts": rows}


WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def volume_json(state: Any, engine: KpiEngine, settings: Settings, now: int, weeks: int) -> dict:
    """A queue's calls per local weekday and hour of day over the last ``weeks`` weeks: totals and means per day."""
    data = read_volume(state, engine.config, now, weeks)
    counts = data["counts"]
    offered = [
        [counts["answered"][d][h] + counts["abandoned"][d][h] + counts["exited"][d][h] for h in range(24)]
        for d in range(7)
    ]
    by_day = {}
    for d, day in enumerate(WEEKDAYS):
        days = data["days"][d]
        by_day[day] = {
            "days": days,
            "offered": offered[d],
            "offered_per_day": [round(n / days, 3) if days else None for n in offered[d]],
            "answered": counts["answered"][d],
            "abandoned": counts["abandoned"][d],
            "short_abandoned": counts["short_abandoned"][d],
            "entered": counts["entered"][d],
        }
    return {
        "queue": state.name,
        "now": _iso(now),
        "clock": settings.clock,
        "tz": engine.config.windows.tz,
        "weeks": weeks,
        "start": _iso(data["start_ms"]),
        "end": _iso(data["end_ms"]),
        "weekdays": by_day,
    }


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


def _state_json(status: str, since: int, reason: str) -> dict[str, Any]:
    out: dict[str, Any] = {"state": status, "since": _iso(since)}
    if status == "paused":
        out["reason"] = reason
    return out


def agents_json(engine: KpiEngine, settings: Settings, now: int, only: str | None = None) -> dict:
    """This worker's part of ``/api/v1/agents`` (``only``: that agent alone).

    The agents whose own figures (``a:<agent>``) it holds, and the states of agents in the queues it holds. An
    agent's entry: its overall ``state`` (``available``, ``on_call``, ``acw``, ``paused`` or ``offline``)
    and ``since``, the pause ``reason``, the current ``call`` (its queue and since when), its state in each
    queue it serves (``queues``), and per window its work (``windows``). Durations are in seconds.
    """
    entries: dict[str, dict[str, Any]] = {}
    for key, state in engine.keys.items():
        if key.startswith("q:"):
            for agent, (status, since, reason, _start) in agents_at(state, now).items():
                if only is None or agent == only:
                    queues = entries.setdefault(agent, {"agent": agent, "queues": {}})["queues"]
                    queues[state.name] = _state_json(status, since, reason)
        elif key.startswith("a:") and (only is None or state.name == only):
            entry = entries.setdefault(state.name, {"agent": state.name, "queues": {}})
            data = read_agent(state, engine.config, now)
            current = data["state"]
            if current is None:
                entry.update({"state": "offline"})
            else:
                status, since, reason = current
                entry.update(_state_json(status, since, reason))
                if status == "on_call":
                    entry["call"] = {"queue": reason or None, "since": _iso(since)}
            entry["windows"] = {name: _agent_window(w) for name, w in data["windows"].items()}
    return {
        "now": _iso(now),
        "clock": settings.clock,
        "agents": [entries[a] for a in sorted(entries)],
    }


def _agent_window(w: dict[str, Any]) -> dict[str, Any]:
    def seconds(ms: int | None) -> float | None:
        return ms / 1000 if ms is not None else None

    return {
        "start": _iso(w["start_ms"]),
        "end": _iso(w["end_ms"]),
        "answered": w["answered"],
        "missed": w["missed"],
        "transferred": w["transferred"],
        "talk_seconds": seconds(w["talk_ms"]),
        "hold_seconds": seconds(w["hold_ms"]),
        "acw_seconds": seconds(w["acw_ms"]),
        "average_handle_time_seconds": w["average_handle_time_seconds"],
        "seconds_in_state": {st: ms / 1000 for st, ms in w["ms_in_state"].items()},
        "occupancy_ratio": w["occupancy_ratio"],
        "longest_idle_seconds": seconds(w["longest_idle_ms"]),
    }


def merge_agents(parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Entries of the same agent from several workers as one, sorted by agent.

    Their queues are united; the rest comes from the worker that holds the agent's own figures.
    """
    merged: dict[str, dict[str, Any]] = {}
    for part in parts:
        into = merged.get(part["agent"])
        if into is None:
            merged[part["agent"]] = {**part, "queues": dict(part["queues"])}
            continue
        into["queues"].update(part["queues"])
        for k, v in part.items():
            if k not in ("agent", "queues"):
                into[k] = v
    out = []
    for agent in sorted(merged):
        entry = merged[agent]
        entry.setdefault("state", "offline" if not entry["queues"] else _overall_of(entry["queues"]))
        out.append(entry)
    return out


def _overall_of(queues: dict[str, dict[str, Any]]) -> str:
    """An agent's overall state from its queues alone (its own figures not yet seen)."""
    states = {q["state"] for q in queues.values()}
    return next((st for st in OVERALL_ORDER if st in states), "offline")
