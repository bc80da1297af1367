"""The callpulse benchmark (DESIGN 8): one worker against the raw consumer loop, in the same run.

    .venv/bin/python bench/run.py                      # both message shapes, prints a table, writes JSON
    .venv/bin/python bench/run.py --memory-calls 1000000
    .venv/bin/python bench/run.py --profile             # and where the worker's time goes (py-spy)

For each message shape (100-event arrays, single-event messages), on a fresh embedded broker:

1. fills ``calls.events`` with simulated calls (the ``lively`` profile scaled so that more than 1,000 calls
   are open at once; keyed by call bucket, a batch holds one bucket's events);
2. (a) the raw loop: aiokafka ``getmany(max_records=10000)`` over the topic, ``orjson.loads`` of each
   message value, counting events;
3. (b) one callpulse worker, started after the topic is full, timed from the first event counted on
   /metrics (``callpulse_events_total``) until every event is sessionized *and* aggregated: the worker's
   consumer group has committed ``calls.events`` and ``calls.facts`` up to their end offsets (commits follow
   the durable checkpoints, from which the KPI counters on /metrics are exported); the sessionizer's own
   rate (until ``callpulse_events_total`` counts every event) is reported beside it, and the worker's CPU
   time over the span in cores (1.0: one core busy throughout, all its threads together);
4. (c) event-to-metric latency at a steady 10,000 events/s: simulated traffic paced at that rate, plus a
   probe call every 100 ms into queue ``_probe``; a probe's latency runs from its send until the worker's
   API counts it waiting (live values come from the working state; counters follow at the next checkpoint);
5. (d) the worker's peak RSS; with ``--memory-calls N``, RSS as it processes N calls (flat is the goal).

With ``--profile``, py-spy samples the worker during 3. and the summary by layer (``bench/spy.py``) is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.broker import start_broker, stop  # noqa: E402
from app.producing import message_key  # noqa: E402
from streams.simulator import ProfileSimulator, load_profile  # noqa: E402
from tests.e2e.conftest import free_port  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import spy  # noqa: E402

TOPIC = "calls.events"
FACTS_TOPIC = "calls.facts"
APP_ID = "callpulse"  # CALLPULSE_APP_ID's default: the worker's consumer group
PARTITIONS = 8
SCALE = 150.0  # lively x 150: about 21,600 calls an hour, more than 1,000 open at once


def simulated(start_ms: int, seed: int) -> ProfileSimulator:
    return ProfileSimulator(
        load_profile("lively"), random.Random(seed), start_ms, hours=None, scale=SCALE, seed=seed
    )


def concurrency(events: list[dict]) -> int:
    """Most calls open at once: from a call's first event to its last."""
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    for e in events:
        call = e.get("call_id")
        if call:
            first.setdefault(call, e["ts"])
            last[call] = e["ts"]
    edges = sorted([(t, 1) for t in first.values()] + [(t, -1) for t in last.values()])
    peak = current = 0
    for _, step in edges:
        current += step
        peak = max(peak, current)
    return peak


def messages(events: list[dict], batch: int) -> list[tuple[bytes, bytes, int]]:
    """(key, value, events) per message: events grouped by call bucket, ``batch`` per message, in order."""
    out = []
    buffers: dict[bytes, list[bytes]] = defaultdict(list)
    for e in events:
        key = message_key(e)
        buffers[key].append(orjson.dumps(e))
        if len(buffers[key]) == batch:
            items = buffers.pop(key)
            out.append((key, items[0] if batch == 1 else b"[" + b",".join(items) + b"]", len(items)))
    for key, items in buffers.items():
        out.append((key, items[0] if batch == 1 else b"[" + b",".join(items) + b"]", len(items)))
    return out


#: calls.events partition -> offset after the last message produced (the embedded broker reports end offsets
#: exactly only for single-record batches, which the bench's producer does not use)
produced_ends: dict[int, int] = {}


