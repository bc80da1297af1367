"""Callers across their calls: repeat callers, the callback list of callers who hung up, abandon recovery.

A caller is known by its number's pseudonym. Its calls travel under different keys (one per call), so each
call's bucket sends what the call did (``CallerUpdate``: the caller's stints in queues, and when it reached an
agent) to the caller's bucket (``call_bucket(pseudonym)``), as a call's work goes to its agent's. Only a call
with a plausible number is sent: an anonymous or withheld caller is never a repeat and never called back.

The caller's bucket keeps each recent call's latest update (``CallerSession``) and derives, as a pure function
of them and of its clock:

- **repeats**: a call entering queue q is a *repeat* when the same caller had another call answered in q within
  the repeat window before (``repeat`` fact, at the entry, keyed by the queue);
- **the callback list**: per queue, a caller who abandoned (a wait of at least the queue's short-abandon
  threshold S) is *pending* from that abandon until it reaches an agent (in any queue, in any later call, or
  when an outbound call to it is answered), or until the callback TTL after its latest abandon. Abandoning
  again while pending adds an attempt. The entry (``Callback``) carries the raw number: it is the point of the
  list, which is published only on ``calls.callbacks`` and the token-protected ``/api/v1/callbacks``; the
  facts carry the pseudonym alone (``callback`` facts, an upsert per caller and queue, for the pending count);
- **abandon recovery**: each such abandon is *recovered* when the caller reaches an agent within the recovery
  window after it (``abandon_recovered`` at that time), else *unrecovered* once the window has passed
  (``abandon_unrecovered``, at its end).

A call's summary is kept until the longest of the three windows has passed after its last time; its answers
stay longer (``CallerSession.history``), for the repeats of the calls after it, and nothing it counted is taken
back. A caller with neither left is forgotten.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from streams.facts import Fact, diff, queue_key

#: Outcomes of a stint in a caller's summary ("waiting": not yet left; "expired": lost to the call timeout).
STINT_OUTCOMES = ("waiting", "answered", "abandoned", "exited", "expired")


class Stint(NamedTuple):
    """One time the call waited in a queue (persisted as this JSON array)."""

    queue: str
    entered_ms: int
    outcome: str
    #: When it left the queue; -1 while waiting.
    left_ms: int = -1


class CallerUpdate(NamedTuple):
    """What one call of a caller did, as the call's bucket now derives it (an upsert)."""

    caller: str
    call_id: str
    #: The caller's number (plausible, as the source gave it; kept for the callback list only).
    number: str
    stints: tuple[Stint, ...]
    #: When the caller first reached an agent in this call (answered from a queue or directly, or the callee
    #: answered an outbound call); -1 when it has not.
    reached_ms: int = -1

    def last_ms(self) -> int:
        """The latest time the call tells of."""
        times = [self.reached_ms, *(max(s.entered_ms, s.left_ms) for s in self.stints)]
        return max(times)


class Callback(NamedTuple):
    """A caller pending a call back in one queue."""

    queue: str
    caller: str
    number: str
    #: The first abandon of the entry, the latest, how many, and the call of the latest (with its wait).
    since_ms: int
    last_ms: int
    attempts: int
    call_id: str
    wait_ms: int


@dataclass(frozen=True, slots=True)
class CallerRules:
    """What a caller's derivation needs from the settings (ms)."""

    repeat_window_ms: int = 24 * 3600_000
    callback_ttl_ms: int = 24 * 3600_000
    recovery_ms: int = 3600_000
    #: Queue -> its short-abandon threshold S: a shorter abandon is no call-back request.
    short_abandon_ms: Callable[[str], int] = field(default=lambda _queue: 10_000)

    @property
    def keep_ms(self) -> int:
        """How long a call's summary is kept after its last time."""
        return max(self.repeat_window_ms, self.callback_ttl_ms, self.recovery_ms)


