"""A discrete-event contact-center simulator producing canonical events (``callpulse simulate``).

Pure generators: a ``random.Random`` and a start time in, events (JSON-able dicts, ``ts`` in epoch seconds
with millisecond precision) out in non-decreasing time. Deterministic for a given seed.

- ``erlang_a``: the plain Erlang-A (M/M/N+M) queue: Poisson arrivals, exponential service and patience,
  first-come first-served, one queue named ``erlang``; no holds, transfers or outbound. Checked against the
  exact values of ``streams.erlang``.
- ``profile``: richer traffic from a calibrated profile (``bank``: the Anonymous Bank, February 1999;
  ``lively``: the same queues at a steady daytime rate, for ``callpulse dev``). Arrivals follow the hour of
  day and weekday (UTC of the event time); callers spend time in the voice-response unit (some hang up
  there); each queue is staffed hourly by square-root staffing (agents log in and out); agents hold,
  transfer to another queue, miss calls, do after-call work; some callers answer a survey; an outbound
  campaign dials during the day.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from typing import Any

import orjson

from streams.calibration import LEVELS

#: Patience beyond every wait observed (a quantile the data cannot reach), in seconds.
LONG_PATIENCE_S = 3600.0


@dataclass(frozen=True, slots=True)
class ErlangAConfig:
    """Parameters of the plain Erlang-A run."""

    calls_per_hour: float
    agents: int
    aht_s: float
    patience_s: float
    hours: float
    queue: str = "erlang"

    def __post_init__(self) -> None:
        if (
            self.calls_per_hour <= 0
            or self.agents < 1
            or self.aht_s <= 0
            or self.patience_s <= 0
            or self.hours <= 0
        ):
            msg = "calls per hour, agents, AHT, patience and hours must all be positive"
            raise ValueError(msg)


class _Clock:
    """The simulation's event list: (time ms, sequence, action, data); output events are kept in order."""

    def __init__(self, start_ms: int, prefix: str) -> None:
        self.start_ms = start_ms
        self.heap: list[tuple[int, int, str, object]] = []
        self.seq = 0
        self.prefix = prefix
        self.events = 0

    def at(self, t_ms: int, action: str, data: object = None) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t_ms, self.seq, action, data))

    def emit(self, t_ms: int, event: dict[str, Any]) -> None:
        """Schedule an output event (its id is given when it is emitted, in time order)."""
        self.at(t_ms, "out", event)

    def out(self, t_ms: int, event: dict[str, Any]) -> dict[str, Any]:
        self.events += 1
        event["event_id"] = f"{self.prefix}-{self.events}"
        event["ts"] = round((self.start_ms + t_ms) / 1000, 3)
        return event


def _exp_ms(rng: random.Random, mean_s: float) -> int:
    return round(rng.expovariate(1 / mean_s) * 1000)


def erlang_a(
    config: ErlangAConfig, rng: random.Random, start_ms: int, seed: int = 0
) -> Iterator[dict[str, Any]]:
    """Events of an Erlang-A queue: arrivals for ``config.hours``, then every call runs to its end."""
    clock = _Clock(start_ms, f"sim{seed}")
    horizon = round(config.hours * 3600_000)
    mean_gap_s = 3600 / config.calls_per_hour
    free = config.agents
    waiting: deque[str] = deque()
    gone: set[str] = set()
    n = 0
    clock.at(_exp_ms(rng, mean_gap_s), "arrive")
    while clock.heap:
        t, _, action, data = heapq.heappop(clock.heap)
        if action == "out":
            yield clock.out(t, data)  # type: ignore[arg-type]
        elif action == "arrive":
            n += 1
            call = f"sim{seed}-c{n}"
            clock.emit(t, {"type": "queue", "call_id": call, "queue": config.queue})
            if free:
                free -= 1
                _serve(clock, rng, config, call, t)
            else:
                waiting.append(call)
                clock.at(t + _exp_ms(rng, config.patience_s), "abandon", call)
            nxt = t + _exp_ms(rng, mean_gap_s)
            if nxt < horizon:
                clock.at(nxt, "arrive")
        elif action == "abandon":
            call = str(data)
            if call in waiting:
                waiting.remove(call)
                gone.add(call)
                clock.emit(t, {"type": "abandon", "call_id": call})
                clock.emit(t, {"type": "hangup", "call_id": call})
        elif action == "end":
            clock.emit(t, {"type": "hangup", "call_id": data})
            if waiting:
                _serve(clock, rng, config, waiting.popleft(), t)
            else:
                free += 1