async def produce(port: int, msgs: list[tuple[bytes, bytes, int]], create: bool = True) -> float:
    if create:
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic

        admin = AIOKafkaAdminClient(bootstrap_servers=f"127.0.0.1:{port}")
        await admin.start()
        for name in ("calls.events", "calls.facts", "calls.deadletter"):
            await admin.create_topics([NewTopic(name, PARTITIONS, 1)])
        await admin.close()
        produced_ends.clear()
    producer = AIOKafkaProducer(bootstrap_servers=f"127.0.0.1:{port}", linger_ms=20, max_batch_size=1 << 20)
    await producer.start()
    t = time.monotonic()
    futures = []

    async def confirm() -> None:
        for meta in await asyncio.gather(*futures):
            produced_ends[meta.partition] = max(produced_ends.get(meta.partition, 0), meta.offset + 1)
        futures.clear()

    for key, value, _ in msgs:
        futures.append(await producer.send(TOPIC, value=value, key=key))
        if len(futures) >= 20_000:
            await confirm()
    await confirm()
    await producer.stop()
    return time.monotonic() - t


async def unsettled(port: int) -> int:
    """Messages of calls.events and calls.facts beyond the worker group's committed offsets.

    calls.events first: once its commits cover every message produced, the checkpoints behind them have
    confirmed every facts message those events caused, so calls.facts' end offsets are final (the worker
    writes single-record batches, whose end offsets the embedded broker reports exactly).
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=f"127.0.0.1:{port}", group_id=APP_ID, enable_auto_commit=False
    )
    await consumer.start()
    try:
        behind = 0
        for partition, end in produced_ends.items():
            behind += max(end - (await consumer.committed(TopicPartition(TOPIC, partition)) or 0), 0)
        if behind:
            return behind
        tps = [TopicPartition(FACTS_TOPIC, p) for p in range(PARTITIONS)]
        ends = await consumer.end_offsets(tps)
        for tp in tps:
            behind += ends[tp] - (await consumer.committed(tp) or 0)
        return behind
    finally:
        await consumer.stop()


def wait_settled(port: int, timeout: float = 3600) -> float:
    """Wait until the worker has committed everything on both topics; return the monotonic time then."""
    deadline = time.monotonic() + timeout
    while True:
        behind = asyncio.run(unsettled(port))
        if behind == 0:
            return time.monotonic()
        if time.monotonic() > deadline:
            raise SystemExit(f"timeout: the worker is {behind} messages behind")
        time.sleep(0.2)


async def raw_loop(port: int, expected_messages: int) -> tuple[float, int]:
    """DESIGN 8's raw loop: getmany(max_records=10000), orjson.loads of each value, count the events."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=f"127.0.0.1:{port}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 << 20,
        fetch_max_bytes=64 << 20,
    )
    await consumer.start()
    consumer.assign([TopicPartition(TOPIC, p) for p in range(PARTITIONS)])
    await consumer.seek_to_beginning()
    seen = events = 0
    t = time.monotonic()
    while seen < expected_messages:
        batch = await consumer.getmany(max_records=10000, timeout_ms=1000)
        for records in batch.values():
            for record in records:
                value = orjson.loads(record.value)
                events += len(value) if isinstance(value, list) else 1
                seen += 1
    elapsed = time.monotonic() - t
    await consumer.stop()
    return elapsed, events


#: Settings every worker of the run gets besides the bench's own (``--compression``).
WORKER_SETTINGS: dict[str, str] = {}


class WorkerProc:
    def __init__(self, broker_port: int, work: Path, name: str) -> None:
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CALLPULSE_")}
        env.update(
            CALLPULSE_BROKER=f"kafka://127.0.0.1:{broker_port}",
            CALLPULSE_WEB_PORT=str(self.port),
            CALLPULSE_PARTITIONS=str(PARTITIONS),
            CALLPULSE_CALLER_KEY="bench",
            CALLPULSE_CLOCK="event",
            CALLPULSE_DATADIR=str(work / f"data-{name}"),
            CALLPULSE_LOG_LEVEL="warning",
            CALLPULSE_MAX_CLOCK_SKEW="86400",
            **WORKER_SETTINGS,
        )
        self.log = (work / f"worker-{name}.log").open("wb")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app", "worker"],
            env=env,
            cwd=work,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def metrics(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=30) as r:
            text = r.read().decode()
        out: dict[str, float] = defaultdict(float)
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out[s.name] += s.value
        return out

    def events_total(self) -> float:
        try:
            return self.metrics()["callpulse_events_total"]
        except OSError:
            return -1

    def probe_waiting(self) -> int:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.port}/api/v1/queues/_probe?local=1", timeout=10
            ) as r:
                return json.loads(r.read())["live"]["calls_waiting"]
        except OSError:
            return 0

    def rss(self) -> tuple[int, int]:
        """(current RSS, peak RSS) in MiB."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        values = {
            line.split(":")[0]: int(line.split()[1]) for line in status.splitlines() if line.startswith("Vm")
        }
        return values["VmRSS"] // 1024, values["VmHWM"] // 1024

    def cpu_seconds(self) -> float:
        """User and system CPU time of the worker process so far (all its threads)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def wait_counted(
    worker: WorkerProc,
    expected: int,
    broker: subprocess.Popen,
    timeout: float = 3600,
    on_first: Callable[[], None] | None = None,
) -> tuple[float, float, tuple[float, float, float]]:
    """Events/s from the first event counted until ``expected`` are counted, seconds from the worker's start
    until then, and (monotonic time, count, worker CPU seconds) at the first count (``callpulse_events_total``:
    sessionized)."""
    first = None
    deadline = time.monotonic() + timeout
    while True:
        n = worker.events_total()
        now = time.monotonic()
        if n > 0 and first is None:
            first = (now, n, worker.cpu_seconds())
            if on_first:
                on_first()
        if n >= expected:
            assert first is not None
            span = now - first[0]
            return (expected - first[1]) / span if span > 0 else float("inf"), now - worker.started, first
        if now > deadline:
            raise SystemExit(f"timeout: {n} of {expected} events counted")
        if broker.poll() is not None:
            raise SystemExit(
                f"the embedded broker stopped (exit status {broker.returncode}; its log is in "
                f"{worker.log.name}'s directory) with {n} of {expected} events counted"
            )
        time.sleep(0.5)  # a scrape costs the worker a little: not too often


async def steady_latency(
    broker_port: int, worker: WorkerProc, rate: float, seconds: float, batch: int
) -> dict:
    """Send simulated traffic at ``rate`` events/s plus a probe every 100 ms; return probe latencies."""
    producer = AIOKafkaProducer(bootstrap_servers=f"127.0.0.1:{broker_port}", linger_ms=5)
    await producer.start()
    start_ms = int(time.time() * 1000)
    traffic = simulated(start_ms, seed=99).run()
    sent_at: list[float] = []
    t0 = time.monotonic()
    sent = 0
    next_probe = t0
    buffers: dict[bytes, list[bytes]] = defaultdict(list)
    loop = asyncio.get_running_loop()
    observed: list[float] = []

    def poll() -> None:
        while len(observed) < len(sent_at) or time.monotonic() < t0 + seconds:
            waiting = worker.probe_waiting()
            now = time.monotonic()
            while len(observed) < min(waiting, len(sent_at)):
                observed.append(now)
            if time.monotonic() > t0 + seconds + 30:
                return
            time.sleep(0.01)

    poller = loop.run_in_executor(None, poll)
    while time.monotonic() < t0 + seconds:
        due = t0 + sent / rate
        now = time.monotonic()
        if now < due:
            await asyncio.sleep(due - now)
        # 1,000 events at a time at most, keyed and batched by bucket
        for event in itertools.islice(traffic, 100):
            event["ts"] = time.time()
            key = message_key(event)
            buffers[key].append(orjson.dumps(event))
            if len(buffers[key]) >= batch:
                items = buffers.pop(key)
                await producer.send(
                    TOPIC, value=items[0] if batch == 1 else b"[" + b",".join(items) + b"]", key=key
                )
            sent += 1
        if time.monotonic() >= next_probe:
            n = len(sent_at)
            probe = {
                "event_id": f"probe-{n}",
                "type": "queue",
                "ts": time.time(),
                "call_id": f"probe-{n}",
                "queue": "_probe",
            }
            await producer.send_and_wait(TOPIC, value=orjson.dumps(probe), key=message_key(probe))
            sent_at.append(time.monotonic())
            next_probe += 0.1
    await producer.stop()
    await poller
    latencies = sorted(o - s for o, s in zip(observed, sent_at, strict=False))
    if not latencies:
        raise SystemExit("no probe was counted: the worker did not keep up, or the probes were late")
    return {
        "rate_events_per_second": round(sent / seconds),
        "probes": len(latencies),
        "p50_seconds": round(statistics.median(latencies), 3),
        "p99_seconds": round(latencies[int(len(latencies) * 0.99) - 1], 3),
        "max_seconds": round(latencies[-1], 3),
    }


