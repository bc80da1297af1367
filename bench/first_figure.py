"""A first throughput figure (not a test): one worker over a file of pre-produced events.

Starts the embedded broker, writes N events of interleaved calls (the simulator's lively profile, seed 1) to a JSON
Lines file, produces them with ``callpulse produce --batch B`` before any worker runs, then starts one
worker and times it from its first answer on /metrics until ``callpulse_events_total`` (summed over types)
reaches N and every queue's calls are counted. Prints events/s and writes JSON.

    .venv/bin/python bench/first_figure.py --events 100000 --batch 100
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import orjson
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.broker import start_broker, stop  # noqa: E402
from streams.simulator import ProfileSimulator, load_profile  # noqa: E402
from tests.e2e.conftest import free_port  # noqa: E402


def events_total(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:  # noqa: S310
        text = r.read().decode()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "callpulse_events_total")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "first_figure.json"))
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="callpulse-bench-"))
    start_ms = 1_767_258_000_000  # 2026-01-01T09:00Z: event time, CLOCK=event
    sim = ProfileSimulator(load_profile("lively"), random.Random(1), start_ms, hours=None, scale=4.0, seed=1)
    events = list(itertools.islice(sim.run(), args.events))
    path = work / "events.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(e) for e in events) + b"\n")
    broker_port, web_port = free_port(), free_port()
    broker = start_broker("127.0.0.1", broker_port, log_path=work / "broker.log")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLPULSE_")}
    env.update(CALLPULSE_BROKER=f"kafka://127.0.0.1:{broker_port}", CALLPULSE_WEB_PORT=str(web_port),
               CALLPULSE_PARTITIONS=str(args.partitions), CALLPULSE_CALLER_KEY="bench", CALLPULSE_CLOCK="event",
               CALLPULSE_DATADIR=str(work / "data"), CALLPULSE_LOG_LEVEL="warning")
    worker = None
    try:
        t = time.monotonic()
        subprocess.run([sys.executable, "-m", "app", "produce", "--batch", str(args.batch), str(path)], env=env,
                       check=True, cwd=REPO)
        produce_s = time.monotonic() - t
        log = open(work / "worker.log", "wb")  # noqa: SIM115
        worker = subprocess.Popen([sys.executable, "-m", "app", "worker"], env=env, cwd=work, stdout=log,
                                  stderr=subprocess.STDOUT)
        while True:
            try:
                events_total(web_port)
                break
            except OSError:
                time.sleep(0.05)
        t0 = time.monotonic()
        seen = 0.0
        first = None
        while seen < args.events:
            time.sleep(0.05)
            seen = events_total(web_port)
            if seen and first is None:
                first = (time.monotonic(), seen)
            if time.monotonic() - t0 > 1800:
                raise SystemExit(f"timeout: {seen} of {args.events} events")
        t1 = time.monotonic()
        elapsed = t1 - t0
        assert first is not None
        steady = (args.events - first[1]) / (t1 - first[0])
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(30)
        stop(broker)
    result = {"events": args.events, "batch": args.batch, "partitions": args.partitions,
              "seconds": round(elapsed, 2), "events_per_second": round(args.events / elapsed),
              "events_per_second_after_first_event": round(steady),
              "produce_seconds": round(produce_s, 2)}
    print(json.dumps(result))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
