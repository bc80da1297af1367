"""``callpulse ingest asterisk-queue-log``: read a queue_log once, or follow it like ``tail -F``.

Reading once sends every line as fast as the broker takes it (or at ``speed`` times real time) and returns
when every event is acknowledged. Following tails the file across rotation (the path now names another
file: the old one is read to its end, then the new one from its start) and truncation (the file shrank:
read again from its start), and keeps its position in a state file, written only after everything before
that position was acknowledged, so that a restart neither loses nor repeats lines.

A malformed line is reported (line number, reason), counted, and sent to calls.deadletter with reason
``bad_line``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import orjson

from app.producing import EventProducer, Pacer
from app.settings import Settings
from streams.adapters.asterisk import BadLine, QueueLogParser, detect_format

log = logging.getLogger(__name__)

#: Events per message when reading a file (one bucket per message); following sends smaller batches.
BATCH = 100
POLL_S = 0.2


@dataclass
class IngestReport:
    """What reading a queue_log did: lines read, events sent, bad lines, and the verbs skipped (by count)."""

    lines: int = 0
    events: int = 0
    bad_lines: int = 0
    skipped: Counter = field(default_factory=Counter)

    def summary(self, path: str) -> str:
        """One line for the operator: the counts of ``path``, with its bad lines and skipped verbs if any."""
        parts = [f"{path}: {self.lines} lines, {self.events} events"]
        if self.bad_lines:
            parts.append(f"{self.bad_lines} bad lines (sent to calls.deadletter)")
        if self.skipped:
            parts.append("skipped " + ", ".join(f"{verb} {n}" for verb, n in sorted(self.skipped.items())))
        return "; ".join(parts)


class QueueLogIngest:
    """Reads one queue_log (a file path) into calls.events."""

    def __init__(
        self,
        settings: Settings,
        path: Path,
        fmt: str | None,
        speed: float,
        state_path: Path | None,
        member_names: dict[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.member_names = member_names or {}
        self.path = path
        self.fmt = fmt
        self.speed = speed
        self.state_path = state_path
        self.parser: QueueLogParser | None = None
        self.report = IngestReport()
        self.line_no = 0

    def _parser(self, first_line: bytes) -> QueueLogParser:
        if self.parser is None:
            fmt = self.fmt or detect_format(first_line.decode("utf-8", "replace"))
            log.info("%s: format %s", self.path, fmt)
            self.parser = QueueLogParser(
                fmt=fmt, contact_min_talk_s=self.settings.contact_min_talk, member_names=self.member_names
            )
        return self.parser

    async def _line(self, raw: bytes, producer: EventProducer, pacer: Pacer) -> None:
        self.line_no += 1
        self.report.lines += 1
        parser = self._parser(raw)
        try:
            events = parser.parse(raw.decode("utf-8"))
        except (BadLine, UnicodeDecodeError, ValueError) as exc:
            reason = str(exc) if isinstance(exc, BadLine) else f"not readable ({exc})"
            log.warning("%s line %d: %s", self.path, self.line_no, reason)
            self.report.bad_lines += 1
            await producer.dead_letter(raw.rstrip(b"\r\n"), "bad_line", reason, str(self.path), self.line_no)
            return
        for event in events:
            await pacer.wait(event["ts"], producer)
            await producer.add(event)
        self.report.events += len(events)

    async def read_once(self) -> IngestReport:
        """Send every line of the file to calls.events and return when every event is acknowledged."""
        producer = await EventProducer.start(self.settings, BATCH)
        pacer = Pacer(self.speed)
        try:
            with self.path.open("rb") as f:
                for raw in f:
                    await self._line(raw, producer, pacer)
            await producer.flush()
            await producer.drain()
        finally:
            await producer.stop()
        if self.parser is not None:
            self.report.skipped = self.parser.skipped
        return self.report

    # -- following ----------------------------------------------------------------------------------------
    def _load_state(self, f: BinaryIO) -> None:
        if self.state_path is None or not self.state_path.exists():
            return
        state = orjson.loads(self.state_path.read_bytes())
        st = os.fstat(f.fileno())
        if state.get("inode") == st.st_ino and state.get("offset", 0) <= st.st_size:
            f.seek(state["offset"])
            self.line_no = state.get("line", 0)
            self.fmt = self.fmt or state.get("format")
            if self.fmt:
                self._parser(b"")
                assert self.parser is not None
                self.parser.restore(state.get("seen", {}))
            log.info("%s: resuming at line %d (byte %d)", self.path, self.line_no + 1, state["offset"])
        else:
            log.warning(
                "%s: the file changed while stopped (rotated or truncated); reading it from its start",
                self.path,
            )

    def _save_state(self, f: BinaryIO) -> None:
        if self.state_path is None:
            return
        position = (os.fstat(f.fileno()).st_ino, f.tell())
        if position == getattr(self, "_saved", None):
            return
        self._saved = position
        state = {
            "inode": os.fstat(f.fileno()).st_ino,
            "offset": f.tell(),
            "line": self.line_no,
            "format": self.parser.fmt if self.parser else self.fmt,
            "seen": self.parser.state() if self.parser else {},
        }
        tmp = self.state_path.with_suffix(self.state_path.suffix + ".tmp")
        tmp.write_bytes(orjson.dumps(state))
        os.replace(tmp, self.state_path)

    async def follow(self, stop: asyncio.Event) -> IngestReport:
        """Tail the file across rotation and truncation until ``stop`` is set; return the report.

        The position is kept in the state file, saved at each end of file once everything read so far is sent
        and acknowledged.
        """
        producer = await EventProducer.start(self.settings, 20)
        pacer = Pacer(self.speed)
        f: BinaryIO | None = None
        pending = b""
        try:
            while not stop.is_set():
                if f is None:
                    if not self.path.exists():
                        await _sleep(stop, POLL_S)
                        continue
                    f = self.path.open("rb")
                    self._load_state(f)
                chunk = f.readline()
                if chunk:
                    pending += chunk
                    if pending.endswith(b"\n"):
                        line, pending = pending, b""
                        await self._line(line, producer, pacer)
                    continue
                # End of file: everything read so far is sent, acknowledged, and only then remembered.
                await producer.flush()
                await producer.drain()
                self._save_state(f)
                switched = self._check_rotation(f)
                if switched is not None:
                    f.close()
                    f = switched
                    pending = b""
                    continue
                await _sleep(stop, POLL_S)
            await producer.flush()
            await producer.drain()
            if f is not None:
                self._save_state(f)
        finally:
            if f is not None:
                f.close()
            await producer.stop()
        if self.parser is not None:
            self.report.skipped = self.parser.skipped
        return self.report

    def _check_rotation(self, f: BinaryIO) -> BinaryIO | None:
        """The file to read next when the path was rotated or the file truncated, else None."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None  # rotated away, the new file is not there yet: keep the old one open
        if st.st_ino != os.fstat(f.fileno()).st_ino:
            log.info("%s was rotated: reading the new file from its start", self.path)
            self.line_no = 0
            return self.path.open("rb")
        if st.st_size < f.tell():
            log.info("%s was truncated: reading it again from its start", self.path)
            f.seek(0)
            self.line_no = 0
        return None


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass
