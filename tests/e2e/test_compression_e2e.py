"""End to end: compressed input of every Kafka codec, callpulse's own compressed sends, and a record batch
that cannot be decoded, through the embedded broker and a real worker.

Before callpulse depended on aiokafka's codec extras, the first snappy, lz4 or zstd batch killed the worker
(``UnsupportedCodecError``), and so did every restart: it met the same batch again.

Expectations are counted by construction: each queue gets ``CALLS`` calls, the first ``ANSWERED`` of them
answered after 10 s in queue, the others abandoned after 30 s (above the 10 s short-abandon threshold).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from streams.events import call_bucket
from tests.e2e.conftest import consume_all, run_cli

pytestmark = pytest.mark.e2e

T0 = 1_767_258_000  # 2026-01-01T09:00:00Z
CALLS, ANSWERED = 24, 15
CODECS = ("gzip", "snappy", "lz4", "zstd")


def calls(queue: str, start: int, count: int = CALLS, answered: int = ANSWERED) -> list[dict]:
    """``count`` calls of ``queue`` from ``start`` s after T0, one every 20 s. Queues sent one after another
    get successive periods: an event more than the 120 s grace behind its bucket's newest is late."""
    out = []
    for i in range(count):
        call, t = f"{queue}-{i}", T0 + start + 20 * i
        out.append({"event_id": f"{call}-q", "type": "queue", "ts": t, "call_id": call, "queue": queue})
        if i < answered:
            out.append(
                {"event_id": f"{call}-a", "type": "answer", "ts": t + 10, "call_id": call, "agent": "a1"}
            )
            out.append({"event_id": f"{call}-h", "type": "hangup", "ts": t + 70, "call_id": call})
        else:
            out.append({"event_id": f"{call}-x", "type": "abandon", "ts": t + 30, "call_id": call})
            out.append({"event_id": f"{call}-h", "type": "hangup", "ts": t + 30, "call_id": call})
    return out


def produce_compressed(port: int, codec: str, events: list[dict]) -> None:
    """Send one event per message as a contact center's producer would: batched (up to 100 ms of linger)
    and compressed with ``codec``."""

    async def send() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=f"127.0.0.1:{port}", compression_type=codec, linger_ms=100
        )
        await producer.start()
        try:
            futures = [
                await producer.send(
                    "calls.events", key=call_bucket(e["call_id"]).encode(), value=orjson.dumps(e)
                )
                for e in events
            ]
            await asyncio.gather(*futures)
        finally:
            await producer.stop()

    asyncio.run(send())


def assert_counts(w, queue: str, calls: int = CALLS, answered: int = ANSWERED) -> None:
    w.wait_for("callpulse_calls_abandoned_total", calls - answered, queue=queue)
    w.wait_for("callpulse_calls_entered_total", calls, queue=queue)
    w.wait_for("callpulse_calls_answered_total", answered, queue=queue)


def test_every_codec_in_and_out(broker, worker_factory):
    # The worker compresses its own facts, dead letters and changelogs with lz4: the aggregator reads
    # compressed facts too.
    w = worker_factory(CALLPULSE_CLOCK="event", CALLPULSE_COMPRESSION="lz4").start()
    for n, codec in enumerate(CODECS):
        produce_compressed(broker.port, codec, calls(f"via-{codec}", start=1000 * n))
    jsonl = b"\n".join(orjson.dumps(e) for e in calls("via-produce", start=5000)) + b"\n"
    result = run_cli(broker, "produce", "-", stdin=jsonl, CALLPULSE_COMPRESSION="zstd")
    assert result.returncode == 0, result.stderr.decode()
    for queue in [f"via-{c}" for c in CODECS] + ["via-produce"]:
        assert_counts(w, queue)
    assert w.proc.poll() is None, w.log_tail()
    assert w.value("callpulse_events_rejected_total", reason="undecodable_batch") == 0
    assert w.value("callpulse_events_late_total") == 0
    # a restart restores the compressed changelogs: the same counts
    w.kill()
    w.start()
    for queue in [f"via-{c}" for c in CODECS] + ["via-produce"]:
        assert_counts(w, queue)


