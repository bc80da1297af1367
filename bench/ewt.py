"""How honest each expected-wait estimator is: announce at entry, score when the caller leaves the queue.

    .venv/bin/python bench/ewt.py [--data bank,erlang,profile,asterisk] [--days N]
    .venv/bin/python bench/ewt.py --latency [--queues 50] [--hours 24]

Each data set's events go, in time order, through the product's own core: the sessionizer's buckets
(``streams.sessions``), then the KPI engine (``streams.kpi``), which tells every caller entering a queue what
each estimator announces (``streams.ewt``) and scores it when the call leaves the queue. The table is read from
the engine's own counters, per queue and estimator: RMSE and mean error (announced minus actual, s) over the
answered calls, their count, and the ratio of each RMSE to Asterisk's.

Data sets:
- ``bank``: the Anonymous Bank's February 1999 calls (``../shared/data``), real; queued calls carry the bank's
  priority; run twice: every queue on its own, and all queues in one group (the bank's agents serve them all);
- ``erlang``: the simulator's Erlang-A queue (M/M/N+M), at three loads, 24 h each;
- ``profile``: the simulator's calibrated ``bank`` profile (per-queue agents), ``--days`` days;
- ``asterisk``: the real Asterisk 20 queue_log files of ``../shared/fixtures`` (few calls: indicative only).

``--latency``: how long the API's answer takes from memory. ``--queues`` Erlang-A queues (170 calls/h, 10
agents each) run ``--hours`` through the core (cut 10 minutes before their arrivals end, callers waiting); then the expected wait of every queue (for a caller entering
now, and at place 1) and its JSON answer (``app.http_api.ewt_json``, with every window's accuracy) are timed,
10 rounds over all queues: p50, p99 and max in ms.
"""

from __future__ import annotations

import argparse
import csv
import heapq
import itertools
import random
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streams import ewt
from streams.adapters.asterisk import QueueLogParser, detect_format
from streams.config import QueueTargets, TargetsConfig
from streams.events import CallEvent
from streams.facts import to_wire
from streams.kpi import KpiConfig, KpiEngine
from streams.sessions import BucketState, SessionConfig
from streams.simulator import ErlangAConfig, ProfileSimulator, erlang_a, load_profile
from streams.validation import ValidationConfig, validate_event

SHARED = Path(__file__).resolve().parents[2] / "shared"
BANK = SHARED / "data" / "anonymous-bank-1999-02" / "calls.tsv"
FIXTURES = SHARED / "fixtures" / "asterisk"
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
FAR_FUTURE_MS = 4_000_000_000_000


def run(events: Iterable[dict[str, Any]], targets: TargetsConfig) -> KpiEngine:
    """Events (in time order, one message each) through buckets and the engine; the engine after them."""
    session = SessionConfig(grace_ms=120_000, call_timeout_ms=4 * 3600_000, max_event_age_ms=86_400_000)
    validation = ValidationConfig(max_event_bytes=65536, max_clock_skew_ms=0, caller_key=b"ewt")
    engine = KpiEngine(KpiConfig(targets=targets, call_timeout_ms=4 * 3600_000))
    buckets: dict[str, BucketState] = {}
    offsets: dict[str, int] = defaultdict(int)
    for raw in events:
        event: CallEvent = validate_event(raw, validation, FAR_FUTURE_MS)
        key = event.key
        bucket = buckets.get(key)
        if bucket is None:
            bucket = buckets[key] = BucketState(session)
        groups: dict[str, list[list[object]]] = defaultdict(list)
        applied = bucket.apply(event)
        for fact in (*applied.facts, *bucket.sweep()):
            groups[fact.key].append(to_wire(fact))
        bucket.outbox.clear()
        offsets[key] += 1
        for fact_key, facts in groups.items():
            engine.apply_wire(fact_key, key, offsets[key], facts)
    return engine


