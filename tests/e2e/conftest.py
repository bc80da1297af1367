"""End-to-end fixtures: the embedded broker (Tansu) and real ``callpulse worker`` processes."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.broker import start_broker, stop

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.proc = start_broker("127.0.0.1", self.port, log_path=tmp_path / "broker.log")
        self.url = f"kafka://127.0.0.1:{self.port}"


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path)
    yield b
    stop(b.proc)


class Worker:
    """A ``callpulse worker`` subprocess; ``env`` extends the base environment."""

    def __init__(self, broker: Broker, tmp_path: Path, **env: str) -> None:
        self.port = free_port()
        self.tmp_path = tmp_path
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CALLPULSE_")}
        self.env.update(
            {
                "CALLPULSE_BROKER": broker.url,
                "CALLPULSE_WEB_PORT": str(self.port),
                "CALLPULSE_PARTITIONS": "4",
                "CALLPULSE_CALLER_KEY": "e2e",
                "CALLPULSE_DATADIR": str(tmp_path / "data"),
                "CALLPULSE_CHECKPOINT_INTERVAL": "0.2",
                "CALLPULSE_LOG_LEVEL": "info",
            }
        )
        self.env.update(env)
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Worker:
        self.starts += 1
        log = open(self.tmp_path / f"worker-{self.port}-{self.starts}.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app", "worker"],
            env=self.env,
            cwd=self.tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log_tail()
            try:
                self.get("/metrics")
                return self
            except OSError:
                time.sleep(0.2)
        raise AssertionError("worker did not serve /metrics within 60 s\n" + self.log_tail())

    def kill(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, lines: int = 60) -> str:
        logs = sorted(self.tmp_path.glob(f"worker-{self.port}-*.log"))
        return "\n".join(logs[-1].read_text(errors="replace").splitlines()[-lines:]) if logs else ""

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.base + path, timeout=10) as response:  # loopback
            return response.read()

    def metrics(self) -> dict[tuple[str, tuple], float]:
        """Every sample as {(name, sorted labels): value}."""
        out = {}
        for family in text_string_to_metric_families(self.get("/metrics").decode()):
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def value(self, name: str, **labels: str) -> float | None:
        return self.metrics().get((name, tuple(sorted(labels.items()))))

    def wait_for(self, name: str, expected: float, timeout: float = 60, **labels: str) -> None:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = self.value(name, **labels)
            if last == expected:
                return
            time.sleep(0.25)
        raise AssertionError(f"{name}{labels} = {last}, expected {expected}\n" + self.log_tail())


@pytest.fixture
def worker_factory(broker, tmp_path):
    workers: list[Worker] = []

    def make(**env: str) -> Worker:
        w = Worker(broker, tmp_path, **env)
        workers.append(w)
        return w

    yield make
    for w in workers:
        w.stop()


def cli_command() -> list[str]:
    return [sys.executable, "-m", "app"]


def cli_env(broker: Broker, **env: str) -> dict[str, str]:
    """The environment of a callpulse command against ``broker`` (no CALLPULSE_* of the caller leaks in)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CALLPULSE_")}
    full_env.update(
        {"CALLPULSE_BROKER": broker.url, "CALLPULSE_PARTITIONS": "4", "CALLPULSE_CALLER_KEY": "e2e", **env}
    )
    return full_env


def run_cli(
    broker: Broker, *args: str, stdin: bytes | None = None, **env: str
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*cli_command(), *args],
        env=cli_env(broker, **env),
        input=stdin,
        capture_output=True,
        timeout=120,
        cwd=REPO,
    )


def consume_all(broker: Broker, topic: str, expected: int, timeout: float = 30) -> list:
    """Read ``expected`` records of ``topic`` from the beginning (aiokafka, its own group-less consumer)."""
    from aiokafka import AIOKafkaConsumer

    async def read() -> list:
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=f"127.0.0.1:{broker.port}",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        records = []
        try:
            deadline = time.monotonic() + timeout
            while len(records) < expected and time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=500)
                for recs in batch.values():
                    records.extend(recs)
        finally:
            await consumer.stop()
        return records

    return asyncio.run(read())


def produce_raw(
    broker: Broker, messages: list[tuple[bytes | None, bytes]], topic: str = "calls.events"
) -> None:
    from aiokafka import AIOKafkaProducer

    async def send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=f"127.0.0.1:{broker.port}", max_batch_size=1)
        await producer.start()
        try:
            for key, value in messages:
                await producer.send_and_wait(topic, value=value, key=key)
        finally:
            await producer.stop()

    asyncio.run(send())
