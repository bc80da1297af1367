"""callpulse settings: every ``CALLPULSE_*`` environment variable, read once into one object.

That object is validated, typed and frozen. ``SPECS`` is the one list of the settings: name, parser (the
validation), default and documentation; ``Settings`` has one typed field per row. A bad value stops
start-up with one plain sentence naming the setting (``SettingsError``); an unknown ``CALLPULSE_*`` name
gets a warning. Durations are numbers of seconds. Faust's own unprefixed variables (``BROKER_URL``,
``WEB_PORT``, ...) are never read: the Faust app is built with ``env={}``. What the settings mean for the
network (SASL and the TLS context, the embedded broker's resolved address) is app.kafka's.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import secrets
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
import yaml

from streams.config import QueueTargets, TargetsConfig, targets_from_mapping
from streams.ewt import DEFAULT_ESTIMATOR, ESTIMATORS
from streams.exceptions import ConfigError
from streams.kpi import KpiConfig
from streams.sessions import SessionConfig
from streams.sessions.callers import CallerRules
from streams.validation import ValidationConfig
from streams.windows import WindowSpec

PREFIX = "CALLPULSE_"


class SettingsError(ConfigError):
    """A setting is invalid: the message is one sentence naming it."""


def _number(minimum: float, maximum: float | None = None, integer: bool = False) -> Callable[[str, str], Any]:
    def parse(name: str, raw: str) -> Any:
        kind = "a whole number" if integer else "a number"
        try:
            value = int(raw) if integer else float(raw)
        except ValueError:
            raise SettingsError(f"{PREFIX}{name} must be {kind}, not {raw!r}.") from None
        if value != value or value < minimum or (maximum is not None and value > maximum):  # NaN included
            bounds = (
                f"between {minimum:g} and {maximum:g}" if maximum is not None else f"at least {minimum:g}"
            )
            raise SettingsError(f"{PREFIX}{name} must be {kind} {bounds}, not {raw!r}.")
        return value

    return parse


def _choice(*allowed: str) -> Callable[[str, str], str]:
    def parse(name: str, raw: str) -> str:
        value = raw.strip()
        if value not in allowed:
            raise SettingsError(f"{PREFIX}{name} must be one of {', '.join(allowed)}, not {raw!r}.")
        return value

    return parse


def _text(name: str, raw: str) -> str:
    return raw


def _broker(name: str, raw: str) -> str:
    for part in raw.split(","):
        url = part.strip()
        parsed = urlsplit(url if "://" in url else "kafka://" + url)
        if parsed.scheme != "kafka" or not parsed.hostname:
            raise SettingsError(
                f"{PREFIX}{name} must be kafka://host:port (comma-separated for several), not {raw!r}."
            )
        try:
            parsed.port  # noqa: B018 - raises for a bad port
        except ValueError:
            raise SettingsError(f"{PREFIX}{name} has a bad port in {raw!r}.") from None
    return raw


def _store(name: str, raw: str) -> str:
    value = raw.strip()
    if value not in ("memory://", "rocksdb://"):
        raise SettingsError(f"{PREFIX}{name} must be memory:// or rocksdb://, not {raw!r}.")
    return value


def _tz(name: str, raw: str) -> str:
    try:
        ZoneInfo(raw)
    except (ZoneInfoNotFoundError, ValueError):
        raise SettingsError(
            f"{PREFIX}{name} must be an IANA time zone such as Europe/Paris, not {raw!r}."
        ) from None
    return raw


def _host(name: str, raw: str) -> str:
    value = raw.strip()
    if not value or any(c in value for c in "/ :") and not _is_ip(value):
        raise SettingsError(f"{PREFIX}{name} must be a host name or IP address, not {raw!r}.")
    return value


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _existing_file(name: str, raw: str) -> str:
    if not Path(raw).is_file():
        raise SettingsError(f"{PREFIX}{name} names {raw!r}, which is not a readable file.")
    return raw


def _bool_auto(name: str, raw: str) -> str:
    value = raw.strip().lower()
    mapping = {
        "1": "true",
        "true": "true",
        "yes": "true",
        "0": "false",
        "false": "false",
        "no": "false",
        "auto": "auto",
    }
    if value not in mapping:
        raise SettingsError(f"{PREFIX}{name} must be auto, true or false, not {raw!r}.")
    return mapping[value]


@dataclass(frozen=True)
class Spec:
    """One setting: its parser, default (as text, or None for unset) and documentation."""

    parse: Callable[[str, str], Any]
    default: str | None
    doc: str
    secret: bool = False


#: Every setting, in the order of docs/settings.md. Names are without the CALLPULSE_ prefix.
SPECS: dict[str, Spec] = {
    "BROKER": Spec(
        _broker, "kafka://localhost:9092", "Kafka bootstrap servers, kafka://host:port[,kafka://host:port]."
    ),
    "PARTITIONS": Spec(_number(1, 10_000, integer=True), "8", "Partitions of the topics callpulse creates."),
    "REPLICATION_FACTOR": Spec(
        _number(1, 10, integer=True), "1", "Replication factor of the topics callpulse creates."
    ),
    "COMPRESSION": Spec(
        _choice("none", "gzip", "snappy", "lz4", "zstd"),
        "none",
        "Compression of what callpulse produces (events, facts, dead letters, table changelogs).",
    ),
    "APP_ID": Spec(
        _text, "callpulse", "Faust application id: the consumer group and the prefix of changelog topics."
    ),
    "STORE": Spec(
        _store, "memory://", "Table store: memory:// (state rebuilt from changelogs at start) or rocksdb://."
    ),
    "DATADIR": Spec(_text, "data", "Directory for the RocksDB store and Faust's files."),
    "WEB_HOST": Spec(_host, "127.0.0.1", "Interface the metrics/API listener binds."),
    "WEB_PORT": Spec(_number(1, 65535, integer=True), "6066", "Port of the metrics/API listener."),
    "ADVERTISED_URL": Spec(
        _text, None, "URL other workers use to reach this one's API (default http://WEB_HOST:WEB_PORT)."
    ),
    "TZ": Spec(_tz, "UTC", "Time zone of the 'today' window and of intervals."),
    "DAY_START": Spec(_number(0, 23, integer=True), "0", "Hour of the local day at which 'today' starts."),
    "INTERVAL": Spec(_choice("15", "30"), "15", "Length in minutes of the 'interval' window (15 or 30)."),
    "CLOCK": Spec(
        _choice("wall", "event"),
        "wall",
        "'Now' of the windows: the wall clock, or the stream time (replays).",
    ),
    "GRACE": Spec(_number(0, 86_400), "120", "Seconds an event may arrive late and still be applied."),
    "SL_THRESHOLD": Spec(
        _number(0, 86_400), "20", "Service-level threshold T in seconds (default for every queue)."
    ),
    "SHORT_ABANDON": Spec(
        _number(0, 86_400), "10", "Short-abandon threshold S in seconds (default for every queue)."
    ),
    "SL_GOAL": Spec(_number(0, 1), "0.8", "Service-level goal, 0..1 (default for every queue)."),
    "ABANDON_GOAL": Spec(_number(0, 1), "0.05", "Abandonment goal, 0..1 (default for every queue)."),
    "QUEUES_FILE": Spec(_existing_file, None, "YAML or JSON file of per-queue thresholds and goals."),
    "CONTACT_MIN_TALK": Spec(
        _number(0, 86_400), "30", "Outbound talk seconds that make a contact when no disposition says."
    ),
    "CALL_TIMEOUT": Spec(
        _number(1, 30 * 86_400), "14400", "Seconds without an event after which a call is closed as expired."
    ),
    "DEDUP_TTL": Spec(
        _number(0, 30 * 86_400),
        "86400",
        "Seconds a finished call's event ids are remembered for de-duplication.",
    ),
    "AGENT_HISTORY": Spec(
        _number(0, 30 * 86_400),
        "3600",
        "Seconds an agent's timeline stays open to the work of its calls, which reaches it a hop later.",
    ),
    "AGENT_METRICS": Spec(
        _choice("false", "true"),
        "false",
        "Export per-agent series on /metrics (agent ids are high-cardinality; off by default).",
    ),
    "EWT_ESTIMATOR": Spec(
        _choice(*ESTIMATORS),
        DEFAULT_ESTIMATOR,
        "The estimator of the expected wait announced (the gauge, the API's expected_wait_seconds) and of "
        "callpulse_ewt_error_seconds: best (the one with the lowest measured error per queue), qlm, ql, hol, les "
        "or asterisk.",
    ),
    "MAX_AGENTS": Spec(
        _number(1, 100_000, integer=True),
        "500",
        "Agents exported per worker with CALLPULSE_AGENT_METRICS=true (the first seen; the rest are not exported).",
    ),
    "MAX_QUEUES": Spec(
        _number(1, 100_000, integer=True),
        "200",
        "Queues (and campaigns) exported per worker; the rest fold into _other.",
    ),
    "MAX_EVENT_BYTES": Spec(
        _number(256, 16 * 1024 * 1024, integer=True), "65536", "Largest accepted event, in bytes."
    ),
    "MAX_EVENT_AGE": Spec(
        _number(1, 365 * 86_400),
        "86400",
        "Events older than the stream time by more are rejected as too_old.",
    ),
    "MAX_CLOCK_SKEW": Spec(
        _number(0, 86_400), "300", "Events newer than the wall clock by more are rejected as too_new."
    ),
    "CALLER_KEY": Spec(_text, None, "Secret key of the caller-number pseudonyms (HMAC-SHA256).", secret=True),
    "REPEAT_WINDOW": Spec(
        _number(0, 366 * 86_400),
        "86400",
        "Seconds after an answered call within which the caller's next call to the same queue is a repeat.",
    ),
    "CALLBACK_TTL": Spec(
        _number(0, 366 * 86_400),
        "86400",
        "Seconds after a caller's latest abandon that it stays on the callback list without reaching an agent.",
    ),
    "RECOVERY_WINDOW": Spec(
        _number(0, 366 * 86_400),
        "3600",
        "Seconds after an abandon within which reaching an agent counts the abandon as recovered.",
    ),
    "VOLUME_WEEKS": Spec(
        _number(1, 53, integer=True),
        "8",
        "Weeks of hourly call volume kept per queue (GET /api/v1/queues/{queue}/volume).",
    ),
    "API_TOKEN": Spec(
        _text,
        None,
        "Bearer token of the endpoints that return callers' numbers (/api/v1/callbacks); unset: they are off.",
        secret=True,
    ),
    "CALLBACKS_RETENTION": Spec(
        _number(60, 365 * 86_400),
        "604800",
        "Retention of calls.callbacks in seconds (it holds callers' numbers).",
    ),
    "DEADLETTER_RETENTION": Spec(
        _number(60, 365 * 86_400),
        "604800",
        "Retention of calls.deadletter in seconds (it holds raw caller numbers).",
    ),
    "CHECKPOINT_INTERVAL": Spec(
        _number(0.01, 60), "1", "Seconds between state checkpoints (changelog writes and offset acks)."
    ),
    "EMBEDDED_BROKER": Spec(
        _bool_auto, "auto", "Apply the embedded-broker workarounds: auto detects callpulse's own broker."
    ),
    "LOG_LEVEL": Spec(_choice("debug", "info", "warning", "error"), "info", "Log level."),
    "SECURITY_PROTOCOL": Spec(
        _choice("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"), "PLAINTEXT", "Kafka security protocol."
    ),
    "SASL_MECHANISM": Spec(_choice("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"), "PLAIN", "SASL mechanism."),
    "SASL_USERNAME": Spec(_text, None, "SASL user name."),
    "SASL_PASSWORD": Spec(_text, None, "SASL password.", secret=True),
    "SSL_CAFILE": Spec(_existing_file, None, "CA bundle to verify the brokers' TLS certificates."),
}


@dataclass(frozen=True, slots=True, repr=False)
class Settings:
    """The validated settings: one typed field per row of ``SPECS``.

    Each field is named in lower case and in the order of ``SPECS`` (tests/app/test_settings.py checks both
    ways). Build with ``Settings.from_env``.
    """

    broker: str
    partitions: int
    replication_factor: int
    compression: str
    app_id: str
    store: str
    datadir: str
    web_host: str
    web_port: int
    #: As set; the URL to use is ``api_url``.
    advertised_url: str | None
    tz: str
    day_start: int
    interval: str
    clock: str
    grace: float
    sl_threshold: float
    short_abandon: float
    sl_goal: float
    abandon_goal: float
    queues_file: str | None
    contact_min_talk: float
    call_timeout: float
    dedup_ttl: float
    agent_history: float
    agent_metrics: str
    ewt_estimator: str
    max_agents: int
    max_queues: int
    max_event_bytes: int
    max_event_age: float
    max_clock_skew: float
    #: Never unset: ``from_env`` draws a random key when CALLPULSE_CALLER_KEY is not set.
    caller_key: str
    repeat_window: float
    callback_ttl: float
    recovery_window: float
    volume_weeks: int
    api_token: str | None
    callbacks_retention: float
    deadletter_retention: float
    checkpoint_interval: float
    embedded_broker: str
    log_level: str
    security_protocol: str
    sasl_mechanism: str
    sasl_username: str | None
    sasl_password: str | None
    ssl_cafile: str | None
    warnings: tuple[str, ...] = ()
    targets: TargetsConfig = field(default_factory=TargetsConfig)

    def __repr__(self) -> str:
        shown = {}
        for name, spec in SPECS.items():
            value = getattr(self, name.lower())
            shown[name] = "***" if spec.secret and value else value
        return f"Settings({shown})"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read and validate every setting from ``env`` (default: the process environment)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for name, spec in SPECS.items():
            raw = env.get(PREFIX + name)
            if raw is None or raw == "":
                raw = spec.default
            values[name] = None if raw is None else spec.parse(name, raw)
        warnings = []
        for key in sorted(env):
            if key.startswith(PREFIX) and key[len(PREFIX) :] not in SPECS:
                close = difflib.get_close_matches(key[len(PREFIX) :], SPECS, n=1)
                hint = f" (did you mean {PREFIX}{close[0]}?)" if close else ""
                warnings.append(f"{key} is not a callpulse setting and is ignored{hint}.")
        if values["SASL_USERNAME"] and not values["SECURITY_PROTOCOL"].startswith("SASL"):
            raise SettingsError(
                f"{PREFIX}SASL_USERNAME is set but {PREFIX}SECURITY_PROTOCOL is not SASL_PLAINTEXT or SASL_SSL."
            )
        if values["SECURITY_PROTOCOL"].startswith("SASL") and not (
            values["SASL_USERNAME"] and values["SASL_PASSWORD"]
        ):
            raise SettingsError(
                f"{PREFIX}SECURITY_PROTOCOL {values['SECURITY_PROTOCOL']} needs {PREFIX}SASL_USERNAME and {PREFIX}SASL_PASSWORD."
            )
        if values["CALLER_KEY"] is None:
            values["CALLER_KEY"] = secrets.token_hex(32)
            warnings.append(
                f"{PREFIX}CALLER_KEY is not set: caller pseudonyms use a random key and change at every start."
            )
        default = QueueTargets(
            values["SL_THRESHOLD"], values["SHORT_ABANDON"], values["SL_GOAL"], values["ABANDON_GOAL"]
        )
        targets = TargetsConfig(default, {})
        if values["QUEUES_FILE"]:
            targets = _load_queues_file(values["QUEUES_FILE"], default)
        return cls(
            **{name.lower(): value for name, value in values.items()},
            warnings=tuple(warnings),
            targets=targets,
        )

    # -- derived views for the core -------------------------------------------------------------------------
    @property
    def bootstrap_servers(self) -> list[str]:
        """``host:port`` of each broker of CALLPULSE_BROKER (scheme optional, port 9092 by default)."""
        out = []
        for part in self.broker.split(","):
            url = part.strip()
            parsed = urlsplit(url if "://" in url else "kafka://" + url)
            out.append(f"{parsed.hostname}:{parsed.port or 9092}")
        return out

    @property
    def broker_url(self) -> str:
        """The brokers as Faust's broker URL: ``kafka://host:port`` each, joined by ``;``."""
        return ";".join(f"kafka://{s}" for s in self.bootstrap_servers)

    @property
    def api_url(self) -> str:
        """The URL other workers reach this one's API at.

        CALLPULSE_ADVERTISED_URL, by default http://WEB_HOST:WEB_PORT (the host's name when WEB_HOST is every
        interface).
        """
        if self.advertised_url:
            return self.advertised_url
        host = self.web_host
        if host in ("0.0.0.0", "::"):
            host = socket.gethostname()
        return f"http://{host}:{self.web_port}"

    @property
    def validation(self) -> ValidationConfig:
        """The event validation of the core: size limit, clock skew (in ms) and the caller-pseudonym key."""
        return ValidationConfig(
            max_event_bytes=self.max_event_bytes,
            max_clock_skew_ms=round(self.max_clock_skew * 1000),
            caller_key=self.caller_key.encode("utf-8"),
        )

    @property
    def session(self) -> SessionConfig:
        """The sessionizer configuration of the core, its durations in ms."""
        return SessionConfig(
            grace_ms=round(self.grace * 1000),
            call_timeout_ms=round(self.call_timeout * 1000),
            dedup_ttl_ms=round(self.dedup_ttl * 1000),
            max_event_age_ms=round(self.max_event_age * 1000),
            contact_min_talk_ms=round(self.contact_min_talk * 1000),
            agent_history_ms=round(self.agent_history * 1000),
            wrapup_ms={q: t.wrapup_ms for q, t in self.targets.queues.items()},
            default_wrapup_ms=self.targets.default.wrapup_ms,
            static_members=self.targets.static_members(),
            caller_rules=CallerRules(
                repeat_window_ms=round(self.repeat_window * 1000),
                callback_ttl_ms=round(self.callback_ttl * 1000),
                recovery_ms=round(self.recovery_window * 1000),
                short_abandon_ms=self._short_abandon_ms,
            ),
        )

    def _short_abandon_ms(self, queue: str) -> int:
        return self.targets.for_queue(queue).short_abandon_ms

    @property
    def kpi(self) -> KpiConfig:
        """The KPI engine configuration of the core: queue targets, windows, call timeout, dedup TTL (ms)."""
        return KpiConfig(
            targets=self.targets,
            windows=WindowSpec(tz=self.tz, day_start_h=self.day_start, interval_min=int(self.interval)),
            call_timeout_ms=round(self.call_timeout * 1000),
            dedup_ttl_ms=round(self.dedup_ttl * 1000),
            ewt_estimator=self.ewt_estimator,
            volume_weeks=self.volume_weeks,
        )


def _load_queues_file(path: str, default: QueueTargets) -> TargetsConfig:
    text = Path(path).read_text(encoding="utf-8")
    try:
        data = orjson.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (orjson.JSONDecodeError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0]
        raise SettingsError(f"{PREFIX}QUEUES_FILE {path} does not parse ({first}).") from None
    try:
        return targets_from_mapping(default, data, path)
    except ConfigError as exc:
        raise SettingsError(str(exc)) from None


def setting_names() -> list[str]:
    """Every setting's full environment name."""
    return [PREFIX + name for name in SPECS]


__all__ = ["PREFIX", "SPECS", "Settings", "SettingsError", "setting_names"]
