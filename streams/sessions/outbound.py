"""The outbound call: attempts, connections, contacts and conversions of a campaign, from a call's events."""

from __future__ import annotations

from streams.facts import Fact, campaign_key
from streams.sessions.agents import Work
from streams.sessions.callers import CallerUpdate
from streams.sessions.derivation import Derivation
from streams.sessions.stored import StoredEvent


def is_outbound(events: list[StoredEvent]) -> bool:
    """An outbound call: any of its events says so, or it dials."""
    return any(ev.outbound or ev.type == "dial" for ev in events)


def derive_outbound(call_id: str, events: list[StoredEvent], contact_min_talk_ms: int) -> Derivation:
    """Derive an outbound call's facts, keyed by its campaign.

    Every ``dial`` is an attempt (a channel may redial under one call id); an ``answer`` connects one dialled
    attempt; a ``hangup`` judges the last open answer (contact, conversion).

    Outcomes are not paired with attempts by order: redials within one second sort all dials first
    (equal timestamps), and the counts must not depend on that.
    """
    campaign = (
        next((ev.detail for ev in events if ev.type == "dial"), None)
        or next((ev.extra for ev in events if ev.type != "survey" and ev.extra), None)
        or "default"
    )
    key = campaign_key(str(campaign))
    facts: list[Fact] = []
    dials = answers = hangups = 0
    open_answer = -1
    #: When the callee first answered (it reached an agent: a call back done).
    reached = -1
    #: The agent who placed the call is on it from the callee's answer to the hang-up.
    works: dict[str, list[Work]] = {}
    agent = last = ""
    for ev in events:
        ts, t, eid = ev.ts_ms, ev.type, ev.event_id
        if t == "dial":
            dials += 1
            facts.append(Fact("attempt", key, ts, "attempt:" + eid, call_id))
        elif t == "answer":
            if answers < dials:
                answers += 1
                open_answer = ts
                if reached < 0:
                    reached = ts
                facts.append(Fact("connected", key, ts, "connected:" + eid, call_id))
                if ev.detail and not agent:
                    agent = ev.detail
                    works.setdefault(agent, []).append(Work("", ts))
        elif t == "hangup":
            if hangups >= dials:
                continue
            hangups += 1
            if agent:
                works[agent][-1] = works[agent][-1]._replace(end_ms=ts)
                last, agent = agent, ""
            disposition = ev.detail
            talk = ts - open_answer if open_answer >= 0 else -1
            if disposition in ("contact", "success") or (disposition is None and talk >= contact_min_talk_ms):
                facts.append(Fact("contact", key, ts, "contact:" + eid, call_id))
            if disposition == "success":
                facts.append(Fact("conversion", key, ts, "conversion:" + eid, call_id))
            open_answer = -1
        elif t == "wrapup":
            if last and works[last][-1].wrapup_ms < 0:
                works[last][-1] = works[last][-1]._replace(wrapup_ms=ts)
            last = ""
        elif t == "expire":
            hangups = dials
            if agent:
                works[agent][-1] = works[agent][-1]._replace(end_ms=ts)
                agent = ""
    callee = next(
        ((str(ev.extra or ""), ev.number) for ev in events if ev.type == "dial" and ev.number), None
    )
    return Derivation(
        facts,
        dials > 0 and hangups >= dials,
        "",
        None,
        works={a: tuple(ws) for a, ws in works.items()} if works else None,
        caller=CallerUpdate(callee[0], call_id, callee[1], (), reached) if callee and callee[0] else None,
    )
