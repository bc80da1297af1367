"""The call sessionizer: per-call state machines that turn events into facts, exactly, in any arrival order.

Theory of operation
-------------------
State lives in *buckets* (``bucket.BucketState``), one per Kafka message key (the call bucket of DESIGN 2),
so that one message touches one bucket. A bucket holds:

- ``calls``: every call that is open or ended less than the grace period ago, as the list of its events
  (``stored.StoredEvent``) sorted by ``(ts, tie-break rank, event id)`` (``call.CallSession``);
- ``tombstones``: what is left of finalized calls (their event ids, for de-duplication, plus what a late
  wrap-up or survey needs), kept for ``dedup_ttl_ms`` in copy-on-write chunks (``tombstones``);
- ``agents``: agent-state timelines (``agents``; ``agent_state`` events carry no call);
- ``wm``: the bucket's watermark, the largest event time seen; it never moves back.

Rule 1: a call's facts are a pure function of its sorted events (``call.derive``: the inbound state machine
of ``inbound``, a transition table, or the outbound counts of ``outbound``). On every new event the facts
are derived again and the difference to the previous derivation is emitted: retractions of facts that no
longer hold, then the new facts. So the facts in force after all events of a call are in are the same for
every arrival order: an in-order stream emits no retraction, a late answer behind its hangup retracts the
abandon and emits the answer.

Rule 2: an event older than ``wm - grace`` is ``late`` (older than ``wm - max_event_age``: ``too_old``)
and is rejected, never applied: a finalized call cannot change. A duplicate (same event id within the same
call, while the call or its tombstone is remembered) is counted and ignored; duplicates win over lateness.

Rule 3: housekeeping runs after each message, on event time only: a call with no event for
``call_timeout_ms`` gets a synthetic ``expire`` event; an ended call whose last event is older than
``wm - grace`` is finalized into a tombstone; tombstones older than ``wm - dedup_ttl`` are forgotten.
Replaying the same messages from the same snapshot gives the same facts (determinism, for recovery).

Modules, in the order a call meets them: ``stored`` (the stored event), ``inbound`` and ``outbound`` (the
derivations, giving a ``derivation.Derivation``), ``call`` (one call), ``agents``, ``tombstones``, and
``bucket`` (which applies events and sweeps).
"""

from streams.sessions.bucket import Applied, BucketState, SessionConfig

__all__ = ["Applied", "BucketState", "SessionConfig"]
