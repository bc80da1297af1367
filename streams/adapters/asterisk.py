"""Asterisk ``queue_log`` to canonical events: the native pipe format and the QueueMetrics CSV export.

A pure parser: one line in, the canonical events it means out (as JSON-able dicts), or ``BadLine``.
The file and tail driver lives in ``app.ingest``.

Shapes (see ../shared/fixtures/README.md):

- native: ``epoch|callid|queue|agent|EVENT|data1|data2|data3...``;
- qm-csv: ``uid,date_time,callid,queue_name,type,event,param1,param2,param3,entpos,expos,htime,ttime,time``.
  This export puts the same facts in other fields (ENTERQUEUE's caller id in param1; waits in ``htime``,
  talk in ``ttime``), which the mapping below does not need: waits and talks are computed from the
  timestamps of the events themselves.

Event ids are deterministic, so ingesting a file twice counts nothing twice: ``qm-<uid>`` for the CSV; for
native lines the SHA-1 of the line plus its occurrence number among identical lines (identical lines share
their second, so two identical dials in one second still count twice). A line that means several events
gets ``-1``, ``-2``... appended.
"""

from __future__ import annotations

import csv
import hashlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

#: Verbs that are counted and skipped: markers, and member settings that change no KPI.
SKIPPED_VERBS = frozenset(
    {
        "QUEUESTART",
        "CONFIGRELOAD",
        "AGENTDUMP",
        "SYSCOMPAT",
        "PENALTY",
        "RINGINUSE",
        "DID",
        "INFO",
        "DIVERT_CA_RATIO",
        "DIVERT_HOLDTIME",
    }
)
EXIT_VERBS = {
    "EXITWITHTIMEOUT": "timeout",
    "EXITWITHKEY": "key",
    "EXITEMPTY": "empty",
    "LEAVEEMPTY": "empty",
    "WITHDRAW": "withdraw",
}
REFUSED_VERBS = {"FULL": "full", "JOINEMPTY": "joinempty", "CLOSED": "closed"}
TRANSFER_VERBS = frozenset({"TRANSFER", "BLINDTRANSFER", "ATTENDEDTRANSFER"})
OUTBOUND_HANGUP = {"OUTCANCEL": "no_answer", "OUTCHANUNAVAIL": "failed", "OUTCONGESTION": "failed"}
#: agent verb -> (state, whether the queue field applies)
AGENT_VERBS = {
    "ADDMEMBER": ("available", True),
    "REMOVEMEMBER": ("offline", True),
    "PAUSE": ("paused", True),
    "UNPAUSE": ("available", True),
    "PAUSEALL": ("paused", False),
    "UNPAUSEALL": ("available", False),
    "AGENTLOGIN": ("available", False),
    "AGENTCALLBACKLOGIN": ("available", False),
    "AGENTLOGOFF": ("offline", False),
    "AGENTCALLBACKLOGOFF": ("offline", False),
}
QM_COLUMNS = (
    "uid",
    "date_time",
    "callid",
    "queue_name",
    "type",
    "event",
    "param1",
    "param2",
    "param3",
    "entpos",
    "expos",
    "htime",
    "ttime",
    "time",
)
NO_VALUE = ("", "NONE")


class BadLine(Exception):  # it is the dead-letter reason's name
    """A line that cannot be read; the message says why."""


@dataclass(slots=True)
class Row:
    """A queue_log line in a format-neutral shape."""

    ts: int
    callid: str
    queue: str
    agent: str
    verb: str
    data: list[str]
    #: QueueMetrics export only: uid, ttime (talk).
    uid: str = ""
    ttime: int = 0


def detect_format(first_line: str) -> str:
    """``qm-csv`` when the line is the export's header or has its 14 comma-separated columns, else ``native``."""
    line = first_line.strip()
    if line.startswith("uid,") or ("|" not in line and line.count(",") >= 13):
        return "qm-csv"
    return "native"