class Profiler:
    """py-spy sampling a worker (every thread, without pausing it) from ``start`` until ``stop``."""

    RATE = 100

    def __init__(self, pid: int, out: Path) -> None:
        self.pid, self.out, self.proc = pid, out, None

    def start(self) -> None:
        binary = Path(sys.executable).with_name("py-spy")
        self.proc = subprocess.Popen(
            [
                str(binary),
                "record",
                "--pid",
                str(self.pid),
                "--threads",
                "--nonblocking",
                "--format",
                "raw",
                "--rate",
                str(self.RATE),
                "--output",
                str(self.out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> str:
        """Stop sampling and return the summary by layer."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(60)
        return spy.summary(self.out.read_text())


def run_shape(
    shape: str, batch: int, n_events: int, work: Path, latency_seconds: float, profile_dir: Path | None = None
) -> dict:
    broker_port = free_port()
    broker = start_broker("127.0.0.1", broker_port, log_path=work / f"broker-{shape}.log")
    try:
        # A day back: the prefilled traffic (a million events span about 5 hours) must end before the latency
        # probes, which are stamped now, or their buckets' stream time would make the probes late.
        start_ms = int(time.time() * 1000) - 24 * 3600_000
        events = list(itertools.islice(simulated(start_ms, seed=1).run(), n_events))
        msgs = messages(events, batch)
        produce_s = asyncio.run(produce(broker_port, msgs))
        raw_s, raw_events = asyncio.run(raw_loop(broker_port, len(msgs)))
        assert raw_events == len(events)
        worker = WorkerProc(broker_port, work, shape)
        profiler = Profiler(worker.proc.pid, profile_dir / f"profile-{shape}.txt") if profile_dir else None
        try:
            on_first = profiler.start if profiler else None
            sessionized_rate, _, (first_t, first_n, first_cpu) = wait_counted(
                worker, len(events), broker, on_first=on_first
            )
            settled = wait_settled(broker_port)
            cpu_share = (worker.cpu_seconds() - first_cpu) / (time.monotonic() - first_t)
            if profiler:
                print(
                    f"profile of the worker from its first event counted until settled ({profiler.out}):\n"
                    f"{profiler.stop()}",
                    flush=True,
                )
            rate, total_s = (len(events) - first_n) / (settled - first_t), settled - worker.started
            rss_now, rss_peak = worker.rss()
            latency = asyncio.run(steady_latency(broker_port, worker, 10_000, latency_seconds, batch))
            rss_after, rss_peak = worker.rss()
        finally:
            worker.stop()
    finally:
        stop(broker)
    raw_rate = raw_events / raw_s
    return {
        "shape": shape,
        "events": len(events),
        "messages": len(msgs),
        "concurrent_calls_peak": concurrency(events),
        "produce_seconds": round(produce_s, 2),
        "raw_loop_events_per_second": round(raw_rate),
        "worker_events_per_second": round(rate),
        "worker_seconds_from_start": round(total_s, 2),
        "sessionizer_events_per_second": round(sessionized_rate),
        "ratio_to_raw": round(rate / raw_rate, 4),
        "worker_cpu_cores": round(cpu_share, 2),
        "latency_at_10k": latency,
        "rss_mib_after_run": rss_now,
        "rss_mib_peak": rss_peak,
    }


def memory_run(n_calls: int, work: Path) -> dict:
    """RSS of one worker while it processes ``n_calls`` calls (100-event arrays), at milestones."""
    broker_port = free_port()
    broker = start_broker("127.0.0.1", broker_port, log_path=work / "broker-memory.log")
    milestones = {}
    try:
        worker = None
        start_ms = int(time.time() * 1000) - 72 * 3600_000
        sim = simulated(start_ms, seed=7).run()
        produced_events = 0
        calls_done = 0
        chunk_calls = max(n_calls // 10, 1)
        while calls_done < n_calls:
            chunk: list[dict] = []
            rings = 0
            for event in sim:
                chunk.append(event)
                if event["type"] in ("ring", "dial"):
                    rings += 1
                    if rings >= chunk_calls:
                        break
            asyncio.run(produce(broker_port, messages(chunk, 100), create=worker is None))
            produced_events += len(chunk)
            calls_done += rings
            if worker is None:
                worker = WorkerProc(broker_port, work, "memory")
            wait_counted(worker, produced_events, broker)
            wait_settled(broker_port)
            milestones[calls_done] = worker.rss()[0]
            print(f"  {calls_done} calls: RSS {milestones[calls_done]} MiB", flush=True)
        peak = worker.rss()[1] if worker else 0
        if worker:
            worker.stop()
    finally:
        stop(broker)
    return {"calls": n_calls, "rss_mib_by_calls": milestones, "rss_mib_peak": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--events-arrays", type=int, default=1_000_000, help="events for the 100-event arrays run"
    )
    parser.add_argument("--events-single", type=int, default=200_000, help="events for the single-event run")
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument(
        "--memory-calls", type=int, default=0, help="also measure RSS over this many calls (0: no)"
    )
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "bench.json"))
    parser.add_argument(
        "--profile",
        action="store_true",
        help="sample the worker with py-spy while it processes the backlog (it costs the worker a "
        "few per cent) and print where its time goes; raw profiles beside --out",
    )
    parser.add_argument(
        "--compression",
        choices=("none", "gzip", "snappy", "lz4", "zstd"),
        default="none",
        help="CALLPULSE_COMPRESSION of the worker: its facts, dead letters and changelog writes",
    )
    args = parser.parse_args()
    WORKER_SETTINGS["CALLPULSE_COMPRESSION"] = args.compression
    work = Path(tempfile.mkdtemp(prefix="callpulse-bench-"))
    results = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "worker_compression": args.compression,
        "runs": [],
    }
    for shape, batch, n in (("arrays-100", 100, args.events_arrays), ("single", 1, args.events_single)):
        if n:
            print(f"{shape}: {n} events...", flush=True)
            profile_dir = Path(args.out).parent if args.profile else None
            if profile_dir:
                profile_dir.mkdir(parents=True, exist_ok=True)
            results["runs"].append(run_shape(shape, batch, n, work, args.latency_seconds, profile_dir))
    if args.memory_calls:
        print(f"memory: {args.memory_calls} calls...", flush=True)
        results["memory"] = memory_run(args.memory_calls, work)
    print()
    print(
        f"{'shape':<12}{'events':>10}{'open calls':>11}{'raw ev/s':>11}{'worker ev/s':>13}{'ratio':>8}{'CPU':>6}"
        f"{'sessionizer':>13}{'p50 s':>8}{'p99 s':>8}{'RSS MiB':>9}"
    )
    for r in results["runs"]:
        lat = r["latency_at_10k"]
        print(
            f"{r['shape']:<12}{r['events']:>10}{r['concurrent_calls_peak']:>11}{r['raw_loop_events_per_second']:>11}"
            f"{r['worker_events_per_second']:>13}{r['ratio_to_raw']:>8}{r['worker_cpu_cores']:>6}"
            f"{r['sessionizer_events_per_second']:>13}"
            f"{lat['p50_seconds']:>8}{lat['p99_seconds']:>8}{r['rss_mib_peak']:>9}"
        )
    if "memory" in results:
        print("RSS by calls processed:", results["memory"]["rss_mib_by_calls"])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