def table(name: str, engine: KpiEngine) -> list[str]:
    """Rows of the result: per queue, each estimator's RMSE / mean error / n and its ratio to Asterisk's."""
    rows = []
    for key in sorted(engine.keys):
        if not key.startswith("q:"):
            continue
        acc = ewt.accuracy(engine.keys[key].totals)
        base = acc["asterisk"]["rmse_seconds"]
        if not acc["asterisk"]["answered"]:
            continue
        cells = []
        for est in ewt.ESTIMATORS:
            a = acc[est]
            rmse, mean = a["rmse_seconds"], a["mean_error_seconds"]
            ratio = f"{rmse / base:.2f}" if rmse is not None and base else "-"
            cells.append(f"{rmse:6.1f} {mean:+6.1f} ({ratio})" if rmse is not None else "      -")
        rows.append(f"{name:<22} {key[2:]:<14} {acc['asterisk']['answered']:>6}  " + "  ".join(cells))
    return rows


# -- data sets --------------------------------------------------------------------------------------------
def _seconds(hms: str) -> int:
    h, m, s = (int(x) for x in hms.split(":"))
    return h * 3600 + m * 60 + s


def bank_events() -> list[dict[str, Any]]:
    """The bank's calls as canonical events (epoch seconds of the date and local time read as UTC)."""
    out: list[dict[str, Any]] = []
    with BANK.open() as f:
        for i, row in enumerate(csv.DictReader(f, delimiter="\t")):
            if row["outcome"] == "PHANTOM":
                continue
            day = datetime.strptime("19" + row["date"], "%Y%m%d").replace(tzinfo=UTC).timestamp()
            entry = day + _seconds(row["vru_entry"])

            def at(hms: str, entry: float = entry, day: float = day) -> float:
                t = day + _seconds(hms)
                return t + 86400 if t < entry - 3600 else t  # past midnight

            call = f"bank-{i}"
            ev = (
                [{"type": "ring", "ts": entry, "caller": row["customer_id"]}]
                if row["customer_id"] != "0"
                else []
            )
            queued = row["q_start"] != "0:00:00"
            if queued:
                q_start = at(row["q_start"])
                q_exit = q_start + int(row["q_time"])
                ev.append(
                    {"type": "queue", "ts": q_start, "queue": row["type"], "priority": int(row["priority"])}
                )
                if row["outcome"] == "AGENT":
                    ev.append({"type": "answer", "ts": q_exit, "agent": row["server"]})
                    ev.append({"type": "hangup", "ts": max(q_exit, at(row["ser_exit"]))})
                else:
                    ev.append({"type": "abandon", "ts": q_exit})
            elif row["outcome"] == "AGENT":
                ev.append(
                    {
                        "type": "answer",
                        "ts": at(row["ser_start"]),
                        "agent": row["server"],
                        "queue": row["type"],
                    }
                )
                ev.append({"type": "hangup", "ts": at(row["ser_exit"])})
            else:
                ev.append({"type": "hangup", "ts": at(row["vru_exit"])})
            for j, e in enumerate(ev):
                e.update(event_id=f"{call}-{j}", call_id=call)
                out.append(e)
    out.sort(key=lambda e: e["ts"])
    return out


def erlang_events(calls_per_hour: float, agents: int, seed: int) -> Iterator[dict[str, Any]]:
    """The Erlang-A queue: AHT 240 s, mean patience 180 s, 24 h."""
    config = ErlangAConfig(calls_per_hour, agents, aht_s=240, patience_s=180, hours=24)
    return erlang_a(config, random.Random(seed), START_MS, seed=seed)


def profile_events(days: int) -> Iterator[dict[str, Any]]:
    sim = ProfileSimulator(load_profile("bank"), random.Random(7), START_MS, hours=24 * days, seed=7)
    return sim.run()


def asterisk_events(path: Path) -> list[dict[str, Any]]:
    lines = path.read_text().splitlines()
    parser = QueueLogParser(fmt=detect_format(lines[0]))
    out = [e for line in lines for e in parser.parse(line)]
    out.sort(key=lambda e: e["ts"])
    return out


