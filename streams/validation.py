"""Parse and validate Kafka message values into ``CallEvent``s; everything else becomes a ``Rejection``.

A message is one JSON object or a JSON array of objects (a batch). Each array element is validated on its
own, so one bad element never costs the others. Checks, in order: size (``too_large``), UTF-8
(``not_utf8``), JSON (``invalid_json``), shape (``not_an_object``), then per event: required fields
(``missing_field``), field types and domains (``wrong_type``), the type (``unknown_type``), the timestamp
(``bad_timestamp``) and clock skew (``too_new``). Lateness (``late``, ``too_old``) needs the stream time
and is decided by the sessionizer.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from streams.events import (
    AGENT_STATE_ALIASES,
    AGENT_STATES,
    DISPOSITIONS,
    EVENT_TYPES,
    EXIT_REASONS,
    REFUSED_REASONS,
    SURVEY_SCALES,
    CallEvent,
)
from streams.exceptions import EventValidationError

#: Accepted epoch range for timestamps, in seconds: 1970-01-01 (exclusive) to 2100-01-01.
MIN_EPOCH_S = 0
#: The agent states accepted in input: the canonical ones and their earlier names.
AGENT_STATE_NAMES = (*AGENT_STATES, *AGENT_STATE_ALIASES)
MAX_EPOCH_S = 4_102_444_800
#: Largest priority accepted, either sign (Asterisk's QUEUE_PRIO is a C int; a wider one is a mistake).
MAX_PRIORITY = 1_000_000


@dataclass(frozen=True, slots=True)
class Rejection:
    """A rejected event or message: the dead-letter record to write."""

    reason: str
    error: str
    raw: bytes


@dataclass(frozen=True, slots=True)
class ValidationConfig:
    """What validation needs from the settings."""

    max_event_bytes: int = 65536
    max_clock_skew_ms: int = 300_000
    caller_key: bytes = b""


def pseudonymise(caller: str, key: bytes) -> str:
    """Return the keyed hash of a caller number (HMAC-SHA256, first 16 hex digits).

    The same number gives the same pseudonym under the same key, so repeat callers can be recognised
    without storing the number.
    """
    return hmac.new(key, caller.encode("utf-8"), hashlib.sha256).hexdigest()[:16]


_SEPARATORS = str.maketrans("", "", " -.()/")


def plausible_number(caller: str) -> str | None:
    """The caller field as a number to call back, or None when it is not one.

    Spaces, dashes, dots, slashes and parentheses are dropped, a leading ``+`` is kept; what is left must be 3 to
    20 digits, not all zeros. ``anonymous``, ``Restricted``, an empty or withheld number are not numbers.
    """
    text = caller.strip().translate(_SEPARATORS)
    digits = text[1:] if text.startswith("+") else text
    if not (3 <= len(digits) <= 20 and digits.isascii() and digits.isdigit()) or not digits.strip("0"):
        return None
    return text


def parse_timestamp(value: object) -> int:
    """Return epoch milliseconds from an RFC 3339 string with offset or epoch seconds (a number).

    Raises:
        EventValidationError: ``wrong_type`` for another type, ``bad_timestamp`` for a value that does not
            parse, has no offset, or lies outside 1970..2100 (milliseconds sent as seconds land here).
    """
    if isinstance(value, bool):
        raise EventValidationError("wrong_type", "field ts must be an RFC 3339 string or epoch seconds")
    if isinstance(value, int | float):
        if not math.isfinite(value) or not MIN_EPOCH_S < value < MAX_EPOCH_S:
            hint = (
                " (milliseconds? ts is epoch seconds)"
                if isinstance(value, int | float) and value > MAX_EPOCH_S
                else ""
            )
            raise EventValidationError("bad_timestamp", f"ts={value!r} is outside 1970..2100{hint}")
        if isinstance(value, int):
            return value * 1000
        return round(value * 1000)
    if isinstance(value, str):
        text = value.strip()
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise EventValidationError(
                "bad_timestamp", f"ts={value!r} is not an RFC 3339 timestamp"
            ) from None
        if parsed.tzinfo is None or parsed.utcoffset() is None:
            raise EventValidationError("bad_timestamp", f"ts={value!r} has no UTC offset")
        seconds = parsed.timestamp()
        if not MIN_EPOCH_S < seconds < MAX_EPOCH_S:
            raise EventValidationError("bad_timestamp", f"ts={value!r} is outside 1970..2100")
        return int(seconds) * 1000 + parsed.microsecond // 1000
    raise EventValidationError("wrong_type", "field ts must be an RFC 3339 string or epoch seconds")


def _opt_str(obj: dict[str, Any], name: str) -> str | None:
    value = obj.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise EventValidationError("wrong_type", f"field {name} must be a non-empty string")
    return value


def _req_str(obj: dict[str, Any], name: str, why: str) -> str:
    value = obj.get(name)
    if value is None:
        raise EventValidationError("missing_field", f"field {name} is required {why}")
    if not isinstance(value, str) or not value:
        raise EventValidationError("wrong_type", f"field {name} must be a non-empty string")
    return value


def _choice(value: str | None, name: str, allowed: tuple[str, ...]) -> str | None:
    if value is not None and value not in allowed:
        raise EventValidationError(
            "wrong_type", f"field {name}={value!r} must be one of {', '.join(allowed)}"
        )
    return value


_new_event = tuple.__new__
OPTIONAL_STRINGS = ("queue", "agent", "campaign", "target", "tenant", "reason", "direction", "disposition")


def validate_event(obj: object, config: ValidationConfig, now_ms: int) -> CallEvent:
    """Validate one decoded JSON value as a canonical event.

    Raises:
        EventValidationError: with the rejection reason and a one-line error naming the field.
    """
    if not isinstance(obj, dict):
        raise EventValidationError(
            "not_an_object", f"an event must be a JSON object, not {type(obj).__name__}"
        )
    event_id = obj.get("event_id")
    if event_id is None:
        raise EventValidationError("missing_field", "field event_id is required")
    if not isinstance(event_id, str) or not event_id:
        raise EventValidationError("wrong_type", "field event_id must be a non-empty string")
    etype = obj.get("type")
    if etype is None:
        raise EventValidationError("missing_field", "field type is required")
    if not isinstance(etype, str):
        raise EventValidationError("wrong_type", "field type must be a string")
    if etype not in EVENT_TYPES:
        raise EventValidationError("unknown_type", f"type={etype!r} is not an event type")
    if "ts" not in obj:
        raise EventValidationError("missing_field", "field ts is required")
    ts_ms = parse_timestamp(obj["ts"])
    if ts_ms > now_ms + config.max_clock_skew_ms:
        raise EventValidationError(
            "too_new",
            f"ts is {(ts_ms - now_ms) / 1000:.0f} s ahead of the wall clock (max_clock_skew_s="
            f"{config.max_clock_skew_ms // 1000})",
        )

    get = obj.get
    queue, agent, campaign, target, tenant, reason, direction, disposition = (
        get("queue"),
        get("agent"),
        get("campaign"),
        get("target"),
        get("tenant"),
        get("reason"),
        get("direction"),
        get("disposition"),
    )
    # One pass for the common case (every optional string present is a non-empty string); the per-field
    # checks run only to name the offending field.
    for value in (queue, agent, campaign, target, tenant, reason, direction, disposition):
        if value is not None and (type(value) is not str or not value):
            for name in OPTIONAL_STRINGS:
                _opt_str(obj, name)
    if direction is not None:
        _choice(direction, "direction", ("inbound", "outbound"))
    if disposition is not None:
        _choice(disposition, "disposition", DISPOSITIONS)
    caller = obj.get("caller")
    if caller is not None:
        if isinstance(caller, int) and not isinstance(caller, bool):
            caller = str(caller)
        if not isinstance(caller, str):
            raise EventValidationError("wrong_type", "field caller must be a string")
        number = plausible_number(caller)
        # The same number written two ways is one caller; what is no number keeps its own pseudonym.
        caller = pseudonymise(number or caller, config.caller_key)
    else:
        number = None
    call_id: str | None = None
    state: str | None = None
    scale: str | None = None
    score: int | None = None
    priority = obj.get("priority")
    if priority is not None and (
        isinstance(priority, bool)
        or not isinstance(priority, int)
        or not -MAX_PRIORITY <= priority <= MAX_PRIORITY
    ):
        raise EventValidationError(
            "wrong_type", f"field priority must be a whole number in -{MAX_PRIORITY}..{MAX_PRIORITY}"
        )

    if etype == "agent_state":
        agent = _req_str(obj, "agent", "for agent_state")
        named = _choice(_req_str(obj, "state", "for agent_state"), "state", AGENT_STATE_NAMES) or ""
        state = AGENT_STATE_ALIASES.get(named, named)
        call_id = _opt_str(obj, "call_id")
    else:
        call_id = _req_str(obj, "call_id", f"for {etype}")
        if etype in ("queue", "refused"):
            queue = _req_str(obj, "queue", f"for {etype}")
        if etype == "exit":
            reason = _choice(_req_str(obj, "reason", "for exit"), "reason", EXIT_REASONS)
        elif etype == "refused":
            reason = _choice(_req_str(obj, "reason", "for refused"), "reason", REFUSED_REASONS)
        elif etype == "dial":
            campaign = _req_str(obj, "campaign", "for dial")
        elif etype == "survey":
            scale = _choice(_req_str(obj, "scale", "for survey"), "scale", tuple(SURVEY_SCALES))
            raw_score = obj.get("score")
            if raw_score is None:
                raise EventValidationError("missing_field", "field score is required for survey")
            if (
                isinstance(raw_score, bool)
                or not isinstance(raw_score, int | float)
                or raw_score != int(raw_score)
            ):
                raise EventValidationError("wrong_type", "field score must be a whole number")
            score = int(raw_score)
            low, high = SURVEY_SCALES[scale]  # type: ignore[index]
            if not low <= score <= high:
                raise EventValidationError(
                    "wrong_type", f"field score={score} must lie in {low}..{high} for {scale}"
                )
    # Every field, in CallEvent's order (tuple.__new__ skips the keyword handling: a sixth of the validation)
    return _new_event(
        CallEvent,
        (
            event_id,
            etype,
            ts_ms,
            call_id,
            queue,
            agent,
            direction == "outbound" or etype == "dial",
            caller,
            campaign,
            reason,
            disposition,
            target,
            score,
            scale,
            state,
            tenant,
            priority,
            number,
        ),
    )


def parse_message(
    raw: bytes, config: ValidationConfig, now_ms: int
) -> tuple[list[CallEvent], list[Rejection]]:
    """Split one Kafka message value into valid events and rejections.

    A rejection's ``raw`` is the whole message when it cannot be split into events, else the array element
    re-serialised as compact JSON.
    """
    if raw is None:
        return [], [Rejection("invalid_json", "message has no value", b"")]
    limit = config.max_event_bytes
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if len(raw) > limit:
            return [], [
                Rejection("too_large", f"message of {len(raw)} bytes exceeds max_event_bytes={limit}", raw)
            ]
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as uexc:
            return [], [
                Rejection("not_utf8", f"message is not UTF-8 ({uexc.reason} at byte {uexc.start})", raw)
            ]
        return [], [Rejection("invalid_json", f"message is not JSON ({str(exc).splitlines()[0]})", raw)]
    events: list[CallEvent] = []
    rejections: list[Rejection] = []
    if isinstance(value, list):
        check_size = len(raw) > limit
        for element in value:
            element_raw: bytes | None = None
            if check_size:
                element_raw = orjson.dumps(element)
                if len(element_raw) > limit:
                    rejections.append(
                        Rejection(
                            "too_large",
                            f"event of {len(element_raw)} bytes exceeds max_event_bytes={limit}",
                            element_raw,
                        )
                    )
                    continue
            try:
                events.append(validate_event(element, config, now_ms))
            except EventValidationError as exc:
                rejections.append(Rejection(exc.reason, exc.error, element_raw or orjson.dumps(element)))
        return events, rejections
    if len(raw) > limit:
        return [], [Rejection("too_large", f"event of {len(raw)} bytes exceeds max_event_bytes={limit}", raw)]
    if not isinstance(value, dict):
        return [], [
            Rejection(
                "not_an_object", f"message must be a JSON object or array, not {type(value).__name__}", raw
            )
        ]
    try:
        events.append(validate_event(value, config, now_ms))
    except EventValidationError as exc:
        rejections.append(Rejection(exc.reason, exc.error, raw))
    return events, rejections
