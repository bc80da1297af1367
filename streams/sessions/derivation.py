"""What a call's derivation gives: its facts, whether it ended, and what a later event may still change."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from streams.facts import Fact
from streams.sessions.agents import Work
from streams.sessions.callers import CallerUpdate

if TYPE_CHECKING:
    from streams.sessions.inbound import InboundWalk


class Unexpected(NamedTuple):
    """An event that no row of the call's state machine admits in the state the call was in: ignored."""

    event_id: str
    type: str
    state: str


@dataclass(slots=True)
class Derivation:
    """What ``derive`` knows about a call after its events."""

    facts: list[Fact]
    ended: bool
    #: Queue key a later survey is attributed to ("" when none).
    survey_key: str
    #: The last completed fact while no wrap-up has amended it (a late wrap-up may still do so).
    open_completed: Fact | None
    #: The inbound walk after the last event: a strictly later event can continue it (not persisted).
    walk: InboundWalk | None = None
    #: The events the walk ignored because no transition admits them (see ``streams.sessions.inbound``).
    unexpected: tuple[Unexpected, ...] = ()
    #: Agent -> its stretches of work on the call (answered, ended, wrapped up), for the agent's timeline.
    works: dict[str, tuple[Work, ...]] | None = None
    #: What the call did for its caller's history (its stints, when it reached an agent), for the caller's
    #: bucket; None when the call has no plausible number.
    caller: CallerUpdate | None = None