class Derived(NamedTuple):
    """A caller's facts and its open callback entries at a clock, and when that next changes (-1: never)."""

    facts: list[Fact]
    callbacks: list[Callback]
    next_ms: int


def derive_caller(
    caller: str,
    calls: dict[str, CallerUpdate],
    rules: CallerRules,
    clock: int,
    history: list[tuple[str, int, str]] | None = None,
) -> Derived:
    """Everything a caller's recent calls say, at ``clock`` (see the module docstring).

    ``history``: the answers (queue, time, call) of calls already forgotten, which later calls' repeats still read.
    """
    facts: list[Fact] = []
    reaches: list[int] = sorted(u.reached_ms for u in calls.values() if u.reached_ms >= 0)
    # Repeats: per call and queue, the first entry, and the other calls' answers in that queue.
    answered: dict[str, list[tuple[int, str]]] = {}
    for queue, at, call_id in history or ():
        answered.setdefault(queue, []).append((at, call_id))
    for call_id, u in calls.items():
        for s in u.stints:
            if s.outcome == "answered":
                answered.setdefault(s.queue, []).append((s.left_ms, call_id))
    for call_id in sorted(calls, key=lambda c: (calls[c].stints[0].entered_ms if calls[c].stints else 0, c)):
        seen: set[str] = set()
        for s in calls[call_id].stints:
            if s.queue in seen:
                continue
            seen.add(s.queue)
            window = s.entered_ms - rules.repeat_window_ms  # answered less than the window before the entry
            if any(c != call_id and window < at < s.entered_ms for at, c in answered.get(s.queue, ())):
                facts.append(
                    Fact("repeat", queue_key(s.queue), s.entered_ms, f"repeat:{call_id}:{s.queue}", call_id)
                )
    # Abandons that ask for a call back, in time order.
    abandons = sorted(
        (s.left_ms, s.queue, call_id, s.left_ms - s.entered_ms, calls[call_id].number)
        for call_id, u in calls.items()
        for s in u.stints
        if s.outcome == "abandoned" and s.left_ms - s.entered_ms >= rules.short_abandon_ms(s.queue)
    )
    next_ms = -1

    def later(t: int) -> None:
        nonlocal next_ms
        if t > clock and (next_ms < 0 or t < next_ms):
            next_ms = t

    for at, queue, call_id, _wait, _number in abandons:
        reached = next((r for r in reaches if r > at), -1)
        fid = f"{call_id}:{queue}:{at}"
        if 0 <= reached <= at + rules.recovery_ms:
            if reached <= clock:
                facts.append(
                    Fact("abandon_recovered", queue_key(queue), reached, "abandon_recovered:" + fid, call_id)
                )
            else:
                later(reached)
        elif at + rules.recovery_ms <= clock:
            end = at + rules.recovery_ms
            facts.append(
                Fact("abandon_unrecovered", queue_key(queue), end, "abandon_unrecovered:" + fid, call_id)
            )
        else:
            later(at + rules.recovery_ms)
    # The callback entries, queue by queue: open at an abandon, closed by a reach after it or the TTL.
    callbacks: list[Callback] = []
    by_queue: dict[str, list[tuple[int, str, int, str]]] = {}
    for at, queue, call_id, wait, number in abandons:
        by_queue.setdefault(queue, []).append((at, call_id, wait, number))
    for queue in sorted(by_queue):
        entry: Callback | None = None
        for at, call_id, wait, number in by_queue[queue]:
            if entry is not None and _closed(entry, reaches, rules, at):
                entry = None
            if entry is None:
                entry = Callback(queue, caller, number, at, at, 1, call_id, wait)
            else:
                entry = entry._replace(
                    last_ms=at, attempts=entry.attempts + 1, call_id=call_id, wait_ms=wait, number=number
                )
        if entry is None or entry.since_ms > clock:
            continue
        if _closed(entry, reaches, rules, clock):
            continue
        callbacks.append(entry)
        later(entry.last_ms + rules.callback_ttl_ms)
        facts.append(
            # An upsert per caller and queue: ``call`` names the caller (the identity of a live value).
            Fact(
                "callback",
                queue_key(queue),
                entry.last_ms,
                f"callback:{caller}",
                caller,
                caller=caller,
                since_ms=entry.since_ms,
            )
        )
    return Derived(facts, callbacks, next_ms)


