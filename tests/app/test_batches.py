"""Undecodable record batches (app.batches): skipped and reported for the watched topics, raised elsewhere.

The record sets are built here byte by byte with aiokafka's pure-Python batch builder: good batches, a
batch whose snappy payload is garbage under a valid CRC (what the embedded broker stores as it is), and a
batch with a flipped byte (a CRC mismatch).
"""

from __future__ import annotations

import struct

import pytest
from aiokafka.consumer import fetcher
from aiokafka.errors import CorruptRecordException
from aiokafka.record import default_records
from aiokafka.structs import TopicPartition

from app import batches

TOPIC = "calls.events"


def batch(base_offset: int, values: list[bytes], compression: int = 0) -> bytes:
    builder = default_records._DefaultRecordBatchBuilderPy(2, compression, 0, -1, -1, -1, 1 << 20)
    for i, value in enumerate(values):
        builder.append(i, timestamp=1_767_258_000_000, key=b"k", value=value, headers=[])
    raw = bytearray(builder.build())
    struct.pack_into(">q", raw, 0, base_offset)  # the broker's part; the CRC does not cover it
    return bytes(raw)


def garbage_snappy_batch(base_offset: int, values: list[bytes], monkeypatch: pytest.MonkeyPatch) -> bytes:
    with monkeypatch.context() as m:
        m.setattr(default_records, "snappy_encode", lambda data: b"\x01 this is not snappy")
        raw = batch(base_offset, values, compression=default_records.DefaultRecordBase.CODEC_SNAPPY)
    attributes = struct.unpack_from(">h", raw, 21)[0]
    assert attributes & 0x07 == default_records.DefaultRecordBase.CODEC_SNAPPY  # sent compressed
    return raw


def flipped_batch(base_offset: int, values: list[bytes]) -> bytes:
    raw = bytearray(batch(base_offset, values))
    raw[-3] ^= 0xFF  # inside the last record's value: the CRC no longer matches
    return bytes(raw)


def read(data: bytes, topic: str = TOPIC) -> tuple[list[tuple[int, bytes]], int]:
    """The (offset, value) pairs aiokafka hands out for one fetched record set, and its next fetch offset."""
    records = fetcher.PartitionRecords(
        TopicPartition(topic, 3),
        fetcher.MemoryRecords(data),
        None,
        0,
        None,
        None,
        True,
        fetcher.READ_UNCOMMITTED,
    )
    out = [(r.offset, r.value) for r in records]
    return out, records.next_fetch_offset


@pytest.fixture
def reported(monkeypatch):
    monkeypatch.setattr(fetcher, "MemoryRecords", fetcher.MemoryRecords)
    monkeypatch.setattr(fetcher.PartitionRecords, "_unpack_records", fetcher.PartitionRecords._unpack_records)
    monkeypatch.setattr(batches, "WATCHED", {})
    seen: list[batches.Undecodable] = []
    batches.watch(TOPIC, seen.append)
    return seen


def test_a_garbage_snappy_batch_is_skipped_and_reported_with_its_bytes(reported, monkeypatch):
    bad = garbage_snappy_batch(3, [b"d" * 100, b"e" * 100], monkeypatch)
    data = batch(0, [b"a", b"b", b"c"]) + bad + batch(5, [b"f", b"g"])
    out, next_offset = read(data)
    # offsets 3 and 4 are in the bad batch: the records before and after it are handed out, in order
    assert out == [(0, b"a"), (1, b"b"), (2, b"c"), (5, b"f"), (6, b"g")]
    assert next_offset == 7
    assert len(reported) == 1
    r = reported[0]
    assert (r.topic, r.partition, r.start, r.end, r.raw) == (TOPIC, 3, 3, 5, bad)
    assert r.error.startswith("DecompressionError: snappy")


def test_a_crc_mismatch_is_skipped_and_reported(reported):
    bad = flipped_batch(2, [b"c"])
    out, next_offset = read(batch(0, [b"a", b"b"]) + bad)
    assert out == [(0, b"a"), (1, b"b")]
    assert next_offset == 3
    assert [(r.start, r.end, r.raw) for r in reported] == [(2, 3, bad)]
    assert reported[0].error.startswith(
        "CorruptRecordException: [Error 2] CorruptRecordException: Invalid CRC"
    )


def test_two_bad_batches_in_a_row(reported, monkeypatch):
    data = (
        garbage_snappy_batch(0, [b"a" * 100], monkeypatch) + flipped_batch(1, [b"b", b"c"]) + batch(3, [b"d"])
    )
    out, next_offset = read(data)
    assert out == [(3, b"d")] and next_offset == 4
    assert [(r.start, r.end) for r in reported] == [(0, 1), (1, 3)]


def test_other_topics_keep_aiokafkas_error(reported):
    with pytest.raises(CorruptRecordException):
        read(batch(0, [b"a"]) + flipped_batch(1, [b"b"]), topic="callpulse-sessions-changelog")
    assert reported == []


def test_good_batches_are_untouched(reported):
    out, next_offset = read(batch(10, [b"x", b"y"]) + batch(12, [b"z"]))
    assert out == [(10, b"x"), (11, b"y"), (12, b"z")] and next_offset == 13
    assert reported == []


def test_batch_bytes_finds_a_batch_by_its_base_offset():
    first, second = batch(0, [b"a"]), batch(1, [b"b", b"c"])
    assert batches.batch_bytes(first + second, 1) == second
    assert batches.batch_bytes(first + second, 0) == first
    assert batches.batch_bytes(first + second, 7) == b""
