"""The domain core alone (no Kafka, no Faust): parse, sessionize and aggregate in one process.

    .venv/bin/python bench/core.py [EVENTS]

Simulated traffic (``lively`` x20, seed 1) grouped into 100-event messages by call bucket, then each message
is parsed, applied to its bucket, swept, and its facts applied to the KPI engine (through their JSON wire
form, as between the two agents). Prints events/s and the time of each stage.
"""

from __future__ import annotations

import itertools
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.producing import message_key  # noqa: E402
from streams.calls import BucketState, SessionConfig  # noqa: E402
from streams.facts import to_wire  # noqa: E402
from streams.kpi import KpiConfig, KpiEngine  # noqa: E402
from streams.simulator import ProfileSimulator, load_profile  # noqa: E402
from streams.validation import ValidationConfig, parse_message  # noqa: E402


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    start_ms = 1_767_258_000_000
    sim = ProfileSimulator(load_profile("lively"), random.Random(1), start_ms, hours=None, scale=20.0, seed=1)
    events = list(itertools.islice(sim.run(), n))
    buffers: dict[bytes, list[bytes]] = defaultdict(list)
    messages = []
    for e in events:
        key = message_key(e)
        buffers[key].append(orjson.dumps(e))
        if len(buffers[key]) == 100:
            messages.append((key, b"[" + b",".join(buffers.pop(key)) + b"]"))
    messages.extend((key, b"[" + b",".join(items) + b"]") for key, items in buffers.items())
    validation = ValidationConfig(max_clock_skew_ms=10**13)
    session = SessionConfig()
    buckets: dict[bytes, BucketState] = {}
    engine = KpiEngine(KpiConfig())
    t_parse = t_session = t_aggregate = 0.0
    t = time.perf_counter()
    for offset, (key, value) in enumerate(messages):
        t0 = time.perf_counter()
        parsed, _ = parse_message(value, validation, start_ms)
        t1 = time.perf_counter()
        bucket = buckets.get(key) or buckets.setdefault(key, BucketState(session))
        groups: dict[str, list] = defaultdict(list)
        for event in parsed:
            for fact in bucket.apply(event).facts:
                groups[fact.key].append(fact)
        for fact in bucket.sweep():
            groups[fact.key].append(fact)
        t2 = time.perf_counter()
        for fact_key, facts in groups.items():
            wire = [[key.decode(), offset, [to_wire(f) for f in facts]]]
            for src, src_offset, wire_facts in orjson.loads(orjson.dumps(wire)):
                engine.apply_wire(fact_key, src, src_offset, wire_facts, seq=offset)
        t3 = time.perf_counter()
        t_parse, t_session, t_aggregate = t_parse + t1 - t0, t_session + t2 - t1, t_aggregate + t3 - t2
    elapsed = time.perf_counter() - t
    print(f"{len(events)} events in {len(messages)} messages: {elapsed:.2f} s, {len(events) / elapsed:,.0f} events/s "
          f"(parse {t_parse:.2f} s, sessionize {t_session:.2f} s, aggregate {t_aggregate:.2f} s)")


if __name__ == "__main__":
    main()