def _closed(entry: Callback, reaches: list[int], rules: CallerRules, at: int) -> bool:
    """Whether a callback entry is over by ``at``.

    It is when the caller reached an agent after its latest abandon, or the TTL after that abandon has passed.
    """
    if entry.last_ms + rules.callback_ttl_ms <= at:
        return True
    return any(entry.last_ms < r <= at for r in reaches)


class CallerSession:
    """One caller's recent calls (the latest update of each) and what was last derived from them.

    A call forgotten leaves its answers behind (``history``), for the repeats of the calls after it, until no call
    that could read them is left; the facts it had are not taken back.
    """

    __slots__ = ("calls", "history", "facts", "callbacks", "next_ms")

    def __init__(self) -> None:
        self.calls: dict[str, CallerUpdate] = {}
        #: (queue, answer time, call) of forgotten calls' answers
        self.history: list[tuple[str, int, str]] = []
        self.facts: list[Fact] = []
        self.callbacks: list[Callback] = []
        self.next_ms = -1

    def update(
        self, caller: str, rules: CallerRules, clock: int
    ) -> tuple[list[Fact], list[Callback], list[Callback]]:
        """Derive again at ``clock``: the facts that change, and the callback entries opened or changed, and closed."""
        derived = derive_caller(caller, self.calls, rules, clock, self.history)
        changes = diff(self.facts, derived.facts)
        old = {c.queue: c for c in self.callbacks}
        new = {c.queue: c for c in derived.callbacks}
        opened = [c for q, c in new.items() if old.get(q) != c]
        closed = [c for q, c in old.items() if q not in new]
        self.facts, self.callbacks, self.next_ms = derived.facts, derived.callbacks, derived.next_ms
        return changes, opened, closed

    def forget_before(self, before: int, history_before: int) -> bool:
        """Drop the calls whose last time is before ``before`` (none still waiting); whether any was dropped.

        Their answers go to ``history`` (kept from ``history_before`` on), and their own facts are dropped from
        what was derived, so that deriving again does not take them back.
        """
        old = {
            c for c, u in self.calls.items() if u.last_ms() < before and all(s.left_ms >= 0 for s in u.stints)
        }
        for call_id in old:
            u = self.calls.pop(call_id)
            self.history.extend((s.queue, s.left_ms, call_id) for s in u.stints if s.outcome == "answered")
        kept = [h for h in self.history if h[1] >= history_before]
        dropped = len(kept) != len(self.history)
        self.history = kept
        if old:
            self.facts = [f for f in self.facts if f.call not in old]
        return bool(old) or dropped

    def idle(self) -> bool:
        """No call, and no answer a later call could read, left: the caller can be forgotten."""
        return not self.calls and not self.history

    def to_wire(self) -> dict[str, Any]:
        """The persisted form: each call's update as a JSON array, and the forgotten calls' answers."""
        calls = [
            [u.call_id, u.number, [list(s) for s in u.stints], u.reached_ms] for u in self.calls.values()
        ]
        return {"calls": calls, "history": [list(h) for h in self.history]}

    @classmethod
    def from_wire(cls, caller: str, data: dict[str, Any]) -> CallerSession:
        """Inverse of ``to_wire``."""
        session = cls()
        for call_id, number, stints, reached in data["calls"]:
            session.calls[call_id] = CallerUpdate(
                caller, call_id, number, tuple(Stint(*s) for s in stints), reached
            )
        session.history = [(str(q), int(t), str(c)) for q, t, c in data["history"]]
        return session