def _serve(clock: _Clock, rng: random.Random, config: ErlangAConfig, call: str, t: int) -> None:
    clock.emit(t, {"type": "answer", "call_id": call})
    clock.at(t + _exp_ms(rng, config.aht_s), "end", call)


# --------------------------------------------------------------------------------------------------------
# Profiles


def load_profile(name: str) -> dict[str, Any]:
    """A calibrated profile: ``bank`` or ``lively``."""
    if name not in PROFILES:
        msg = f"unknown profile {name!r}; profiles: {', '.join(PROFILES)}"
        raise ValueError(msg)
    data: dict[str, Any] = orjson.loads(
        resources.files("streams.profiles").joinpath("bank.json").read_bytes()
    )
    data["name"] = name
    return data


PROFILES = ("bank", "lively")


def sample_quantiles(rng: random.Random, quantiles: list[float | None]) -> float:
    """Draw from a distribution given by its quantiles at LEVELS (linear between them)."""
    u = rng.random()
    i = min(int(u * (len(LEVELS) - 1)), len(LEVELS) - 2)
    lo, hi = quantiles[i], quantiles[i + 1]
    if lo is None or hi is None:
        return LONG_PATIENCE_S
    frac = (u - LEVELS[i]) / (LEVELS[i + 1] - LEVELS[i])
    return max(0.0, lo + (hi - lo) * frac)


@dataclass
class _Agent:
    ident: str
    queue: str
    busy: bool = False
    leaving: bool = False
    logged_in: bool = False


