"""The aggregate stage: calls.facts -> the KPI engine (``streams.kpi``), whose state /metrics and the API read.

Each facts message holds the facts of one queue or campaign, grouped by the sessionizer message that
produced them; the engine applies each group once (the facts of a replayed source offset count once). The
keys' states and minute buckets are checkpointed to the ``aggregates`` table (app.checkpoint, app.store);
counters are exported only once their checkpoint is durable.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

import orjson

from app.checkpoint import CheckpointedStage
from app.store import hour_key, minute_key, parse_aggregate_key, parse_hour_key, state_key
from streams.kpi import Hour, KeyState, KpiEngine, Minute

log = logging.getLogger(__name__)


class Aggregator(CheckpointedStage):
    """calls.facts -> the KPI engine. State: one key per queue/campaign plus one key per minute bucket."""

    def __init__(self, table: Any, engine: KpiEngine, interval_s: float) -> None:
        super().__init__(table, interval_s)
        self.engine = engine
        self.dirty: dict[int, set[str]] = defaultdict(set)

    def reset(self) -> None:
        """Also forget the engine's queues/campaigns and the dirty keys (``load`` restores what was saved)."""
        super().reset()
        self.engine.reset()
        self.dirty.clear()

    def confirmed(self, staged: Any) -> None:
        """Export each checkpointed key's counters at the values its checkpoint made durable (``hwm``)."""
        # Counters are exported from durable state only: a restart can never show a value below one already
        # scraped, which Prometheus would take for a counter reset.
        for state, hwm in staged:
            state.exported = hwm

    def load(self, partitions: set[int]) -> None:
        """Load every key of ``partitions`` from the store (after a rebalance, before processing resumes)."""
        states: dict[str, dict] = {}
        minutes: dict[str, dict[int, Minute]] = defaultdict(dict)
        hours: dict[str, dict[int, Hour]] = defaultdict(dict)
        for raw_key, raw_value in self.table.data.items():
            if raw_value is None:
                continue
            value = orjson.loads(raw_value)
            if value.get("p") not in partitions:
                continue
            hour = parse_hour_key(raw_key)
            if hour is not None:
                del value["p"]
                hours[hour[0]][hour[1]] = value
                continue
            parsed = parse_aggregate_key(raw_key)
            if parsed is None:
                continue
            key, start = parsed
            if start is None:
                states[key] = value
            else:
                del value["p"]
                minutes[key][start] = value
        for key in set(states) | set(minutes):
            if key in states:
                self.engine.keys[key] = KeyState.restore(key, states[key], minutes[key], hours.get(key))
            else:  # minutes of a key whose state was never checkpointed: a replay rebuilds it
                self.engine.state(key).minutes = minutes[key]
                self.engine.state(key).hours = hours.get(key, {})
        self.engine.loaded()
        log.info("loaded %d queues/campaigns for partitions %s", len(states), sorted(partitions))

    def dirty_items(self, partition: int) -> tuple[list[tuple[bytes, bytes | None]], Any]:
        """The writes of the partition's changed queues/campaigns, and each key state with its ``hwm``.

        Per key: its changed hours (before the minutes folded into them go), its changed minute buckets, its
        deleted ones (``None``), then its key state, settled first (past retention forgotten or folded into
        hours, exported values raised to the totals).
        """
        items: list[tuple[bytes, bytes | None]] = []
        staged: list[tuple[KeyState, dict[str, int]]] = []
        for key in self.dirty.pop(partition, ()):
            state = self.engine.keys[key]
            # Hours, then minutes, the key state last: a checkpoint cut short leaves a prefix (one changelog
            # partition keeps order), so a persisted key state implies its minutes are persisted too, and a
            # minute deleted implies its hour (which lists the minutes folded into it) is persisted.
            for start in state.dirty_hours:
                hour = state.hours.get(start)
                if hour is None:
                    items.append((hour_key(key, start), None))
                else:
                    items.append((hour_key(key, start), orjson.dumps({**hour, "p": partition})))
            state.dirty_hours = set()
            for start in state.dirty_minutes:
                minute = dict(state.minutes[start])
                minute["p"] = partition
                items.append((minute_key(key, start), orjson.dumps(minute)))
            for start in state.deleted_minutes:
                items.append((minute_key(key, start), None))
            state.dirty_minutes = set()
            state.deleted_minutes = set()
            self.engine.settle(state)
            snapshot = state.snapshot()
            snapshot["p"] = partition
            items.append((state_key(key), orjson.dumps(snapshot)))
            staged.append((state, dict(state.hwm)))
        return items, staged

    async def apply_message(self, message: Any) -> None:
        """Apply a facts message to the engine unless its queue/campaign already holds that offset."""
        partition, offset = message.partition, message.offset
        key = message.key.decode("utf-8")
        state = self.engine.state(key)
        if offset > state.hw:
            for src, src_offset, facts in orjson.loads(message.value):
                self.engine.apply_wire(key, src, src_offset, facts, seq=offset)
            state.hw = offset
            self.dirty[partition].add(key)
