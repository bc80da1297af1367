"""The KPI engine: applies facts to per-queue / per-campaign state and reads KPIs over windows (DESIGN 4).

State per aggregation key (``q:<queue>`` or ``c:<campaign>``):

- ``minutes``: event-time minute buckets of counters and sums, plus the multiset of queue waits of the
  stints that left the queue in that minute (for the longest wait, which must survive retractions);
- ``spans``: the whole minutes of long agent-state intervals, kept as one entry per interval rather than
  one addition per minute (an agent left logged in overnight would otherwise rewrite hundreds of minutes);
- ``totals`` and ``hist``: cumulative counters and histograms since the key was first seen, the source of
  the Prometheus counters;
- ``hwm``: the counter values to export, settled at each checkpoint. Prometheus counters may never
  decrease, but a retraction does decrease a total: the exported value is ``max(hwm, total)``, so a
  retraction is absorbed by the next increments instead of looking like a counter reset. Windowed KPIs and
  live values are always exact;
- ``live`` (calls waiting / talking / on hold with their since-time, caller pseudonym and priority), ``agents`` (per agent: state, since,
  pause reason) and ``agents_next`` (per agent: the state it turns into at a time beyond the stream time,
  the end of after-call work, with no event to say so: read as in force once ``now`` passes it);
- ``applied``: per source (a sessionizer bucket) the last source offset applied, so a re-emitted batch of
  facts counts once.

Ratios are derived on read from their parts; a zero denominator gives no value (``None``), never 100 %.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple, NotRequired, TypedDict

from streams import counters, ewt
from streams.alerts import ABANDONMENT_SPIKE, MinuteCounts, SpikeRules, spike_state
from streams.config import TargetsConfig
from streams.events import AGENT_STATE_ALIASES
from streams.facts import (
    WIRE_RECORDS,
    AgentWire,
    CallbackWire,
    CompletedWire,
    ExitedWire,
    LiveWire,
    PlainWire,
    RefusedWire,
    SurveyWire,
    WaitWire,
    WireFact,
)
from streams.windows import (
    MINUTE_MS,
    WINDOWS,
    WindowSpec,
    bucket_start,
    local_hour_start,
    next_bucket_start,
)

#: Default histogram bounds (seconds) for queue waits; every configured T and S is added.
WAIT_BOUNDS_S = (1, 2, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1200, 1800, 3600)
#: Histogram bounds (seconds) for talk and handle times.
TALK_BOUNDS_S = (10, 30, 60, 120, 180, 300, 420, 600, 900, 1200, 1800, 2700, 3600, 7200)
#: Minute buckets are kept this long behind the key's watermark: enough for ``today`` (25 h on a DST day,
#: plus the day-start shift), with room for grace.
RETENTION_MS = 50 * 3600_000
#: The abandonment-spike test of the in-app alerts.
SPIKE_RULES = SpikeRules()
#: The counters kept per local hour for the volume by hour and weekday (``Hour``).
HOUR_COUNTERS = ("entered", "answered", "abandoned", "short_abandoned", "exited")
WEEK_MS = 7 * 86_400_000
#: An agent-state interval whose whole minutes span at least this long is kept as a span, not per minute.
SPAN_MIN_MS = 60 * MINUTE_MS
AGENT_MEMBER_STATES = ("available", "on_call", "acw", "paused")
#: At most this many pause reasons per queue are told apart; the rest are counted as ``other``.
MAX_PAUSE_REASONS = 20
SURVEY_BANDS = {
    "csat": (("negative", 1, 2), ("neutral", 3, 3), ("positive", 4, 5)),
    "nps": (("detractor", 0, 6), ("passive", 7, 8), ("promoter", 9, 10)),
}


def survey_band(scale: str, score: int) -> str:
    """Band of a survey score.

    csat 4-5 positive, 3 neutral, 1-2 negative; nps 9-10 promoter, 7-8 passive, 0-6 detractor.
    """
    for band, low, high in SURVEY_BANDS[scale]:
        if low <= score <= high:
            return band
    msg = f"score {score} outside the {scale} scale"
    raise ValueError(msg)


@dataclass(frozen=True, slots=True)
class KpiConfig:
    """What the engine needs from the settings."""

    targets: TargetsConfig = TargetsConfig()
    windows: WindowSpec = WindowSpec()
    call_timeout_ms: int = 4 * 3600_000
    dedup_ttl_ms: int = 24 * 3600_000
    #: The estimator of the announced expected wait (``streams.ewt.ESTIMATORS``).
    ewt_estimator: str = ewt.DEFAULT_ESTIMATOR
    #: Weeks of hourly volume kept per queue (``Hour``).
    volume_weeks: int = 8

    @property
    def wait_bounds_s(self) -> tuple[float, ...]:
        """Bounds of the queue-wait histograms: the defaults and every configured T and S."""
        return tuple(sorted(set(WAIT_BOUNDS_S) | self.targets.all_thresholds_s()))


class Minute(TypedDict):
    """One minute bucket.

    Its counters (``c``), the multiset of queue waits that ended in it (``w``: wait in ms, as a string, ->
    count), and the offset of the last facts message added to it (``h``); the scores of the expected waits
    announced to the callers who left the queue in it, apart (``e``: ``streams.ewt``'s counters); and the
    changes of the number of calls waiting (``dw``) and talking (``dt``) that happened in it (time in ms, as a
    string, -> change), for the peaks between two scrapes: a stint that left the queue adds 1 at its entry and
    -1 at its exit, a completed call likewise over its talk.
    """

    c: dict[str, int]
    w: dict[str, int]
    h: int
    e: NotRequired[dict[str, int]]
    dw: NotRequired[dict[str, int]]
    dt: NotRequired[dict[str, int]]


class Hour(TypedDict):
    """One local hour of a queue's calls, kept ``KpiConfig.volume_weeks`` for the volume by hour and weekday.

    Its counters (``c``: ``HOUR_COUNTERS``) and the minutes folded into it (``m``), so that folding twice (after a
    checkpoint cut short) counts once. Minutes are folded in as they pass their retention.
    """

    c: dict[str, int]
    m: list[int]


class Hist(TypedDict):
    """A histogram: per-bucket counts (``b``, the last one is +Inf), sum (``s``) and count (``n``)."""

    b: list[int]
    s: int
    n: int


_new = tuple.__new__
_RECORDS: dict[str, Any] = dict(WIRE_RECORDS)
_WAIT_SUM = {outcome: counters.wait_sum(outcome) for outcome in counters.WAIT_OUTCOMES}
_WAIT_HISTOGRAM = {outcome: counters.wait_histogram(outcome) for outcome in counters.WAIT_OUTCOMES}


def _hist_new(n_bounds: int) -> Hist:
    return {"b": [0] * (n_bounds + 1), "s": 0, "n": 0}


class KeyState:
    """Everything the engine keeps for one queue or campaign."""

    __slots__ = (
        "key",
        "hw",
        "wm",
        "first",
        "applied",
        "live",
        "agents",
        "agents_next",
        "callbacks",
        "totals",
        "hist",
        "hwm",
        "exported",
        "minutes",
        "spans",
        "answers",
        "stints",
        "stints_from",
        "told",
        "hours",
        "dirty_hours",
        "dirty_minutes",
        "deleted_minutes",
        "touch_seq",
        "touched",
    )

    def __init__(self, key: str) -> None:
        self.key = key
        #: Offset of the last facts message applied to this key (the shell's replay guard).
        self.hw = -1
        #: Largest fact time seen.
        self.wm = 0
        #: Smallest fact time seen (0: none yet); orders keys for the CALLPULSE_MAX_QUEUES fold.
        self.first = 0
        self.applied: dict[str, list[int]] = {}
        self.live: dict[str, list[Any]] = {}
        self.agents: dict[str, list[Any]] = {}
        self.agents_next: dict[str, list[Any]] = {}
        #: caller pseudonym -> [first abandon, latest abandon] of a caller pending a call back in the queue.
        self.callbacks: dict[str, list[int]] = {}
        self.totals: dict[str, int] = {}
        self.hist: dict[str, Hist] = {}
        self.hwm: dict[str, int] = {}
        #: The counter values to export: ``hwm`` as of the last durable checkpoint (set by the shell).
        self.exported: dict[str, int] = {}
        self.minutes: dict[int, Minute] = {}
        #: ``"<agent state>|<first minute>|<end minute>"`` -> count: every minute in [first, end) holds
        #: count x 60 s of that state (see ``SPAN_MIN_MS``).
        self.spans: dict[str, int] = {}
        #: The queue's latest answered waits [answer time, wait], in answer order (``ewt.ANSWERS_KEPT``).
        self.answers: list[list[int]] = []
        #: The queue's stints that ended lately [end, start, outcome, found the line empty (0/1)], in end order:
        #: the rates of the expected wait (``ewt.RATE_WINDOW_MS`` and ``_SCORED_KEPT_MS`` behind ``wm``).
        self.stints: list[list[int]] = []
        #: The stints before this time are no longer kept: the rates' window starts no earlier.
        self.stints_from = 0
        #: call -> what it was told on entering the queue: [entered, scored at (-1: not yet), priority, callers
        #: ahead, other callers in the line, one announcement (ms) per ``ewt.ESTIMATORS`` (-1: none)]; a scored
        #: one is kept ``_SCORED_KEPT_MS``, for a correction to take back exactly what was scored.
        self.told: dict[str, list[int]] = {}
        #: Local hour start -> the hour's counters, for minutes past their retention (persisted like minutes).
        self.hours: dict[int, Hour] = {}
        self.dirty_hours: set[int] = set()
        self.dirty_minutes: set[int] = set()
        self.deleted_minutes: set[int] = set()
        #: Minutes the facts message ``touch_seq`` has already added to (not persisted).
        self.touch_seq = -1
        self.touched: set[int] = set()

    @property
    def kind(self) -> str:
        """``queue``, ``campaign`` or ``agent``."""
        prefix = self.key[:2]
        return "queue" if prefix == "q:" else "agent" if prefix == "a:" else "campaign"

    @property
    def name(self) -> str:
        """The queue's or campaign's name."""
        return self.key[2:]

    def snapshot(self) -> dict[str, Any]:
        """The key's state without its minutes (those are persisted one key per minute)."""
        return {
            "hw": self.hw,
            "wm": self.wm,
            "first": self.first,
            "applied": self.applied,
            "live": self.live,
            "agents": self.agents,
            "agents_next": self.agents_next,
            "callbacks": self.callbacks,
            "totals": self.totals,
            "hist": self.hist,
            "hwm": self.hwm,
            "spans": self.spans,
            "answers": self.answers,
            "stints": self.stints,
            "stints_from": self.stints_from,
            "told": self.told,
        }

    @classmethod
    def restore(
        cls, key: str, data: dict[str, Any], minutes: dict[int, Minute], hours: dict[int, Hour] | None = None
    ) -> KeyState:
        """Rebuild a key from ``snapshot()`` output, its minutes and its hours."""
        state = cls(key)
        state.hours = hours or {}
        state.hw = data["hw"]
        state.wm = data["wm"]
        state.first = data["first"]
        state.applied = data["applied"]
        state.live = {c: _live_value(v) for c, v in data["live"].items()}
        state.agents = {a: _agent_value(v) for a, v in data["agents"].items()}
        state.agents_next = data.get("agents_next", {})
        state.callbacks = data.get("callbacks", {})
        state.totals = data["totals"]
        state.hist = data["hist"]
        state.hwm = data["hwm"]
        state.spans = {_renamed_span(span): n for span, n in data.get("spans", {}).items()}
        state.answers = data.get("answers", [])
        state.stints = data.get("stints", [])
        state.stints_from = data.get("stints_from", 0)
        state.told = data.get("told", {})
        for minute in minutes.values():
            _rename_agent_counters(minute["c"])
        state.exported = dict(state.hwm)
        state.minutes = minutes
        return state


def _minute(state: KeyState, ts_ms: int, seq: int) -> Minute | None:
    """The minute bucket of ``ts_ms``, or None when it already holds facts message ``seq`` (a replay)."""
    start = bucket_start(ts_ms)
    minute = state.minutes.get(start)
    if minute is None:
        minute = state.minutes[start] = {"c": {}, "w": {}, "h": -1}
    if seq >= 0:
        if state.touch_seq != seq:
            state.touch_seq, state.touched = seq, set()
        if start not in state.touched:
            if minute["h"] >= seq:
                return None
            minute["h"] = seq
            state.touched.add(start)
    state.dirty_minutes.add(start)
    state.deleted_minutes.discard(start)
    return minute


def _interval(state: KeyState, field: str, start_ms: int, end_ms: int, sign: int, seq: int) -> None:
    """A call waiting (``dw``) or talking (``dt``) from ``start_ms`` to ``end_ms``: +1 and -1, in their minutes."""
    for ts_ms, change in ((start_ms, sign), (end_ms, -sign)):
        minute = _minute(state, ts_ms, seq)
        if minute is not None:
            _add(minute.setdefault(field, {}), str(ts_ms), change)  # type: ignore[misc]


def _count(
    part: dict[str, int] | None, totals: dict[str, int], counts: list[tuple[str, int]], sign: int
) -> None:
    """Add counts to the totals and, unless the facts message is in it already (None), to a minute's part."""
    for name, value in counts:
        if value:
            if part is not None:
                _add(part, name, sign * value)
            _add(totals, name, sign * value)


def _add(counters: dict[str, int], name: str, value: int) -> None:
    total = counters.get(name, 0) + value
    if total:
        counters[name] = total
    else:
        counters.pop(name, None)


class KpiEngine:
    """Applies facts and reads KPIs. Sans-IO: the caller passes offsets and ``now_ms``."""

    def __init__(self, config: KpiConfig) -> None:
        self.config = config
        self.keys: dict[str, KeyState] = {}
        self.wait_bounds_ms = [round(b * 1000) for b in config.wait_bounds_s]
        self.talk_bounds_ms = [b * 1000 for b in TALK_BOUNDS_S]
        self.error_bounds_ms = [b * 1000 for b in ewt.ERROR_BOUNDS_S]
        self.default_estimator = config.ewt_estimator
        #: scope -> its keys' ended stints, indexed for the rates (derived from ``KeyState.stints``; not persisted).
        self._lines: dict[str, ewt.ScopeLine] = {}

    def reset(self) -> None:
        """Forget every key (and what was derived from them), as a rebalance does before loading them again."""
        self.keys.clear()
        self._lines.clear()

    def loaded(self) -> None:
        """Keys were restored from the store: what was derived from the old ones no longer holds."""
        self._lines.clear()

    # -- writing ----------------------------------------------------------------------------------------------
    def state(self, key: str) -> KeyState:
        """The state of a key (created empty when first seen)."""
        state = self.keys.get(key)
        if state is None:
            state = self.keys[key] = KeyState(key)
        return state

    def apply_wire(self, key: str, src: str, off: int, facts: list[list[Any]], seq: int = -1) -> bool:
        """Apply the facts (wire form) one source message produced for ``key``; False if applied already.

        ``src`` and ``off`` name the source message (sessionizer bucket and input offset): a batch re-emitted
        by the sessionizer counts once. ``seq`` is the offset of the facts message: a minute that already
        holds it (persisted by a checkpoint that was cut short) is not added to again.
        """
        state = self.state(key)
        seen = state.applied.get(src)
        if seen is not None and off <= seen[0]:
            return False
        for fact in facts:
            self._apply_fact(state, fact, seq)
        state.applied[src] = [off, state.wm]
        return True

    def _apply_fact(self, state: KeyState, wire: list[Any], seq: int = -1) -> None:
        """Apply one fact in wire form (read as its record, as ``streams.facts.from_wire`` does)."""
        f: WireFact = _new(_RECORDS.get(wire[0], PlainWire), wire)  # from_wire, inlined: once per fact
        ts, s = f.ts_ms, f.sign
        if ts > state.wm:
            state.wm = ts
        if not state.first or ts < state.first:
            state.first = ts
        counts: list[tuple[str, int]]
        if type(f) is LiveWire:
            if len(wire) == 6:  # written before live facts had a caller and a priority
                f = _new(LiveWire, (*wire, "", 0))
                ts = f.since_ms
            self._upsert(state.live, f.call, [f.status, f.since_ms, f.caller, f.priority, ts], s)
            if s > 0 and f.status == "waiting" and state.key.startswith("q:"):
                told = state.told.get(f.call)
                if told is None or told[0] != f.since_ms:
                    state.told[f.call] = self.announce(state, f.call, f.since_ms, f.priority)
            return
        if type(f) is CallbackWire:
            self._upsert(state.callbacks, f.caller, [f.since_ms, ts], s)
            return
        if type(f) is AgentWire:
            if len(wire) == 6:  # written before agent facts had a reason
                f = _new(AgentWire, (*wire, ""))
            status = AGENT_STATE_ALIASES.get(f.status, f.status)
            if f.kind == "agent":
                self._upsert(state.agents, f.agent, [status, f.since_ms, f.reason], s)
            elif f.kind == "agent_next":
                self._upsert(state.agents_next, f.agent, [status, f.since_ms, f.reason], s)
            else:
                self._agent_time(state, status, f.since_ms, ts, s, seq)
            return
        minute = _minute(state, ts, seq)
        if type(f) is WaitWire or type(f) is ExitedWire:
            kind, w = f.kind, f.wait_ms
            counts = [(kind, 1), (_WAIT_SUM[kind], w)]
            if type(f) is ExitedWire:
                counts.append((counters.exited(f.reason), 1))
            elif kind == "answered":
                targets = self.config.targets.for_queue(state.name)
                counts.append(("answered_within_sl", 1 if w <= targets.sl_threshold_ms else 0))
            else:
                targets = self.config.targets.for_queue(state.name)
                counts.append(("short_abandoned", 1 if w < targets.short_abandon_ms else 0))
                counts.append(("abandoned_within_sl", 1 if w <= targets.sl_threshold_ms else 0))
            if minute is not None:
                _add(minute["w"], str(w), s)
            self._observe(state, _WAIT_HISTOGRAM[kind], self.wait_bounds_ms, w, s)
            if state.key.startswith("q:"):  # (an agent's own figures count its answers too: no stint)
                if len(wire) < len(type(f)._fields):  # written before exits named their call
                    f = _new(type(f), (*wire, ""))
                scores = self._stint(state, kind, ts, w, f.call, s)
                _interval(state, "dw", ts - w, ts, s, seq)
                # The scores, in their own part of the minute: the windows' KPIs need not sum them.
                _count(minute.setdefault("e", {}) if minute is not None else None, state.totals, scores, s)
        elif type(f) is CompletedWire:
            talk, acw = f.talk_ms, f.acw_ms
            counts = [
                ("completed", 1),
                ("talk_ms", talk),
                ("hold_ms", f.hold_ms),
                ("holds", f.holds),
                ("acw_ms", acw),
                ("transferred", f.transferred),
            ]
            self._observe(state, counters.TALK_HISTOGRAM, self.talk_bounds_ms, talk, s)
            if state.key.startswith("q:"):
                _interval(state, "dt", ts - talk, ts, s, seq)
            self._observe(state, counters.HANDLE_HISTOGRAM, self.talk_bounds_ms, talk + acw, s)
        elif type(f) is RefusedWire:
            counts = [(counters.refused(f.reason), 1)]
        elif type(f) is SurveyWire:
            counts = [(counters.survey(f.scale, survey_band(f.scale, f.score)), 1)]
        else:  # entered, agent_missed, expired, attempt, connected, contact, conversion
            counts = [(f.kind, 1)]
        _count(minute["c"] if minute is not None else None, state.totals, counts, s)

    # -- expected wait -----------------------------------------------------------------------------------------
    # Everything the estimators read, and every announcement not yet scored, is in the key's state (``answers``,
    # ``stints``, ``told``), never in its minutes: a checkpoint cut short persists a prefix of the minutes, and
    # an announcement worked out again from minutes ahead of the key's state would differ from the first.
    def _stint(
        self, state: KeyState, kind: str, ts: int, wait: int, call: str, sign: int
    ) -> list[tuple[str, int]]:
        """A queue stint ended (answered, abandoned, exited): what the estimators learn, and its score's counters."""
        start = ts - wait
        told = state.told.get(call) if call else None
        if told is not None and (told[0] != start or (sign > 0) == (told[1] >= 0)):
            told = None  # another stint's, or (scored, unscored) already: a replay of what the state holds
        if kind == "answered":
            _insort(state.answers, [ts, wait], sign, ewt.ANSWERS_KEPT)
        outcome = _STINT_ANSWERED_AT_ONCE if kind == "answered" and wait == 0 else _STINT_OUTCOMES[kind]
        empty_line = 1 if told is not None and told[_TOLD_OTHERS] == 0 else 0
        _insort(state.stints, [ts, start, outcome, empty_line], sign, 0)
        scope_id = self.config.targets.routing_key(state.key)
        line = self._lines.get(scope_id)
        if line is not None:
            if sign > 0:
                line.add(ts, start, outcome, empty_line)
            else:  # a union does not subtract: built again when next asked
                del self._lines[scope_id]
        if told is None:
            return []
        told[1] = ts if sign > 0 else -1
        counts: list[tuple[str, int]] = []
        default = self.default_estimator
        for i, name in enumerate(ewt.ESTIMATORS):
            announced = max(told[_TOLD_FIRST + i], 0)
            if kind == "answered":
                err_ds = round((announced - wait) / 100)
                counts += [
                    (ewt.scored(name), 1),
                    (ewt.error_sum(name), err_ds),
                    (ewt.error_squares(name), err_ds**2),
                ]
                if name == default:
                    self._observe(state, ewt.ERROR_HISTOGRAM, self.error_bounds_ms, announced - wait, sign)
            elif kind == "abandoned":
                counts += [(ewt.censored(name), 1), (ewt.censored_over(name), 1 if wait > announced else 0)]
        return counts

    def announce(self, state: KeyState, call: str, entered_ms: int, priority: int) -> list[int]:
        """What a caller entering the queue at ``entered_ms`` is told (see ``KeyState.told``)."""
        view, line = self.scope_view(state, entered_ms)
        ahead = _ahead(line, priority, entered_ms, call)
        others = sum(1 for _p, _since, other in line if other != call)
        told = ewt.estimates(view, ahead, line_empty=others == 0)
        return [
            entered_ms,
            -1,
            priority,
            ahead,
            others,
            *(round(v) if v is not None else -1 for v in told.values()),
        ]

    def scope_states(self, state: KeyState) -> list[KeyState]:
        """The queue and the other queues of its group (those this engine holds: all, as they share a partition)."""
        group = self.config.targets.group_of(state.name)
        if not group:
            return [state]
        keys = self.keys
        others = [keys[k] for q in self.config.targets.queues_of_group(group) if (k := "q:" + q) in keys]
        return others if state in others else [state, *others]

    def scope_view(self, state: KeyState, now_ms: int) -> tuple[ewt.ScopeView, list[tuple[int, int, str]]]:
        """What the estimators read for a queue at ``now_ms``, and the scope's line (priority, since, call)."""
        timeout = self.config.call_timeout_ms
        scope = self.scope_states(state)
        line = [
            (v[3], v[1], call)
            for st in scope
            for call, v in st.live.items()
            if v[0] == "waiting" and v[1] <= now_ms and now_ms - v[1] < timeout
        ]
        own = [
            v[1]
            for v in state.live.values()
            if v[0] == "waiting" and v[1] <= now_ms and now_ms - v[1] < timeout
        ]
        answers = state.answers
        upto = bisect_right(answers, [now_ms, 2**62])
        rate, theta, empty_wait = self._rates(scope, [since for _p, since, _c in line], now_ms)
        view = ewt.ScopeView(
            [(a[0], a[1]) for a in answers[:upto]],
            now_ms - min(own) if own else 0,
            rate,
            theta,
            empty_wait,
            ewt.best_of(state.totals),
        )
        return view, line

    def expected_wait(
        self, state: KeyState, now_ms: int, position: int | None = None, priority: int = 0
    ) -> dict[str, Any]:
        """Each estimator's expected wait (ms) for a caller of the queue at ``now_ms``.

        Without ``position``: a caller who would enter now with ``priority``. With it: the caller waiting at that
        place in the queue's line (``waiting_callers``), whose wait so far the history estimators subtract.
        Returns ``estimates`` (estimator -> ms or None), ``ahead`` (callers in front over the scope) and
        ``waited_ms``.

        Raises:
            LookupError: no caller waits at ``position``.
        """
        view, line = self.scope_view(state, now_ms)
        if position is None:
            ahead = sum(1 for p, _since, _call in line if p >= priority)
            waited = 0
            line_empty = not line
        else:
            callers = waiting_callers(state, self.config, now_ms)
            if not 1 <= position <= len(callers):
                msg = f"no caller waits at position {position} in {state.name} ({len(callers)} waiting)"
                raise LookupError(msg)
            w = callers[position - 1]
            ahead = _ahead(line, w.priority, w.since_ms, w.call)
            waited = now_ms - w.since_ms
            line_empty = False  # someone waits (this caller): no agent is free
        return {
            "estimates": ewt.estimates(view, ahead, waited, line_empty=line_empty),
            "ahead": ahead,
            "waited_ms": waited,
        }

    def _line(self, scope_id: str, scope: list[KeyState]) -> ewt.ScopeLine:
        """The scope's ended stints, indexed (built again when missing, or grown well past what the keys keep)."""
        line = self._lines.get(scope_id)
        if line is None or len(line) > 2 * sum(len(st.stints) for st in scope) + 64:
            line = self._lines[scope_id] = ewt.ScopeLine(s for st in scope for s in st.stints)
        return line

    def _rates(
        self, scope: list[KeyState], open_since: list[int], now_ms: int
    ) -> tuple[float | None, float, float | None]:
        """R, theta and the mean wait at an empty line, over the window (now - RATE_WINDOW, now].

        R: answers (after a wait) per ms with someone waiting; theta: abandons per ms waited (the waits of the
        stints that ended in the window and of the callers waiting now: the likelihood estimate of exponential
        patience); the mean wait of the answered callers who had found the line empty (None: fewer than
        ``ewt.MIN_EMPTY_LINE``). The callers still waiting since ``open_since`` wait up to ``now``; the window
        starts no earlier than the stints the keys keep (``KeyState.stints_from``).
        """
        hi = now_ms
        lo = max(now_ms - ewt.RATE_WINDOW_MS, *(st.stints_from for st in scope))
        line = self._line(self.config.targets.routing_key(scope[0].key), scope)
        waited, answered, abandoned, empty, empty_ms = line.window(lo, hi)
        if open_since:
            first_open = min(open_since)
            busy = line.busy(lo, first_open) + hi - max(lo, first_open)  # someone waits since first_open
            waited += sum(hi - since for since in open_since)
        else:
            busy = line.busy(lo, hi)
        rate = answered / busy if busy >= ewt.MIN_BUSY_MS and answered else None
        empty_wait = empty_ms / empty if empty >= ewt.MIN_EMPTY_LINE else None
        return rate, abandoned / waited if waited else 0.0, empty_wait

    @staticmethod
    def _upsert(table: dict[str, list[Any]], ident: str, value: list[Any], sign: int) -> None:
        """Set (sign 1) or remove (sign -1, if it still holds) one live value."""
        if sign > 0:
            table[ident] = value
        elif table.get(ident) == value:
            del table[ident]

    def _agent_time(self, state: KeyState, status: str, since: int, until: int, sign: int, seq: int) -> None:
        """Add an agent-state interval [since, ts) to the minutes it overlaps (split at minute boundaries).

        The whole minutes of a long interval go to one span instead (the key state holds it, so the key's
        replay guard covers it); only its partial first and last minutes are added to minutes.
        """
        name = counters.agent_ms(status)
        if status == "available" and state.key.startswith("a:"):
            # An agent's idle stretches, at their end (the longest idle of a window, as waits give the longest
            # wait of a queue's window)
            minute = _minute(state, until, seq)
            if minute is not None:
                _add(minute["w"], str(until - since), sign)
        first_whole = next_bucket_start(since)
        end_whole = bucket_start(until)
        if end_whole - first_whole >= SPAN_MIN_MS:
            _add(state.spans, _span_key(status, first_whole, end_whole), sign)
            self._agent_minutes(state, name, since, first_whole, sign, seq)
            self._agent_minutes(state, name, end_whole, until, sign, seq)
        else:
            self._agent_minutes(state, name, since, until, sign, seq)

    @staticmethod
    def _agent_minutes(state: KeyState, name: str, start: int, end: int, sign: int, seq: int) -> None:
        while start < end:
            minute_end = bucket_start(start) + MINUTE_MS
            part = min(end, minute_end) - start
            minute = _minute(state, start, seq)
            if minute is not None:
                _add(minute["c"], name, sign * part)
            start += part

    def _observe(self, state: KeyState, name: str, bounds: list[int], value: int, sign: int) -> None:
        hist = state.hist.get(name)
        if hist is None or len(hist["b"]) != len(bounds) + 1:
            hist = state.hist[name] = _hist_new(len(bounds))
        hist["b"][bisect_left(bounds, value)] += sign
        hist["s"] += sign * value
        hist["n"] += sign

    def settle(self, state: KeyState) -> None:
        """At each checkpoint: forget what is past retention, and raise the exported values to the totals.

        Minutes and sources past their retention go. The never-decrease values rise to the current totals (only
        checkpointed values are exported, so a retraction and its correction between two checkpoints never show).
        """
        self._prune(state)
        hwm = state.hwm
        for name, value in self.exported_counters(state).items():
            if value > hwm.get(name, 0) or name in _MAY_DECREASE:
                hwm[name] = value

    def exported_counters(self, state: KeyState) -> dict[str, int]:
        """True cumulative values of every exported counter series of a key (before the never-decrease rule)."""
        out = dict(state.totals)
        out["offered"] = sum(state.totals.get(k, 0) for k in ("answered", "abandoned", "exited"))
        for name, hist in state.hist.items():
            cumulative = 0
            for i, count in enumerate(hist["b"]):
                cumulative += count
                out[counters.histogram_bucket(name, i)] = cumulative
            out[counters.histogram_sum(name)] = hist["s"]
        return out

    def _prune(self, state: KeyState) -> None:
        horizon = state.wm - RETENTION_MS
        for start in [m for m in state.minutes if m < horizon]:
            if state.key.startswith("q:"):
                self._fold_hour(state, start)
            del state.minutes[start]
            state.dirty_minutes.discard(start)
            state.deleted_minutes.add(start)
        # A span keeps only the minutes a minute bucket would keep: those starting at or after the horizon.
        first_kept = next_bucket_start(horizon)
        for span in list(state.spans):
            agent_state, first, end = _span(span)
            if first < first_kept:
                count = state.spans.pop(span)
                if end > first_kept:
                    _add(state.spans, _span_key(agent_state, first_kept, end), count)
        # A caller told on entry who never left (its call expired) is forgotten after the call timeout, one scored
        # after _SCORED_KEPT_MS; stints older than the rates' window and _SCORED_KEPT_MS go too.
        gone, scored_before = state.wm - self.config.call_timeout_ms, state.wm - _SCORED_KEPT_MS
        for call in [c for c, t in state.told.items() if t[0] < gone or 0 <= t[1] < scored_before]:
            del state.told[call]
        state.stints_from = max(state.stints_from, state.wm - ewt.RATE_WINDOW_MS - _SCORED_KEPT_MS)
        old = bisect_left(state.stints, [state.stints_from])
        if old:
            del state.stints[:old]
        oldest = state.wm - self.config.volume_weeks * WEEK_MS
        for start in [h for h in state.hours if h < oldest]:
            del state.hours[start]
            state.dirty_hours.add(start)
        forget = state.wm - self.config.dedup_ttl_ms
        for src in [s for s, (_off, ts) in state.applied.items() if ts < forget]:
            del state.applied[src]

    def _fold_hour(self, state: KeyState, start: int) -> None:
        """Add a minute past its retention to its local hour (once: the hour lists the minutes it holds)."""
        hour_start = local_hour_start(self.config.windows.zone, start)
        hour = state.hours.get(hour_start)
        if hour is None:
            hour = state.hours[hour_start] = {"c": {}, "m": []}
        if start in hour["m"]:
            return
        hour["m"].append(start)
        counts = state.minutes[start]["c"]
        for name in HOUR_COUNTERS:
            if counts.get(name):
                _add(hour["c"], name, counts[name])
        state.dirty_hours.add(hour_start)

    # -- reading ---------------------------------------------------------------------------------------------
    def stream_time_ms(self) -> int:
        """Largest fact time over all keys (the "now" of CALLPULSE_CLOCK=event)."""
        return max((s.wm for s in self.keys.values()), default=0)


def merge_states(states: list[KeyState], key: str) -> KeyState:
    """Merge several keys' state for reading (the ``_other`` fold): counters and minutes add, live unites."""
    merged = KeyState(key)
    for st in states:
        merged.wm = max(merged.wm, st.wm)
        for name, value in st.totals.items():
            _add(merged.totals, name, value)
        for name, value in st.hwm.items():
            merged.hwm[name] = merged.hwm.get(name, 0) + value
        for name, value in st.exported.items():
            merged.exported[name] = merged.exported.get(name, 0) + value
        for name, hist in st.hist.items():
            into = merged.hist.setdefault(name, _hist_new(len(hist["b"]) - 1))
            if len(into["b"]) == len(hist["b"]):
                into["b"] = [a + b for a, b in zip(into["b"], hist["b"], strict=True)]
                into["s"] += hist["s"]
                into["n"] += hist["n"]
        for span, count in st.spans.items():
            _add(merged.spans, span, count)
        for start, minute in st.minutes.items():
            into_minute = merged.minutes.setdefault(start, {"c": {}, "w": {}, "h": -1})
            for name, value in minute["c"].items():
                _add(into_minute["c"], name, value)
            for wait, count in minute["w"].items():
                _add(into_minute["w"], wait, count)
        merged.live.update({f"{st.key}/{c}": v for c, v in st.live.items()})
        merged.agents.update({f"{st.key}/{a}": v for a, v in st.agents.items()})
        merged.agents_next.update({f"{st.key}/{a}": v for a, v in st.agents_next.items()})
        merged.callbacks.update({f"{st.key}/{c}": v for c, v in st.callbacks.items()})
    return merged


#: Exported values that may go down: the sum of a histogram of signed values (announced minus actual wait).
_MAY_DECREASE = frozenset((counters.histogram_sum(ewt.ERROR_HISTOGRAM),))
#: A stint's outcome in ``KeyState.stints`` (persisted).
_STINT_OUTCOMES = {"answered": 0, "abandoned": 1, "exited": 2}
#: Answered without a wait (an agent was free): it says nothing of how fast the line moves.
_STINT_ANSWERED_AT_ONCE = 3
#: Where a ``told`` entry's fields are.
_TOLD_OTHERS = 4
_TOLD_FIRST = 5
#: How long a scored announcement is kept for a correction (a retraction comes within the grace period).
_SCORED_KEPT_MS = 15 * MINUTE_MS


def _insort(items: list[list[int]], item: list[int], sign: int, keep: int) -> None:
    """Add (sign 1) or take back (sign -1) an item of a sorted list; ``keep`` > 0: only the last ``keep``."""
    i = bisect_left(items, item)
    if sign > 0:
        items.insert(i, item)
        if 0 < keep < len(items):
            del items[0]
    elif i < len(items) and items[i] == item:
        del items[i]


def _live_value(value: list[Any]) -> list[Any]:
    """A stored live value as it is now: [status, since, caller, priority, start] (earlier: [status, since]).

    ``start`` is when the call began waiting or talking (for a call on hold, its answer).
    """
    if len(value) == 5:
        return value
    return [value[0], value[1], *(value[2:4] if len(value) == 4 else ("", 0)), value[1]]


def _agent_value(value: list[Any]) -> list[Any]:
    """A stored agent value as it is now: [status, since, reason] (earlier: [status, since], ``busy``)."""
    status = AGENT_STATE_ALIASES.get(value[0], value[0])
    return [status, value[1], value[2] if len(value) > 2 else ""]


def _renamed_span(span: str) -> str:
    agent_state, first, end = _span(span)
    return _span_key(AGENT_STATE_ALIASES.get(agent_state, agent_state), first, end)


def _rename_agent_counters(c: dict[str, int]) -> None:
    for old, new in AGENT_STATE_ALIASES.items():
        value = c.pop(counters.agent_ms(old), None)
        if value is not None:
            _add(c, counters.agent_ms(new), value)


def agents_at(state: KeyState, now_ms: int) -> dict[str, tuple[str, int, str, int]]:
    """Each agent's state in the key at ``now_ms``: (status, since, reason, start of the open interval).

    An announced next state (``agents_next``) is in force once ``now_ms`` reaches its time; an agent whose next
    state is ``offline`` is then no longer in the queue. The open interval starts at the time the current
    value's state began, which for an announced next state is the announced time.
    """
    out: dict[str, tuple[str, int, str, int]] = {}
    nexts = state.agents_next
    for agent, (status, since, reason) in state.agents.items():
        nxt = nexts.get(agent)
        if nxt is not None and now_ms >= nxt[1]:
            if nxt[0] != "offline":
                out[agent] = (nxt[0], nxt[1], nxt[2], nxt[1])
            continue
        out[agent] = (status, since, reason, since)
    return out


def _span_key(agent_state: str, first: int, end: int) -> str:
    """Key of a span in ``KeyState.spans`` (a string: the key state is JSON)."""
    return f"{agent_state}|{first}|{end}"


def _span(span: str) -> tuple[str, int, int]:
    """Inverse of ``_span_key``."""
    agent_state, first, end = span.split("|")
    return agent_state, int(first), int(end)


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def read_key(state: KeyState, config: KpiConfig, now_ms: int) -> dict[str, Any]:
    """Every windowed KPI, the window counters, and the live values of one key at ``now_ms``. Returns ``{"windows": {name: {...}}, "live": {...}}``."""
    spec = config.windows
    ranges = spec.windows(now_ms)
    sums: dict[str, dict[str, int]] = {w: {} for w in WINDOWS}
    longest: dict[str, int | None] = dict.fromkeys(WINDOWS)
    for start, minute in state.minutes.items():
        for w, (lo, hi) in ranges.items():
            if lo <= start < hi:
                acc = sums[w]
                for name, value in minute["c"].items():
                    acc[name] = acc.get(name, 0) + value
                if minute["w"]:
                    top = max(int(k) for k in minute["w"])
                    best = longest[w]
                    if best is None or top > best:
                        longest[w] = top
    targets = config.targets.for_queue(state.name)
    timeout = config.call_timeout_ms
    live = [v for v in state.live.values() if now_ms - v[1] < timeout]
    waiting = [v[1] for v in live if v[0] == "waiting"]
    agents = {s: 0 for s in AGENT_MEMBER_STATES}
    paused: dict[str, int] = {}
    now_agents = agents_at(state, now_ms)
    for agent_state, _since, reason, _start in now_agents.values():
        if agent_state in agents:
            agents[agent_state] += 1
        if agent_state == "paused":
            paused[reason] = paused.get(reason, 0) + 1
    # A static member of the queue (the queues file's ``members``) no fact has told of yet is available.
    agents["available"] += sum(1 for a in targets.members if a not in now_agents)
    if len(paused) > MAX_PAUSE_REASONS:
        ranked = sorted(paused.items(), key=lambda kv: (-kv[1], kv[0]))
        paused = dict(ranked[: MAX_PAUSE_REASONS - 1])
        paused["other"] = paused.get("other", 0) + sum(n for _r, n in ranked[MAX_PAUSE_REASONS - 1 :])
    spans = [(*_span(span), count) for span, count in state.spans.items()]
    windows = {}
    for w, (lo, hi) in ranges.items():
        c = sums[w]
        for agent_state, first, end, count in spans:
            overlap = min(hi, end) - max(lo, first)  # all on minute boundaries
            if overlap > 0:
                name = counters.agent_ms(agent_state)
                c[name] = c.get(name, 0) + count * overlap
        for agent, (agent_state, since, _reason) in state.agents.items():
            # The open interval of each agent's current state counts up to now (split at an announced change).
            nxt = state.agents_next.get(agent)
            until = min(now_ms, nxt[1]) if nxt is not None else now_ms
            for st, a, b in ((agent_state, since, until), (nxt[0] if nxt else "", until, now_ms)):
                overlap = min(hi, b) - max(lo, a)
                if overlap > 0 and st in AGENT_MEMBER_STATES:
                    name = counters.agent_ms(st)
                    c[name] = c.get(name, 0) + overlap
        windows[w] = {"start_ms": lo, "end_ms": hi, "counts": c, "kpis": kpis(c, longest[w])}
    return {
        "windows": windows,
        "live": {
            "calls_waiting": len(waiting),
            "oldest_wait_seconds": (now_ms - min(waiting)) / 1000 if waiting else 0.0,
            "calls_waiting_over_sl": sum(1 for since in waiting if now_ms - since > targets.sl_threshold_ms),
            "calls_talking": sum(1 for v in live if v[0] == "talking"),
            "calls_on_hold": sum(1 for v in live if v[0] == "held"),
            "agents": agents,
            "agents_staffed": sum(agents.values()),
            "agents_paused": dict(sorted(paused.items())),
            "callbacks_pending": len(state.callbacks),
        },
    }


def read_scores(state: KeyState, config: KpiConfig, now_ms: int) -> dict[str, dict[str, int]]:
    """Per window, the summed scores of the expected waits (``streams.ewt.accuracy`` reads them)."""
    ranges = config.windows.windows(now_ms)
    out: dict[str, dict[str, int]] = {w: {} for w in ranges}
    for start, minute in state.minutes.items():
        scores = minute.get("e")
        if scores:
            for w, (lo, hi) in ranges.items():
                if lo <= start < hi:
                    acc = out[w]
                    for name, value in scores.items():
                        acc[name] = acc.get(name, 0) + value
    return out


def read_volume(state: KeyState, config: KpiConfig, now_ms: int, weeks: int) -> dict[str, Any]:
    """A queue's calls by local weekday and hour of day over the last ``weeks`` weeks before ``now_ms``.

    Returns ``start_ms`` (the first local hour counted: ``weeks`` weeks before the hour of ``now_ms``, or the
    queue's first fact if later), ``counts`` (counter -> 7 weekdays (Monday first) x 24 hours of totals), and
    ``days`` (per weekday, the days of the range: a total divided by it is the mean per day). Hours past the
    minutes' retention come from ``KeyState.hours``, the rest from the minutes.
    """
    zone = config.windows.zone
    end = local_hour_start(zone, now_ms) + 3600_000
    start = max(end - weeks * WEEK_MS, local_hour_start(zone, state.first) if state.first else end)
    counts = {name: [[0] * 24 for _ in range(7)] for name in HOUR_COUNTERS}

    def add(ts_ms: int, values: dict[str, int]) -> None:
        local = datetime.fromtimestamp(ts_ms / 1000, zone)
        for name in HOUR_COUNTERS:
            if values.get(name):
                counts[name][local.weekday()][local.hour] += values[name]

    folded: set[int] = set()
    for hour_start, hour in state.hours.items():
        if start <= hour_start < end:
            add(hour_start, hour["c"])
        folded.update(hour["m"])
    for minute_start, minute in state.minutes.items():
        if start <= minute_start < end and minute_start not in folded:
            add(minute_start, minute["c"])
    days = [0] * 7
    day = datetime.fromtimestamp(start / 1000, zone).date()
    last = datetime.fromtimestamp((end - 1) / 1000, zone).date()
    while day <= last:
        days[day.weekday()] += 1
        day += timedelta(days=1)
    return {"start_ms": start, "end_ms": end, "counts": counts, "days": days}


def read_peaks(
    state: KeyState, config: KpiConfig, now_ms: int, window: str = "today"
) -> list[dict[str, int]]:
    """The peak number of calls waiting and talking in each interval of a window (``today``: every interval).

    Worked out in event time from the changes in the minutes (``dw``, ``dt``) and the calls waiting or talking
    now, so a peak between two scrapes is not missed. Each item: ``start_ms``, ``end_ms``, ``waiting``,
    ``talking`` (the highest number at any instant of the interval), ``offered`` (stints that left the queue in
    it).
    """
    spec = config.windows
    lo, hi = spec.window(window, now_ms)
    hi = min(hi, bucket_start(now_ms) + MINUTE_MS)
    step = spec.interval_min * MINUTE_MS
    changes: dict[str, list[tuple[int, int]]] = {"dw": [], "dt": []}
    base = {"dw": 0, "dt": 0}
    offered: dict[int, int] = {}
    for minute_start, minute in state.minutes.items():
        for field in ("dw", "dt"):
            for at, change in minute.get(field, {}).items():  # type: ignore[attr-defined]
                t = int(at)
                if t < lo:
                    base[field] += change
                elif t <= now_ms:
                    changes[field].append((t, change))
        if lo <= minute_start < hi:
            c = minute["c"]
            n = c.get("answered", 0) + c.get("abandoned", 0) + c.get("exited", 0)
            interval = minute_start - (minute_start - lo) % step
            offered[interval] = offered.get(interval, 0) + n
    timeout = config.call_timeout_ms
    for value in state.live.values():  # the calls waiting or talking now: from their start up to now
        if now_ms - value[1] < timeout:
            field = "dw" if value[0] == "waiting" else "dt"
            if value[4] < lo:
                base[field] += 1
            else:
                changes[field].append((value[4], 1))
    out = [
        {"start_ms": t, "end_ms": min(t + step, hi), "waiting": 0, "talking": 0, "offered": offered.get(t, 0)}
        for t in range(lo, hi, step)
    ]
    for field, name in (("dw", "waiting"), ("dt", "talking")):
        level = base[field]
        i = 0
        if out:
            out[0][name] = level
        # Changes at one instant apply together (ends before starts would hide nothing; starts first would
        # count a call that left as another came in the same ms): sum them per instant.
        per_instant: dict[int, int] = {}
        for t, change in changes[field]:
            per_instant[t] = per_instant.get(t, 0) + change
        for t in sorted(per_instant):
            while i + 1 < len(out) and t >= out[i + 1]["start_ms"]:
                i += 1
                out[i][name] = max(out[i][name], level)  # the level carried into the interval
            level += per_instant[t]
            if out:
                out[i][name] = max(out[i][name], level)
        while i + 1 < len(out):
            i += 1
            out[i][name] = max(out[i][name], level)
    return out


def read_alerts(
    state: KeyState, config: KpiConfig, now_ms: int, rules: SpikeRules = SPIKE_RULES
) -> dict[str, dict[str, Any]]:
    """The queue's active in-app alerts at ``now_ms`` (``streams.alerts``): name -> what it found.

    Each: ``since_ms`` (the minute step it began with), ``offered``, ``abandoned`` (the window's, short abandons
    out), ``threshold`` and ``p_value``.
    """
    end = bucket_start(now_ms)
    first = end - (rules.lookback + rules.window_min + rules.baseline_min) * MINUTE_MS
    counts = []
    for start in range(first, end + MINUTE_MS, MINUTE_MS):
        minute = state.minutes.get(start)
        c = minute["c"] if minute is not None else {}
        short = c.get("short_abandoned", 0)
        offered = c.get("answered", 0) + c.get("abandoned", 0) + c.get("exited", 0) - short
        counts.append(MinuteCounts(offered, c.get("abandoned", 0) - short))
    found = spike_state(counts, config.targets.for_queue(state.name).abandon_goal, rules)
    if found is None:
        return {}
    step, spike = found
    return {
        ABANDONMENT_SPIKE: {
            "since_ms": first + step * MINUTE_MS,
            "offered": spike.offered,
            "abandoned": spike.abandoned,
            "threshold": spike.threshold,
            "p_value": spike.p_value,
        }
    }


def read_agent(state: KeyState, config: KpiConfig, now_ms: int) -> dict[str, Any]:
    """An agent's own figures at ``now_ms`` (key ``a:<agent>``): its overall state and, per window, its work.

    Returns ``{"state": (status, since, reason) or None, "windows": {name: {...}}}``; a window holds
    ``start_ms``, ``end_ms``, ``answered``, ``missed``, ``transferred``, ``completed``, ``talk_ms``, ``hold_ms``,
    ``acw_ms`` (time in after-call work), ``average_handle_time_seconds`` ((talk + after-call work) /
    completed), ``ms_in_state`` (per state),
    ``occupancy_ratio`` and ``longest_idle_ms`` (the longest stretch available, closed in the window or going
    on now).
    """
    data = read_key(state, config, now_ms)
    current = agents_at(state, now_ms).get(state.name)
    windows = {}
    for name, w in data["windows"].items():
        c, k = w["counts"], w["kpis"]
        idle = k["longest_wait_seconds"]
        longest = round(idle * 1000) if idle is not None else None
        if current is not None and current[0] == "available" and current[3] < w["end_ms"]:
            ongoing = now_ms - current[3]
            longest = ongoing if longest is None else max(longest, ongoing)
        windows[name] = {
            "start_ms": w["start_ms"],
            "end_ms": w["end_ms"],
            "answered": c.get("answered", 0),
            "missed": c.get("agent_missed", 0),
            "transferred": c.get("transferred", 0),
            "completed": c.get("completed", 0),
            "talk_ms": c.get("talk_ms", 0),
            "hold_ms": c.get("hold_ms", 0),
            "acw_ms": c.get(counters.agent_ms("acw"), 0),
            "average_handle_time_seconds": _ratio(
                (c.get("talk_ms", 0) + c.get(counters.agent_ms("acw"), 0)) / 1000, c.get("completed", 0)
            ),
            "ms_in_state": {st: c.get(counters.agent_ms(st), 0) for st in AGENT_MEMBER_STATES},
            "occupancy_ratio": k["occupancy_ratio"],
            "longest_idle_ms": longest,
        }
    return {"state": current[:3] if current is not None else None, "windows": windows}


class Waiting(NamedTuple):
    """A caller waiting in a queue, at its place in line (``waiting_callers``)."""

    position: int
    call: str
    caller: str
    priority: int
    since_ms: int


def _ahead(line: list[tuple[int, int, str]], priority: int, since_ms: int, call: str) -> int:
    """The callers of a line (priority, since, call) served before a caller: ``waiting_callers``' order."""
    me = (-priority, since_ms, call)
    return sum(1 for p, since, other in line if (-p, since, other) < me)


def waiting_callers(state: KeyState, config: KpiConfig, now_ms: int) -> list[Waiting]:
    """The callers waiting in a queue at ``now_ms``, in the order they are served.

    Higher priority first, then the longer wait, then the call id (a fixed order for equal times); a call
    silent for longer than the call timeout is not waiting any more (as for ``calls_waiting``).
    """
    timeout = config.call_timeout_ms
    waiting = sorted(
        (-v[3], v[1], call, v[2])
        for call, v in state.live.items()
        if v[0] == "waiting" and now_ms - v[1] < timeout
    )
    return [
        Waiting(i, call, caller, -neg_priority, since)
        for i, (neg_priority, since, call, caller) in enumerate(waiting, start=1)
    ]


def kpis(c: dict[str, int], longest_wait_ms: int | None) -> dict[str, float | None]:
    """The windowed KPIs of DESIGN 4 from a window's summed counters; ``None`` where undefined."""
    answered = c.get("answered", 0)
    abandoned = c.get("abandoned", 0)
    short = c.get("short_abandoned", 0)
    offered = answered + abandoned + c.get("exited", 0)
    completed = c.get("completed", 0)
    attempts = c.get("attempt", 0)
    csat = sum(c.get(counters.survey("csat", b), 0) for b, _, _ in SURVEY_BANDS["csat"])
    nps = sum(c.get(counters.survey("nps", b), 0) for b, _, _ in SURVEY_BANDS["nps"])
    on_calls = c.get(counters.agent_ms("on_call"), 0) + c.get(counters.agent_ms("acw"), 0)
    staffed = on_calls + c.get(counters.agent_ms("available"), 0)
    return {
        "offered_calls": float(offered),
        "abandonment_ratio": _ratio(abandoned - short, offered - short),
        "service_level_ratio": _ratio(c.get("answered_within_sl", 0), answered + abandoned - short),
        "average_speed_of_answer_seconds": _ratio(c.get(counters.wait_sum("answered"), 0) / 1000, answered),
        "average_abandon_wait_seconds": _ratio(c.get(counters.wait_sum("abandoned"), 0) / 1000, abandoned),
        "longest_wait_seconds": longest_wait_ms / 1000 if longest_wait_ms is not None else None,
        "average_handle_time_seconds": _ratio((c.get("talk_ms", 0) + c.get("acw_ms", 0)) / 1000, completed),
        "average_hold_seconds": _ratio(c.get("hold_ms", 0) / 1000, completed),
        "transfer_ratio": _ratio(c.get("transferred", 0), answered),
        "connection_ratio": _ratio(c.get("connected", 0), attempts),
        "contact_ratio": _ratio(c.get("contact", 0), attempts),
        "conversion_ratio": _ratio(c.get("conversion", 0), attempts),
        "csat_ratio": _ratio(c.get(counters.survey("csat", "positive"), 0), csat),
        "dsat_ratio": _ratio(c.get(counters.survey("csat", "negative"), 0), csat),
        "nps_score": _ratio(
            c.get(counters.survey("nps", "promoter"), 0) - c.get(counters.survey("nps", "detractor"), 0), nps
        ),
        "occupancy_ratio": _ratio(on_calls, staffed),
        "repeat_call_ratio": _ratio(c.get("repeat", 0), c.get("entered", 0)),
        "abandon_recovery_ratio": _ratio(
            c.get("abandon_recovered", 0), c.get("abandon_recovered", 0) + c.get("abandon_unrecovered", 0)
        ),
    }