class ProfileSimulator:
    """The richer contact center of a profile. ``scale`` multiplies arrival rates."""

    P_HOLD = 0.15
    P_TRANSFER = 0.04
    P_MISSED = 0.05
    P_CSAT = 0.25
    P_NPS = 0.08
    CSAT_WEIGHTS = (0.06, 0.07, 0.17, 0.30, 0.40)
    NPS_WEIGHTS = (0.02, 0.01, 0.02, 0.03, 0.04, 0.06, 0.08, 0.14, 0.2, 0.2, 0.2)
    OUTBOUND_AGENTS = 4
    OUTBOUND_HOURS = range(7, 19)

    def __init__(
        self,
        profile: dict[str, Any],
        rng: random.Random,
        start_ms: int,
        hours: float | None,
        scale: float = 1.0,
        seed: int = 0,
    ) -> None:
        self.profile = profile
        self.rng = rng
        self.start_ms = start_ms
        self.horizon = None if hours is None else round(hours * 3600_000)
        self.scale = scale
        self.clock = _Clock(start_ms, f"sim{seed}")
        self.queues = profile["queues"]
        self.lively = profile.get("name") == "lively"
        self.agents: dict[str, list[_Agent]] = {q: [] for q in self.queues}
        self.waiting: dict[str, deque[str]] = {q: deque() for q in self.queues}
        self.calls = 0
        self.mean_service = {q: sum(d["service_s"]) / len(d["service_s"]) for q, d in self.queues.items()}

    # -- rates and staffing ----------------------------------------------------------------------------------
    def rate_per_hour(self, queue: str, t_ms: int) -> float:
        """Arrivals per hour to a queue at a time of the run."""
        table = self.queues[queue]["arrivals_per_hour"]
        if self.lively:  # the Monday peak, all day long
            return float(max(table[0]) * self.scale)
        hour = (self.start_ms + t_ms) // 3600_000
        weekday = (hour // 24 + 3) % 7  # 1970-01-01 was a Thursday (weekday 3)
        return float(table[weekday][hour % 24] * self.scale)

    def staff_needed(self, queue: str, t_ms: int) -> int:
        """Agents to staff a queue with: the offered load plus its square root (square-root staffing)."""
        offered = self.rate_per_hour(queue, t_ms) / 3600 * self.mean_service[queue]
        return math.ceil(offered + math.sqrt(offered)) if offered > 0 else 0

    # -- the run ----------------------------------------------------------------------------------------------
    def run(self) -> Iterator[dict[str, Any]]:
        """The events of the run, in time order."""
        clock = self.clock
        for queue in self.queues:
            clock.at(0, "staff", queue)
            self._next_arrival(queue, 0)
        for i in range(self.OUTBOUND_AGENTS):
            clock.at(i * 7_000, "dial", f"out-{i}")
        while clock.heap:
            t, _, action, data = heapq.heappop(clock.heap)
            if action == "out":
                yield clock.out(t, data)  # type: ignore[arg-type]
            else:
                getattr(self, "_" + action)(t, data)

    def _next_hour(self, t: int) -> int:
        """The next whole hour of event time (UTC) after ``t``, relative to the start."""
        return ((self.start_ms + t) // 3600_000 + 1) * 3600_000 - self.start_ms

    def _ended(self, t: int) -> bool:
        return self.horizon is not None and t >= self.horizon

    def _next_arrival(self, queue: str, t: int) -> None:
        # Thinning would be exact for a varying rate; the rate is constant within each hour, so drawing the
        # gap at the current hour's rate and re-drawing at hour boundaries is exact too.
        rate = self.rate_per_hour(queue, t)
        hour_end = self._next_hour(t)
        gap = _exp_ms(self.rng, 3600 / rate) if rate > 0 else None
        if gap is None or t + gap >= hour_end:
            if not self._ended(hour_end):
                self.clock.at(hour_end, "rearm", queue)
            return
        if not self._ended(t + gap):
            self.clock.at(t + gap, "arrive", queue)

    def _rearm(self, t: int, queue: object) -> None:
        self._next_arrival(str(queue), t)

    def _staff(self, t: int, queue: object) -> None:
        q = str(queue)
        need = 0 if self._ended(t) else self.staff_needed(q, t)
        agents = self.agents[q]
        logged = [a for a in agents if a.logged_in and not a.leaving]
        for agent in logged[need:]:
            agent.leaving = True
            if not agent.busy:
                self._log_off(agent, t)
        for agent in [a for a in agents if a.leaving and a.logged_in][: max(0, need - len(logged))]:
            agent.leaving = False  # needed again before it left
        while sum(1 for a in agents if a.logged_in and not a.leaving) < need:
            free = next((a for a in agents if not a.logged_in), None)
            if free is None:
                free = _Agent(f"{q}-{len(agents) + 1}", q)
                agents.append(free)
            free.logged_in, free.leaving, free.busy = True, False, False
            self.clock.emit(t, {"type": "agent_state", "agent": free.ident, "state": "available", "queue": q})
            self._dispatch(q, t)
        if not (self._ended(t) and all(not a.busy for a in agents)):
            self.clock.at(self._next_hour(t), "staff", q)

    def _log_off(self, agent: _Agent, t: int) -> None:
        agent.logged_in = agent.leaving = False
        self.clock.emit(
            t, {"type": "agent_state", "agent": agent.ident, "state": "offline", "queue": agent.queue}
        )

    def _arrive(self, t: int, queue: object) -> None:
        q = str(queue)
        self._next_arrival(q, t)
        self.calls += 1
        call = f"{self.clock.prefix}-c{self.calls}"
        rng = self.rng
        self.clock.emit(t, {"type": "ring", "call_id": call, "caller": f"+1555{rng.randrange(10**7):07d}"})
        ivr = round(sample_quantiles(rng, self.queues[q]["ivr_s"]) * 1000)
        if rng.random() < self.queues[q]["ivr_hangup_share"]:
            self.clock.emit(t + ivr, {"type": "hangup", "call_id": call})
            return
        self.clock.at(t + ivr, "enqueue", (call, q))

    def _enqueue(self, t: int, data: object) -> None:
        call: str
        q: str
        call, q = data  # type: ignore[misc]
        self.clock.emit(t, {"type": "queue", "call_id": call, "queue": q})
        self.waiting[q].append(call)
        patience = round(sample_quantiles(self.rng, self.queues[q]["patience_s"]) * 1000)
        self.clock.at(t + patience, "give_up", (call, q))
        self._dispatch(q, t)

    def _give_up(self, t: int, data: object) -> None:
        call: str
        q: str
        call, q = data  # type: ignore[misc]
        if call in self.waiting[q]:
            self.waiting[q].remove(call)
            self.clock.emit(t, {"type": "abandon", "call_id": call})
            self.clock.emit(t, {"type": "hangup", "call_id": call})

    def _dispatch(self, q: str, t: int) -> None:
        while self.waiting[q]:
            agent = next((a for a in self.agents[q] if a.logged_in and not a.leaving and not a.busy), None)
            if agent is None:
                return
            call = self.waiting[q].popleft()
            self._answer(agent, call, q, t)

    def _answer(self, agent: _Agent, call: str, q: str, t: int) -> None:
        rng, clock = self.rng, self.clock
        agent.busy = True
        if rng.random() < self.P_MISSED:
            other = rng.choice(self.agents[q]).ident
            clock.emit(t, {"type": "agent_missed", "call_id": call, "agent": other})
        clock.emit(t, {"type": "answer", "call_id": call, "agent": agent.ident})
        clock.emit(t, {"type": "agent_state", "agent": agent.ident, "state": "busy"})
        talk = max(1000, round(sample_quantiles(rng, self.queues[q]["service_s"]) * 1000))
        if rng.random() < self.P_HOLD and talk > 20_000:
            start = t + round(talk * rng.uniform(0.2, 0.6))
            clock.emit(start, {"type": "hold", "call_id": call})
            clock.emit(
                min(start + round(rng.uniform(10_000, 60_000)), t + talk - 1000),
                {"type": "unhold", "call_id": call},
            )
        if rng.random() < self.P_TRANSFER:
            target = "tech" if q != "tech" and "tech" in self.queues else "retail"
            clock.emit(t + talk, {"type": "transfer", "call_id": call, "target": target})
            clock.at(t + talk, "enqueue", (call, target))
            clock.at(t + talk, "after_call", (agent, None))
            return
        clock.emit(t + talk, {"type": "hangup", "call_id": call})
        clock.at(t + talk, "after_call", (agent, call))

    def _after_call(self, t: int, data: object) -> None:
        agent: _Agent
        call: str | None
        agent, call = data  # type: ignore[misc]
        rng, clock = self.rng, self.clock
        acw = round(rng.uniform(5_000, 40_000))
        clock.emit(t, {"type": "agent_state", "agent": agent.ident, "state": "acw"})
        if call is not None:
            clock.emit(t + acw, {"type": "wrapup", "call_id": call})
            if rng.random() < self.P_CSAT:
                score = rng.choices(range(1, 6), weights=self.CSAT_WEIGHTS)[0]
                clock.emit(t + 60_000, {"type": "survey", "call_id": call, "scale": "csat", "score": score})
            elif rng.random() < self.P_NPS:
                score = rng.choices(range(11), weights=self.NPS_WEIGHTS)[0]
                clock.emit(t + 60_000, {"type": "survey", "call_id": call, "scale": "nps", "score": score})
        clock.at(t + acw, "ready", agent)

    def _ready(self, t: int, agent: object) -> None:
        a: _Agent = agent  # type: ignore[assignment]
        a.busy = False
        if a.leaving:
            self._log_off(a, t)
            return
        self.clock.emit(t, {"type": "agent_state", "agent": a.ident, "state": "available"})
        self._dispatch(a.queue, t)

    # -- outbound ---------------------------------------------------------------------------------------------
    def _dial(self, t: int, dialer: object) -> None:
        if self._ended(t):
            return
        hour = (self.start_ms + t) // 3600_000 % 24
        if not self.lively and hour not in self.OUTBOUND_HOURS:
            self.clock.at(t + 600_000, "dial", dialer)
            return
        rng, clock = self.rng, self.clock
        self.calls += 1
        call = f"{clock.prefix}-o{self.calls}"
        clock.emit(t, {"type": "dial", "call_id": call, "campaign": "renewals", "agent": str(dialer)})
        ring = round(rng.uniform(5_000, 25_000))
        end = t + ring
        if rng.random() < 0.55:
            talk = _exp_ms(rng, 120) + 5_000
            end = t + ring + talk
            clock.emit(t + ring, {"type": "answer", "call_id": call, "direction": "outbound"})
            u = rng.random()
            disposition = "voicemail" if u < 0.35 else "success" if u < 0.35 + 0.65 * 0.25 else "contact"
        else:
            disposition = rng.choices(["no_answer", "busy", "failed"], weights=(7, 2, 1))[0]
        clock.emit(
            end, {"type": "hangup", "call_id": call, "direction": "outbound", "disposition": disposition}
        )
        clock.at(end + round(rng.uniform(5_000, 20_000)), "dial", dialer)
