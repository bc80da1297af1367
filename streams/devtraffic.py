"""A small, lively traffic generator for ``callpulse dev`` (the full simulator is ``callpulse simulate``).

A pure generator: an injected ``random.Random`` and start time in, canonical events out in time order.
Three inbound queues with exponential waits, patience, talk and hold times, wrap-ups and surveys, agents
logging in, and an outbound campaign.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterator

QUEUES = {"sales": 8, "support": 10, "billing": 4}  # queue -> agents


def generate(rng: random.Random, start_ms: int, calls_per_minute: float = 30.0) -> Iterator[dict]:
    """Yield events with non-decreasing ``ts`` (epoch seconds, ms precision), forever."""
    heap: list[tuple[int, int, dict]] = []
    seq = 0

    def push(ts_ms: int, event: dict) -> None:
        nonlocal seq
        seq += 1
        event["event_id"] = f"dev-{start_ms}-{seq}"
        event["ts"] = ts_ms / 1000
        heapq.heappush(heap, (ts_ms, seq, event))

    for queue, agents in QUEUES.items():
        for i in range(agents):
            push(start_ms, {"type": "agent_state", "agent": f"{queue}-agent-{i}", "state": "available", "queue": queue})
    t = start_ms
    n = 0
    while True:
        t += int(rng.expovariate(calls_per_minute / 60_000))
        n += 1
        call = f"dev-{start_ms}-call-{n}"
        if rng.random() < 0.15:
            push(t, {"type": "dial", "call_id": call, "campaign": "renewals"})
            ring = int(rng.uniform(5_000, 25_000))
            if rng.random() < 0.6:
                push(t + ring, {"type": "answer", "call_id": call, "direction": "outbound"})
                talk = int(rng.expovariate(1 / 90_000))
                disposition = rng.choice(["contact", "contact", "success", "voicemail"])
                push(t + ring + talk, {"type": "hangup", "call_id": call, "direction": "outbound",
                                       "disposition": disposition})
            else:
                push(t + ring, {"type": "hangup", "call_id": call, "direction": "outbound",
                                "disposition": rng.choice(["no_answer", "busy", "failed"])})
        else:
            queue = rng.choices(list(QUEUES), weights=[3, 5, 2])[0]
            push(t, {"type": "ring", "call_id": call, "caller": f"+1555{rng.randrange(10**7):07d}"})
            enq = t + int(rng.uniform(2_000, 15_000))
            push(enq, {"type": "queue", "call_id": call, "queue": queue})
            wait = int(rng.expovariate(1 / 18_000))
            patience = int(rng.expovariate(1 / 90_000))
            if patience < wait:
                push(enq + patience, {"type": "abandon", "call_id": call})
                push(enq + patience, {"type": "hangup", "call_id": call})
            else:
                if rng.random() < 0.2:
                    push(enq + wait // 2, {"type": "agent_missed", "call_id": call, "agent": f"{queue}-agent-0"})
                ans = enq + wait
                push(ans, {"type": "answer", "call_id": call, "agent": f"{queue}-agent-1"})
                talk = int(rng.expovariate(1 / 150_000)) + 5_000
                end = ans + talk
                if rng.random() < 0.25:
                    h = ans + int(talk * rng.uniform(0.2, 0.5))
                    push(h, {"type": "hold", "call_id": call})
                    push(min(h + int(rng.uniform(5_000, 40_000)), end - 1_000), {"type": "unhold", "call_id": call})
                push(end, {"type": "hangup", "call_id": call})
                push(end + int(rng.uniform(3_000, 30_000)), {"type": "wrapup", "call_id": call})
                if rng.random() < 0.3:
                    push(end + 60_000, {"type": "survey", "call_id": call, "scale": "csat", "score": rng.choice([1, 3, 4, 5, 5])})
        while heap and heap[0][0] <= t:
            yield heapq.heappop(heap)[2]
