"""Per-queue thresholds and goals (DESIGN 4): the defaults, and overrides from CALLPULSE_QUEUES_FILE."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from streams.exceptions import ConfigError


@dataclass(frozen=True, slots=True)
class QueueTargets:
    """A queue's settings: thresholds T and S (seconds), goals, wrap-up time and static members.

    T is the service-level threshold and S the short-abandon threshold; the two goals lie in 0..1. The agents'
    wrap-up time after a call (seconds) mirrors Asterisk's ``wrapuptime``; the static members are agents always
    logged in to the queue, like the ``member =>`` lines of Asterisk's queues.conf.
    """

    sl_threshold_s: float = 20.0
    short_abandon_s: float = 10.0
    sl_goal: float = 0.80
    abandon_goal: float = 0.05
    wrapup_s: float = 0.0
    members: tuple[str, ...] = ()
    #: The queues of one group share their agents (and see each other's callers): their facts share one
    #: calls.facts partition, and the expected wait of a queue is worked out over its group ("": alone).
    group: str = ""

    def __post_init__(self) -> None:
        if self.sl_threshold_s < 0 or self.short_abandon_s < 0 or self.wrapup_s < 0:
            msg = "thresholds and the wrap-up time must be >= 0 seconds"
            raise ConfigError(msg)
        if not 0 <= self.sl_goal <= 1 or not 0 <= self.abandon_goal <= 1:
            msg = "goals must lie between 0 and 1"
            raise ConfigError(msg)

    @property
    def sl_threshold_ms(self) -> int:
        """The service-level threshold T in ms."""
        return round(self.sl_threshold_s * 1000)

    @property
    def short_abandon_ms(self) -> int:
        """The short-abandon threshold S in ms."""
        return round(self.short_abandon_s * 1000)

    @property
    def wrapup_ms(self) -> int:
        """The wrap-up time after a call in ms."""
        return round(self.wrapup_s * 1000)


#: Names accepted in a queue's entry of the queues file, mapped to QueueTargets fields.
QUEUE_FILE_FIELDS = {
    "sl_threshold": "sl_threshold_s",
    "short_abandon": "short_abandon_s",
    "sl_goal": "sl_goal",
    "abandon_goal": "abandon_goal",
    "wrapup": "wrapup_s",
    "members": "members",
    "group": "group",
}


@dataclass(frozen=True, slots=True)
class TargetsConfig:
    """Default targets plus per-queue overrides."""

    default: QueueTargets = QueueTargets()
    queues: dict[str, QueueTargets] = field(default_factory=dict)

    def for_queue(self, queue: str) -> QueueTargets:
        """The targets of a queue (the defaults for a queue the queues file does not name)."""
        return self.queues.get(queue, self.default)

    def group_of(self, queue: str) -> str:
        """The group of a queue ("" for a queue in none)."""
        return self.for_queue(queue).group

    def queues_of_group(self, group: str) -> tuple[str, ...]:
        """The queues of a group, in the queues file's order."""
        return tuple(q for q, t in self.queues.items() if t.group == group)

    def routing_key(self, fact_key: str) -> str:
        """The key that picks a facts message's partition: a grouped queue's group (``g:<group>``), else the key."""
        if fact_key.startswith("q:"):
            group = self.for_queue(fact_key[2:]).group
            if group:
                return "g:" + group
        return fact_key

    def static_members(self) -> dict[str, tuple[str, ...]]:
        """Agent -> the queues the queues file makes it a static member of."""
        out: dict[str, list[str]] = {}
        for queue, t in self.queues.items():
            for agent in t.members:
                out.setdefault(agent, []).append(queue)
        return {agent: tuple(queues) for agent, queues in out.items()}

    def all_thresholds_s(self) -> set[float]:
        """Every T and S in use: histogram bucket bounds must include them (DESIGN 5)."""
        out = {self.default.sl_threshold_s, self.default.short_abandon_s}
        for t in self.queues.values():
            out.update((t.sl_threshold_s, t.short_abandon_s))
        return out


def targets_from_mapping(default: QueueTargets, data: object, source: str) -> TargetsConfig:
    """Build a TargetsConfig from the decoded queues file: ``{queue: {sl_threshold: 30, ...}, ...}``.

    Raises:
        ConfigError: one sentence naming the file, the queue and the field.
    """
    if data is None:
        return TargetsConfig(default, {})
    if not isinstance(data, dict):
        msg = f"CALLPULSE_QUEUES_FILE {source} must map queue names to their thresholds and goals."
        raise ConfigError(msg)
    queues: dict[str, QueueTargets] = {}
    for queue, entry in data.items():
        if not isinstance(entry, dict):
            msg = f"CALLPULSE_QUEUES_FILE {source}: queue {queue!r} must map to a table of thresholds and goals."
            raise ConfigError(msg)
        changes: dict[str, object] = {}
        for name, value in entry.items():
            if name not in QUEUE_FILE_FIELDS:
                allowed = ", ".join(QUEUE_FILE_FIELDS)
                msg = f"CALLPULSE_QUEUES_FILE {source}: queue {queue!r} has unknown field {name!r} (allowed: {allowed})."
                raise ConfigError(msg)
            if name == "members":
                if not isinstance(value, list) or not all(isinstance(m, str) and m for m in value):
                    msg = f"CALLPULSE_QUEUES_FILE {source}: queue {queue!r} field 'members' must be a list of agent ids, not {value!r}."
                    raise ConfigError(msg)
                changes["members"] = tuple(dict.fromkeys(value))
                continue
            if name == "group":
                if not isinstance(value, str) or not value:
                    msg = f"CALLPULSE_QUEUES_FILE {source}: queue {queue!r} field 'group' must be a name, not {value!r}."
                    raise ConfigError(msg)
                changes["group"] = value
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                msg = f"CALLPULSE_QUEUES_FILE {source}: queue {queue!r} field {name!r} must be a number, not {value!r}."
                raise ConfigError(msg)
            changes[QUEUE_FILE_FIELDS[name]] = float(value)
        try:
            queues[str(queue)] = replace(default, **changes)  # type: ignore[arg-type]
        except ConfigError as exc:
            msg = f"CALLPULSE_QUEUES_FILE {source}: queue {queue!r}: {exc}."
            raise ConfigError(msg) from None
    return TargetsConfig(default, queues)