def agent_id(member: str) -> str:
    """One id for an agent across verbs.

    ``Local/1127@callback-agent``, ``Agent/1127`` and ``SIP/1127`` are all ``1127`` (the channel technology and
    the ``@context`` are dropped).
    """
    name = member.split("/", 1)[1] if "/" in member else member
    return name.split("@", 1)[0]


def _int(value: str, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise BadLine(f"{what} {value!r} is not a whole number") from None


@dataclass
class QueueLogParser:
    """Stateful only for the ids of native lines (occurrences of identical lines in their second)."""

    fmt: str = "native"
    contact_min_talk_s: float = 30.0
    #: Member interface -> agent name (``Local/104@agents/n`` -> ``Dave``): ADDMEMBER and REMOVEMEMBER name
    #: the interface where the other verbs name the member (unless Asterisk's ``log_membername_as_agent``).
    member_names: dict[str, str] = field(default_factory=dict)
    #: Verbs skipped so far, with their counts.
    skipped: Counter[str] = field(default_factory=Counter)
    _seen: dict[int, Counter[str]] = field(default_factory=dict)

    def parse(self, line: str) -> list[dict[str, Any]]:
        """The canonical events of one line ([] for a skipped verb or the CSV header).

        Raises:
            BadLine: the line is malformed.
        """
        text = line.rstrip("\r\n")
        if not text.strip():
            return []
        if self.fmt == "qm-csv":
            row = self._csv_row(text)
            if row is None:
                return []
            base = f"qm-{row.uid}"
        else:
            row = self._native_row(text)
            base = self._native_id(row.ts, text)
        return self._events(row, base)

    # -- reading -------------------------------------------------------------------------------------------------
    def _csv_row(self, text: str) -> Row | None:
        fields = next(csv.reader([text]))
        if fields[:2] == ["uid", "date_time"]:
            return None
        if len(fields) != len(QM_COLUMNS):
            raise BadLine(f"{len(fields)} columns, the QueueMetrics export has {len(QM_COLUMNS)}")
        v = dict(zip(QM_COLUMNS, fields, strict=True))
        return Row(
            ts=_int(v["date_time"], "date_time"),
            callid=v["callid"],
            queue=v["queue_name"],
            agent=v["type"],
            verb=v["event"].strip(),
            data=[v["param1"], v["param2"], v["param3"]],
            uid=v["uid"],
            ttime=_int(v["ttime"] or "0", "ttime"),
        )

    def _native_row(self, text: str) -> Row:
        fields = text.split("|")
        if len(fields) < 5:
            raise BadLine(
                f"{len(fields)} fields, a queue_log line has at least 5 (epoch|callid|queue|agent|EVENT)"
            )
        return Row(
            ts=_int(fields[0], "epoch"),
            callid=fields[1],
            queue=fields[2],
            agent=fields[3],
            verb=fields[4].strip(),
            data=fields[5:],
        )

    def _native_id(self, ts: int, text: str) -> str:
        digest = hashlib.sha1(text.encode("utf-8")).hexdigest()[:20]  # an id, not security
        counts = self._seen.setdefault(ts, Counter())
        counts[digest] += 1
        if len(self._seen) > 120:  # identical lines share their second; keep the last two minutes of seconds
            for old in sorted(self._seen)[:-120]:
                del self._seen[old]
        return f"ql-{digest}-{counts[digest]}"

    def _agent(self, member: str) -> str:
        name = self.member_names.get(member)
        return name if name is not None else agent_id(member)

    def state(self) -> dict[str, Any]:
        """Occurrence counts of the last seconds, for a follower's state file."""
        return {str(ts): dict(c) for ts, c in self._seen.items()}

    def restore(self, state: dict[str, Any]) -> None:
        """Take back what ``state`` returned (after a restart of the follower)."""
        self._seen = {int(ts): Counter(c) for ts, c in state.items()}

    # -- mapping -------------------------------------------------------------------------------------------------
    def _events(self, row: Row, base: str) -> list[dict[str, Any]]:
        verb = row.verb
        queue = row.queue if row.queue not in NO_VALUE else None
        out: list[dict[str, Any]] = []

        def add(etype: str, **fields: object) -> None:
            event = {"event_id": f"{base}-{len(out) + 1}", "type": etype, "ts": row.ts}
            event.update({k: v for k, v in fields.items() if v is not None})
            out.append(event)

        if verb in AGENT_VERBS:
            if row.agent in NO_VALUE:
                raise BadLine(f"{verb} without an agent")
            agent_state, with_queue = AGENT_VERBS[verb]
            if verb == "ADDMEMBER" and row.data[:1] == ["PAUSED"]:
                agent_state = "paused"
            reason = row.data[0].strip() if verb in ("PAUSE", "PAUSEALL") and row.data else ""
            add(
                "agent_state",
                agent=self._agent(row.agent),
                state=agent_state,
                queue=queue if with_queue else None,
                reason=reason or None,
            )
            return out
        if verb in SKIPPED_VERBS or not _known(verb):
            self.skipped[verb] += 1
            return out
        call = row.callid
        if call in NO_VALUE or call in ("REALTIME", "MANAGER", "CLI"):
            raise BadLine(f"{verb} without a call id")
        agent = self._agent(row.agent) if row.agent not in NO_VALUE else None
        data = row.data + [""] * 3
        if verb == "ENTERQUEUE":
            if queue is None:
                raise BadLine("ENTERQUEUE without a queue")
            caller = data[0] if self.fmt == "qm-csv" else data[1]
            add("queue", call_id=call, queue=queue, caller=caller or None)
        elif verb == "CONNECT":
            add("answer", call_id=call, queue=queue, agent=agent)
        elif verb in ("COMPLETECALLER", "COMPLETEAGENT"):
            add("hangup", call_id=call)
        elif verb == "ABANDON":
            add("abandon", call_id=call, queue=queue)
        elif verb in EXIT_VERBS:
            add("exit", call_id=call, queue=queue, reason=EXIT_VERBS[verb])
        elif verb in REFUSED_VERBS:
            if queue is None:
                raise BadLine(f"{verb} without a queue")
            add("refused", call_id=call, queue=queue, reason=REFUSED_VERBS[verb])
        elif verb in TRANSFER_VERBS:
            target = data[1] if self.fmt == "qm-csv" else (data[1] if verb == "ATTENDEDTRANSFER" else data[0])
            add("transfer", call_id=call, target=target or None)
        elif verb == "RINGNOANSWER":
            add("agent_missed", call_id=call, queue=queue, agent=agent)
        elif verb == "RINGCANCELED":  # the caller hung up while the agent's phone rang
            add("ring_canceled", call_id=call, queue=queue, agent=agent)
        elif verb == "OUTDIAL":
            add("dial", call_id=call, campaign="default", agent=agent)
        elif verb == "OUTANSWER":
            # Logged when the call ends, with the talk in ttime: the answer may lie beyond the grace period,
            # so both are emitted now and the talk decides the contact here.
            contact = self.fmt == "qm-csv" and row.ttime >= self.contact_min_talk_s
            add("answer", call_id=call, direction="outbound", agent=agent)
            add("hangup", call_id=call, direction="outbound", disposition="contact" if contact else None)
        elif verb in OUTBOUND_HANGUP:
            add("hangup", call_id=call, direction="outbound", disposition=OUTBOUND_HANGUP[verb])
        elif verb == "OUTTRANSFER":
            add("transfer", call_id=call, direction="outbound", target=data[1] or None)
        return out


_MAPPED = frozenset(
    {
        "ENTERQUEUE",
        "CONNECT",
        "COMPLETECALLER",
        "COMPLETEAGENT",
        "ABANDON",
        "RINGNOANSWER",
        "RINGCANCELED",
        "OUTDIAL",
        "OUTANSWER",
        "OUTTRANSFER",
    }
    | set(EXIT_VERBS)
    | set(REFUSED_VERBS)
    | TRANSFER_VERBS
    | set(OUTBOUND_HANGUP)
    | set(AGENT_VERBS)
)


def _known(verb: str) -> bool:
    return verb in _MAPPED
