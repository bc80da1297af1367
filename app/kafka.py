"""Kafka plumbing shared by every command.

Topic names, security and TLS, topic creation, producers, embedded-broker detection, the embedded broker's
bind address.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition, codec
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError
from aiokafka.structs import ConsumerRecord

from app.settings import PREFIX, Settings, SettingsError

log = logging.getLogger(__name__)

TOPIC_EVENTS = "calls.events"
TOPIC_FACTS = "calls.facts"
TOPIC_DEADLETTER = "calls.deadletter"
#: Changes of the callback list, with the callers' numbers (sensitive: short retention).
TOPIC_CALLBACKS = "calls.callbacks"
TOPICS = (TOPIC_EVENTS, TOPIC_FACTS, TOPIC_DEADLETTER, TOPIC_CALLBACKS)
#: The cluster id ``callpulse broker`` gives the embedded broker; seeing it switches the workarounds on.
EMBEDDED_CLUSTER_ID = "callpulse-embedded"


class BrokerUnavailable(RuntimeError):
    """The broker cannot be reached."""


#: Every compression codec Kafka defines, and aiokafka's check that it can decode it.
CODECS: dict[str, Callable[[], bool]] = {
    "gzip": codec.has_gzip,
    "snappy": codec.has_snappy,
    "lz4": codec.has_lz4,
    "zstd": codec.has_zstd,
}


class CodecsMissing(RuntimeError):
    """Some Kafka compression codec cannot be decoded in this installation: the message is one sentence."""


def check_codecs() -> None:
    """Raise ``CodecsMissing`` unless every codec Kafka defines can be decoded.

    A consumer meeting a batch of a missing codec would stop at it for good.
    """
    missing = [name for name, available in CODECS.items() if not available()]
    if missing:
        msg = (
            f"this installation cannot read Kafka's {', '.join(missing)} compression (aiokafka needs the "
            f"cramjam package: pip install 'aiokafka[snappy,lz4,zstd]')"
        )
        raise CodecsMissing(msg)


def compression_type(settings: Settings) -> str | None:
    """The ``compression_type`` of aiokafka for CALLPULSE_COMPRESSION."""
    return None if settings.compression == "none" else settings.compression


def dead_letter_headers(
    reason: str,
    error: str,
    topic: str,
    partition: int,
    offset: int,
    extra: tuple[tuple[str, bytes], ...] = (),
) -> list[tuple[str, bytes]]:
    """The headers of a calls.deadletter record: why it was rejected and where it came from (docs/events.md)."""
    return [
        ("reason", reason.encode()),
        ("source_topic", topic.encode()),
        ("source_partition", str(partition).encode()),
        ("source_offset", str(offset).encode()),
        ("error", error.replace("\n", " ").encode()),
        *extra,
    ]


def kafka_security(settings: Settings) -> dict[str, Any]:
    """The aiokafka keyword arguments of the security settings (a TLS context if the protocol uses TLS)."""
    protocol = settings.security_protocol
    out: dict[str, Any] = {"security_protocol": protocol}
    if protocol.startswith("SASL"):
        out.update(
            sasl_mechanism=settings.sasl_mechanism,
            sasl_plain_username=settings.sasl_username,
            sasl_plain_password=settings.sasl_password,
        )
    if protocol in ("SSL", "SASL_SSL"):
        out["ssl_context"] = ssl.create_default_context(cafile=settings.ssl_cafile)
    return out


def client_kwargs(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of every aiokafka client: the bootstrap servers and the security settings."""
    return {"bootstrap_servers": settings.bootstrap_servers, **kafka_security(settings)}


def broker_bind(settings: Settings) -> tuple[str, int]:
    """The address ``callpulse broker`` binds: the first broker's host resolved to an IP, and its port."""
    host, _, port = settings.bootstrap_servers[0].rpartition(":")
    try:
        address = socket.gethostbyname(host)
    except OSError:
        raise SettingsError(f"{PREFIX}BROKER host {host!r} does not resolve to an address.") from None
    return address, int(port)