def latency(queues: int, hours: float) -> None:
    """Time the expected-wait answer of each of ``queues`` busy queues, from memory."""
    from app.http_api import ewt_json
    from app.settings import Settings

    runs = [
        erlang_a(
            ErlangAConfig(170, 10, 240, 180, hours, queue=f"q{i:02d}"), random.Random(i), START_MS, seed=i
        )
        for i in range(queues)
    ]
    began = time.monotonic()
    # Cut before the arrivals end (the simulator then drains every queue): callers are waiting at the cut.
    cut = START_MS / 1000 + hours * 3600 - 600
    merged = itertools.takewhile(lambda e: e["ts"] < cut, heapq.merge(*runs, key=lambda e: e["ts"]))
    engine = run(merged, TargetsConfig())
    print(f"{queues} queues x {hours:g} h through the core: {time.monotonic() - began:.0f} s")
    settings = Settings.from_env({})
    now = engine.stream_time_ms()
    states = [s for k, s in sorted(engine.keys.items()) if k.startswith("q:")]
    waiting = sum(sum(1 for v in s.live.values() if v[0] == "waiting") for s in states)
    for accuracy, rounds in ((False, 10), (True, 2)):
        times: list[float] = []
        for _ in range(rounds):
            for state in states:
                for position in (None, 1) if any(v[0] == "waiting" for v in state.live.values()) else (None,):
                    now += 1  # a new instant each time: nothing worked out for the one before is reused
                    t0 = time.perf_counter()
                    ewt_json(state, engine, settings, now, position, 0, accuracy)
                    times.append(time.perf_counter() - t0)
        times.sort()
        ms = [1000 * times[int(q * (len(times) - 1))] for q in (0.5, 0.99)]
        print(
            f"{'with' if accuracy else 'without'} accuracy: {len(times)} answers, {waiting} callers waiting: "
            f"p50 {ms[0]:.2f} ms, p99 {ms[1]:.2f} ms, max {1000 * times[-1]:.2f} ms"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="bank,erlang,profile,asterisk")
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--latency", action="store_true")
    ap.add_argument("--queues", type=int, default=50)
    ap.add_argument("--hours", type=float, default=24)
    args = ap.parse_args()
    if args.latency:
        latency(args.queues, args.hours)
        return
    wanted = set(args.data.split(","))
    header = f"{'data':<22} {'queue':<14} {'calls':>6}  " + "  ".join(f"{e:^20}" for e in ewt.ESTIMATORS)
    print("RMSE / mean error (s) over answered queued calls, announced at entry (ratio to asterisk's RMSE)")
    print(header)
    began = time.monotonic()
    if "bank" in wanted:
        events = bank_events()
        queues = sorted({e["queue"] for e in events if e["type"] == "queue"})
        for label, targets in (
            ("bank (each queue)", TargetsConfig()),
            ("bank (one group)", TargetsConfig(queues={q: QueueTargets(group="bank") for q in queues})),
        ):
            print("\n".join(table(label, run(events, targets))), flush=True)
    if "erlang" in wanted:
        for calls, agents in ((150, 10), (170, 10), (200, 10)):
            label = f"erlang-a {calls}/h {agents} ag"
            print("\n".join(table(label, run(erlang_events(calls, agents, 1), TargetsConfig()))), flush=True)
    if "profile" in wanted:
        print(
            "\n".join(table(f"profile bank {args.days} d", run(profile_events(args.days), TargetsConfig())))
        )
    if "asterisk" in wanted:
        for path in sorted(FIXTURES.glob("*queue_log*")):
            print("\n".join(table(path.name[:22], run(asterisk_events(path), TargetsConfig()))), flush=True)
    print(f"({time.monotonic() - began:.0f} s)")


if __name__ == "__main__":
    main()
