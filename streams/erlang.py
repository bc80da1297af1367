"""Exact Erlang-A (M/M/N+M) values from its birth-death chain, to check the simulator against.

State n = calls in the system; arrivals at rate lambda; in state n, services end at min(n, N)*mu and
waiting callers abandon at max(n - N, 0)*theta. With theta > 0 the chain is stable for any load. By PASTA
an arriving call sees the stationary distribution, so

- P(wait > 0) = P(n >= N),
- P(abandon)  = abandonment rate / lambda = sum (n - N) * theta * pi_n / lambda,
- E[wait]     = E[queue length] / lambda (Little's law; the mean over every call, abandoners included).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ErlangA:
    """The steady state of an Erlang-A queue (see ``erlang_a``)."""

    p_wait: float
    p_abandon: float
    mean_wait_s: float
    #: Mean wait of the calls that were answered, and P(answered with wait <= t) is not computed here.
    utilisation: float


def erlang_a(
    calls_per_hour: float, agents: int, aht_s: float, patience_s: float, tail: float = 1e-15
) -> ErlangA:
    """Stationary Erlang-A values; the chain is truncated where its terms fall below ``tail`` of the mass."""
    lam = calls_per_hour / 3600.0
    mu = 1.0 / aht_s
    theta = 1.0 / patience_s
    weights = [1.0]
    n = 0
    while True:
        n += 1
        death = min(n, agents) * mu + max(n - agents, 0) * theta
        weights.append(weights[-1] * lam / death)
        if n > agents and weights[-1] < tail * sum(weights):
            break
    total = sum(weights)
    pi = [w / total for w in weights]
    p_wait = sum(pi[agents:])
    queue = sum((k - agents) * p for k, p in enumerate(pi) if k > agents)
    busy = sum(min(k, agents) * p for k, p in enumerate(pi))
    return ErlangA(
        p_wait=p_wait, p_abandon=queue * theta / lam, mean_wait_s=queue / lam, utilisation=busy / agents
    )
