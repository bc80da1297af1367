"""The canonical call event (DESIGN 2): types, field domains, tie-break order and the call-bucket key."""

from __future__ import annotations

import zlib
from typing import NamedTuple

#: Every event type of the input contract (DESIGN 2).
EVENT_TYPES: frozenset[str] = frozenset(
    (
        "ring",
        "queue",
        "answer",
        "agent_missed",
        "ring_canceled",
        "hold",
        "unhold",
        "transfer",
        "exit",
        "refused",
        "abandon",
        "hangup",
        "wrapup",
        "dial",
        "survey",
        "agent_state",
    )
)

#: Order of events with equal timestamps (DESIGN 2). ``dial`` starts an outbound call, so it ranks with
#: ``ring``; ``agent_state`` has no call and ranks on its own.
TYPE_RANK: dict[str, int] = {
    "ring": 0,
    "dial": 0,
    "queue": 1,
    "agent_missed": 2,
    "ring_canceled": 2,
    "answer": 3,
    "hold": 4,
    "unhold": 5,
    "transfer": 6,
    "exit": 7,
    "refused": 7,
    "abandon": 7,
    "hangup": 8,
    "wrapup": 9,
    "survey": 10,
    "agent_state": 11,
    # Synthetic: a call idle for CALLPULSE_CALL_TIMEOUT; never in the input.
    "expire": 12,
}

EXIT_REASONS = ("timeout", "key", "empty", "withdraw", "callback")
#: The exit reason the sessionizer adds itself: ``transfer``, for a queued call that moves to another queue
#: or is transferred away without an exit event. (A stint closed by ``CALLPULSE_CALL_TIMEOUT`` is no exit:
#: it is counted as expired.)
IMPLICIT_EXIT_REASONS = ("transfer",)
REFUSED_REASONS = ("full", "joinempty", "closed")
DISPOSITIONS = ("no_answer", "busy", "failed", "voicemail", "contact", "success")
AGENT_STATES = ("available", "on_call", "acw", "paused", "offline")
#: Earlier names of agent states, still accepted in input: ``busy`` is ``on_call``.
AGENT_STATE_ALIASES = {"busy": "on_call"}
#: Survey scales and their score ranges (inclusive).
SURVEY_SCALES: dict[str, tuple[int, int]] = {"csat": (1, 5), "nps": (0, 10)}

#: Why an event or message went to the dead-letter topic.
REJECTION_REASONS = (
    "invalid_json",
    "not_utf8",
    "not_an_object",
    "missing_field",
    "wrong_type",
    "unknown_type",
    "bad_timestamp",
    "too_large",
    "too_old",
    "too_new",
    "late",
    "bad_line",
    "undecodable_batch",
)

#: Number of call buckets; a bucket is the Kafka message key of every event of a call.
BUCKETS = 256


def call_bucket(call_id: str) -> str:
    """Return the message key for every event of ``call_id`` (or, for agent events, of the agent id).

    It is ``str(zlib.crc32(call_id.encode("utf-8")) % 256)``: stable across processes and languages, so
    any producer can compute it. All events of one call must travel under this one key.
    """
    return str(zlib.crc32(call_id.encode("utf-8")) % BUCKETS)


class CallEvent(NamedTuple):
    """One validated event (immutable). ``ts_ms`` is epoch milliseconds; ``caller`` is already pseudonymised."""

    event_id: str
    type: str
    ts_ms: int
    call_id: str | None = None
    queue: str | None = None
    agent: str | None = None
    outbound: bool = False
    caller: str | None = None
    campaign: str | None = None
    reason: str | None = None
    disposition: str | None = None
    target: str | None = None
    score: int | None = None
    scale: str | None = None
    state: str | None = None
    tenant: str | None = None
    #: The caller's priority in the queue (higher is served first), where the source gives one.
    priority: int | None = None
    #: The caller's number when it is a plausible one (``streams.validation.plausible_number``): kept only to
    #: reach the callback list; never in facts, metrics or logs.
    number: str | None = None

    @property
    def key(self) -> str:
        """The call bucket of this event (the agent's bucket for ``agent_state``, even with a call id)."""
        if self.type == "agent_state":
            return call_bucket(self.agent or "")
        return call_bucket(self.call_id or "")