async def _admin(settings: Settings, timeout_s: float) -> AIOKafkaAdminClient:
    deadline = asyncio.get_running_loop().time() + timeout_s
    quiet = logging.getLogger("aiokafka")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # one line at the end, not an error per retry
    try:
        while True:
            admin = AIOKafkaAdminClient(**client_kwargs(settings), request_timeout_ms=int(timeout_s * 1000))
            try:
                await admin.start()
                return admin
            except (KafkaConnectionError, OSError):
                await admin.close()
                if asyncio.get_running_loop().time() > deadline:
                    msg = f"cannot reach the Kafka broker at {', '.join(settings.bootstrap_servers)}"
                    raise BrokerUnavailable(msg) from None
                await asyncio.sleep(0.5)
    finally:
        quiet.setLevel(level)


async def detect_embedded(settings: Settings, timeout_s: float = 30.0) -> bool:
    """Whether the broker is callpulse's embedded one (CALLPULSE_EMBEDDED_BROKER=auto asks the cluster id)."""
    mode = settings.embedded_broker
    if mode != "auto":
        return mode == "true"
    admin = await _admin(settings, timeout_s)
    try:
        cluster = await admin.describe_cluster()
    finally:
        await admin.close()
    return bool(cluster.get("cluster_id") == EMBEDDED_CLUSTER_ID)


async def ensure_topics(settings: Settings, timeout_s: float = 30.0) -> None:
    """Create calls.events, calls.facts, calls.deadletter and calls.callbacks when missing (CALLPULSE_PARTITIONS)."""
    admin = await _admin(settings, timeout_s)
    try:
        existing = set(await admin.list_topics())
        wanted = []
        for name in TOPICS:
            if name in existing:
                continue
            configs = {}
            if name == TOPIC_DEADLETTER:
                configs = {"retention.ms": str(int(settings.deadletter_retention * 1000))}
            elif name == TOPIC_CALLBACKS:
                configs = {"retention.ms": str(int(settings.callbacks_retention * 1000))}
            wanted.append(
                NewTopic(name, settings.partitions, settings.replication_factor, topic_configs=configs)
            )
        if wanted:
            try:
                await admin.create_topics(wanted)
            except TopicAlreadyExistsError:
                pass
            except KafkaError as exc:  # another process created them first, or the broker refused
                log.warning("creating topics: %s", exc)
            log.info("created topics %s", ", ".join(t.name for t in wanted))
        # Topic metadata propagates asynchronously: wait until every topic is visible.
        for _ in range(100):
            if set(TOPICS) <= set(await admin.list_topics()):
                break
            await asyncio.sleep(0.1)
    finally:
        await admin.close()


async def start_producer(settings: Settings, embedded: bool, **extra: Any) -> AIOKafkaProducer:
    """A started aiokafka producer, compressing as CALLPULSE_COMPRESSION says.

    Against the embedded broker every record is its own batch (DESIGN 7).
    """
    if settings.compression != "none":
        check_codecs()
    kwargs: dict[str, Any] = {
        "acks": "all",
        "linger_ms": 5,
        "compression_type": compression_type(settings),
        **extra,
    }
    if embedded:
        kwargs["max_batch_size"] = 1
    producer = AIOKafkaProducer(**client_kwargs(settings), **kwargs)
    await producer.start()
    return producer


async def fetch_range(
    settings: Settings, topic: str, partition: int, start: int, end: int, timeout_s: float = 60.0
) -> AsyncIterator[ConsumerRecord]:
    """The records of one partition with ``start <= offset < end``, in order.

    They are read with a consumer of its own (no group). Offsets that do not exist (compaction, transaction
    markers, retention) are simply absent.

    Raises:
        TimeoutError: the range was not read within ``timeout_s``.
    """
    consumer = AIOKafkaConsumer(
        **client_kwargs(settings), enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        consumer.seek(tp, start)
        deadline = asyncio.get_running_loop().time() + timeout_s
        while await consumer.position(tp) < end:
            if asyncio.get_running_loop().time() > deadline:
                msg = f"{topic}[{partition}]: offsets {start} to {end - 1} not read within {timeout_s:.0f} s"
                raise TimeoutError(msg)
            batch = await consumer.getmany(tp, timeout_ms=500)
            for record in batch.get(tp, []):
                if record.offset >= end:
                    return
                yield record
    finally:
        await consumer.stop()