#: Sends one batch whose snappy payload is garbage under a valid CRC (aiokafka's pure-Python builder, with
#: its snappy encoder replaced), to the partition and key given: the embedded broker stores it as it is.
GARBAGE_PRODUCER = """
import asyncio, os, sys
os.environ["AIOKAFKA_NO_EXTENSIONS"] = "1"
from aiokafka import AIOKafkaProducer
from aiokafka.record import default_records
default_records.snappy_encode = lambda data: b"\\x01 this is not snappy"
port, partition, key = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].encode()
async def send():
    producer = AIOKafkaProducer(bootstrap_servers=f"127.0.0.1:{port}", compression_type="snappy", max_batch_size=1)
    await producer.start()
    try:
        value = b'[' + b','.join([b'{"event_id": "lost", "type": "queue", "ts": 1767258000}'] * 20) + b']'
        meta = await producer.send_and_wait("calls.events", value=value, key=key, partition=partition)
        print(meta.offset)
    finally:
        await producer.stop()
asyncio.run(send())
"""


def send_garbage(port: int, partition: int, key: bytes) -> int:
    result = subprocess.run(
        [sys.executable, "-c", GARBAGE_PRODUCER, str(port), str(partition), key.decode()],
        capture_output=True,
        timeout=60,
        check=True,
    )
    return int(result.stdout)


def produce_to(port: int, partition: int, events: list[dict]) -> None:
    async def send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=f"127.0.0.1:{port}", max_batch_size=1)
        await producer.start()
        try:
            for e in events:
                await producer.send_and_wait(
                    "calls.events",
                    value=orjson.dumps(e),
                    key=call_bucket(e["call_id"]).encode(),
                    partition=partition,
                )
        finally:
            await producer.stop()

    asyncio.run(send())


def test_an_undecodable_batch_is_dead_lettered_and_the_worker_goes_on(broker, worker_factory):
    w = worker_factory(CALLPULSE_CLOCK="event").start()
    port = broker.port
    # partition 0: 10 calls, the garbage batch, 10 more calls; partition 1: 6 calls, then the garbage batch
    # last (no later message brings it up: the idle checkpoint timer dead-letters it)
    produce_to(port, 0, calls("before", 0, count=10, answered=6))
    bad_0 = send_garbage(port, 0, b"17")
    produce_to(port, 0, calls("after", 1000, count=10, answered=7))
    produce_to(port, 1, calls("other", 2000, count=6, answered=2))
    bad_1 = send_garbage(port, 1, b"18")
    assert_counts(w, "before", 10, 6)
    assert_counts(w, "after", 10, 7)
    assert_counts(w, "other", 6, 2)
    w.wait_for("callpulse_events_rejected_total", 2, reason="undecodable_batch")
    assert w.proc.poll() is None, w.log_tail()
    # 30 events before it on partition 0 (10 calls of 3 events), 18 on partition 1
    assert (bad_0, bad_1) == (30, 18)

    dead = consume_all(broker, "calls.deadletter", 2)
    headers = sorted((dict(r.headers) for r in dead), key=lambda h: h["source_partition"])
    assert [
        (h["reason"], h["source_topic"], h["source_partition"], h["source_offset"], h["source_last_offset"])
        for h in headers
    ] == [
        (b"undecodable_batch", b"calls.events", b"0", b"30", b"30"),
        (b"undecodable_batch", b"calls.events", b"1", b"18", b"18"),
    ]
    assert all(h["error"].startswith(b"DecompressionError: snappy") for h in headers)
    # the value is the record batch as the broker keeps it: base offset, length, ..., snappy in its attributes
    for record in dead:
        raw = record.value
        assert int.from_bytes(raw[:8], "big") == int(dict(record.headers)["source_offset"])
        assert int.from_bytes(raw[8:12], "big") == len(raw) - 12
        assert int.from_bytes(raw[21:23], "big") & 0x07 == 2  # snappy
        assert b"not snappy" in raw

    # a restart neither crash-loops nor counts anything twice
    w.kill()
    w.start()
    for queue, n, answered in (("before", 10, 6), ("after", 10, 7), ("other", 6, 2)):
        assert_counts(w, queue, n, answered)
    # Sent once the restored counts show, that is once the restarted worker has recovered its tables: what
    # arrives while it recovers can be dropped by faust-streaming until a later message of the partition
    # comes (docs/operations.md, Reliability: known limitation).
    produce_to(port, 0, calls("later", 3000, count=4, answered=1))
    assert_counts(w, "later", 4, 1)
    assert w.proc.poll() is None, w.log_tail()
