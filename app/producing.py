"""Sending canonical events to calls.events, as every callpulse producer does (DESIGN 2).

Messages are keyed by the call bucket (the agent's for agent events) and a batch holds only events of
one bucket, in the order they were added. ``flush`` sends what is buffered; ``drain`` waits until the
broker has acknowledged everything sent.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from app.kafka import (
    TOPIC_DEADLETTER,
    TOPIC_EVENTS,
    dead_letter_headers,
    detect_embedded,
    ensure_topics,
    start_producer,
)
from app.settings import Settings
from streams.events import call_bucket

#: Events of no call and no agent share this key; the worker rejects them with their reason.
UNROUTABLE = b"_unroutable"


def message_key(event: object) -> bytes:
    """The call bucket of an event (the agent's for agent events); unroutable values share one key."""
    if isinstance(event, dict):
        if event.get("type") == "agent_state":
            ident = event.get("agent")
        else:
            ident = event.get("call_id") or event.get("agent")
        if isinstance(ident, str) and ident:
            return call_bucket(ident).encode()
    return UNROUTABLE


class EventProducer:
    """Batches events per call bucket into calls.events and tracks what is unacknowledged."""

    def __init__(self, producer: AIOKafkaProducer, batch: int) -> None:
        self.producer = producer
        self.batch = batch
        self.buffers: dict[bytes, list[bytes]] = {}
        self.futures: list[asyncio.Future] = []
        self.messages = 0
        self.events = 0

    @classmethod
    async def start(cls, settings: Settings, batch: int) -> EventProducer:
        """Create the topics when missing and connect (one record per batch against the embedded broker)."""
        embedded = await detect_embedded(settings)
        await ensure_topics(settings)
        return cls(await start_producer(settings, embedded), batch)

    async def stop(self) -> None:
        """Stop the Kafka producer (``flush`` and ``drain`` first to keep what is buffered)."""
        await self.producer.stop()

    async def _send(self, topic: str, key: bytes | None, value: bytes, headers: list | None = None) -> None:
        self.futures.append(await self.producer.send(topic, value=value, key=key, headers=headers))
        if len(self.futures) >= 5000:
            await self.drain()

    async def add(self, event: Any) -> None:
        """Buffer one event (a decoded JSON value); send its bucket's batch when full."""
        self.events += 1
        key = message_key(event)
        buffer = self.buffers.setdefault(key, [])
        buffer.append(orjson.dumps(event))
        if len(buffer) >= self.batch:
            await self._flush_key(key)

    async def add_raw(self, value: bytes, key: bytes = UNROUTABLE) -> None:
        """Send bytes as they are (the worker dead-letters what it cannot read, with the reason)."""
        await self._send(TOPIC_EVENTS, key, value)
        self.messages += 1

    async def dead_letter(self, value: bytes, reason: str, error: str, source: str, position: int) -> None:
        """Send a record to calls.deadletter directly (adapters: ``bad_line``)."""
        headers = dead_letter_headers(reason, error, source, -1, position)
        await self._send(TOPIC_DEADLETTER, None, value, headers)

    async def _flush_key(self, key: bytes) -> None:
        items = self.buffers.pop(key)
        self.messages += 1
        await self._send(TOPIC_EVENTS, key, items[0] if self.batch == 1 else b"[" + b",".join(items) + b"]")

    async def flush(self) -> None:
        """Send every call bucket's buffered events, one message per bucket."""
        for key in list(self.buffers):
            await self._flush_key(key)

    async def drain(self) -> None:
        """Wait until the broker acknowledged everything sent (raises if it refused something)."""
        futures, self.futures = self.futures, []
        if futures:
            await asyncio.gather(*futures)


class Pacer:
    """Sleeps so that event time advances ``speed`` times faster than the wall clock (no pacing when 0)."""

    def __init__(self, speed: float) -> None:
        self.speed = speed
        self.origin: tuple[float, float] | None = None

    async def wait(self, ts: float, producer: EventProducer) -> None:
        """Sleep until event time ``ts`` (in seconds) is due, flushing ``producer`` first.

        The first event only sets the origin: event time and wall clock start together there.
        """
        if not self.speed:
            return
        if self.origin is None:
            self.origin = (ts, time.monotonic())
            return
        due = self.origin[1] + (ts - self.origin[0]) / self.speed
        delay = due - time.monotonic()
        if delay > 0:
            await producer.flush()
            await asyncio.sleep(delay)
