r"""The two Faust tables and every key layout of their stores, in one place.

Both tables hold raw bytes; every value is JSON (orjson). ``"p"`` in a value is its source partition, which
is also the partition of the table's changelog (topic ``{app_id}-<table>-changelog``) it is written to; the
aggregator loads a partition's keys by it. A ``None`` value is a deletion (a changelog tombstone). Existing
state is recovered from these layouts: keep them.

key bytes                     table       value                                      written by
----------------------------  ----------  -----------------------------------------  ---------------------------------
<bucket>                      sessions    BucketState.snapshot() + "p": the calls,   Sessionizer.dirty_items
                                          agents, hw (last offset applied) and the
                                          slot of each tombstone chunk of a bucket
<bucket>|t|<chunk_ms>|<slot>  sessions    one version (slot 0 or 1) of a tombstone   Sessionizer.dirty_items: new
                                          chunk: call id -> tombstone                versions before the bucket, old
                                                                                     ones deleted after it
k|<fact key>                  aggregates  KeyState.snapshot() + "p": the totals,     Aggregator.dirty_items, after
                                          histograms, live state, hw of a queue or   the key's minutes
                                          campaign
m|<fact key>|<minute_ms>      aggregates  one minute bucket of that key + "p"        Aggregator.dirty_items
\x00next|<partition>          both        {"p": partition, "next": offset}: the      CheckpointedStage.checkpoint,
                                          next source offset to apply                last of every checkpoint

``<bucket>`` is the key of the calls.events message (its call bucket, ``streams.events.call_bucket``), or
``_p<partition>`` for a message without one. ``<fact key>`` is the key of the calls.facts message,
``q:<queue>`` or ``c:<campaign>`` (a queue name may hold ``|``; the minute after the last one cannot).
Numbers are decimal ASCII.
"""

from __future__ import annotations

from typing import Any

import orjson

SESSIONS = "sessions"
AGGREGATES = "aggregates"


def tables(app: Any, partitions: int) -> tuple[Any, Any]:
    """Declare the ``sessions`` and ``aggregates`` tables of the Faust app ``app``."""
    sessions = app.Table(
        SESSIONS,
        key_type=bytes,
        value_type=bytes,
        partitions=partitions,
        help="Sessionizer state, one key per call bucket.",
    )
    aggregates = app.Table(
        AGGREGATES,
        key_type=bytes,
        value_type=bytes,
        partitions=partitions,
        help="KPI state: one key per queue/campaign and one per minute bucket.",
    )
    return sessions, aggregates


# -- both tables -------------------------------------------------------------------------------------------


def resume_key(partition: int) -> bytes:
    """Store key of a partition's resume point: the next offset to apply after its last checkpoint."""
    return b"\x00next|%d" % partition


def resume_value(partition: int, next_offset: int) -> bytes:
    """Store value of a partition's resume point: the partition and the next offset to apply."""
    return orjson.dumps({"p": partition, "next": next_offset})


def resume_offset(value: bytes | None) -> int:
    """The next offset to apply, from a resume point's value (0 when there is none)."""
    return orjson.loads(value)["next"] if value else 0


# -- sessions ----------------------------------------------------------------------------------------------


def bucket_key(message_key: bytes | None, partition: int) -> bytes:
    """Store key of the sessionizer bucket of a calls.events message."""
    return message_key or b"_p%d" % partition


def chunk_key(bucket: bytes, chunk_ms: int, slot: int) -> bytes:
    """Store key of one version (slot) of a tombstone chunk of a sessionizer bucket."""
    return bucket + b"|t|" + str(chunk_ms).encode() + b"|" + str(slot).encode()


# -- aggregates --------------------------------------------------------------------------------------------


def state_key(key: str) -> bytes:
    """Store key of the state of a queue or campaign (``key``: its fact key)."""
    return f"k|{key}".encode()


def minute_key(key: str, minute_ms: int) -> bytes:
    """Store key of one minute bucket of a queue or campaign."""
    return f"m|{key}|{minute_ms}".encode()


def hour_key(key: str, hour_ms: int) -> bytes:
    """Store key of one local hour of a queue (its volume by hour and weekday, past the minutes' retention)."""
    return f"h|{key}|{hour_ms}".encode()


def parse_aggregate_key(raw: bytes) -> tuple[str, int | None] | None:
    """``(fact key, None)`` for a state key, ``(fact key, minute_ms)`` for a minute key, else None."""
    text = raw.decode()
    if text.startswith("k|"):
        return text[2:], None
    if text.startswith("m|"):
        key, start = text[2:].rsplit("|", 1)  # queue names may hold "|"; the minute cannot
        return key, int(start)
    return None


def parse_hour_key(raw: bytes) -> tuple[str, int] | None:
    """``(fact key, hour_ms)`` for an hour key, else None."""
    text = raw.decode()
    if text.startswith("h|"):
        key, start = text[2:].rsplit("|", 1)
        return key, int(start)
    return None
