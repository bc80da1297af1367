"""In-app alerts for sites without Alertmanager: an abandonment spike, decided by a test on the counts.

Every minute step s (the window ending with the minute s) of a queue is *significant* when the abandonment of
the window (``window_min`` minutes: abandons over offered calls, short abandons out of both, as the KPI) is
above both the queue's goal and its own recent level (``baseline_min`` minutes before the window, when they
hold at least ``min_baseline`` calls), by a one-sided binomial test: the chance of at least that many abandons
among those calls, were the rate the higher of the two, is below ``alpha_on``. So 2 abandons of 5 calls do
not page, and 40 of 200 do.

Hysteresis: the alert is active from a significant step on, and stays while each later step's chance stays
below ``alpha_off`` (a looser bar), at most ``lookback`` steps after the last significant one. Read at any
instant, it is a pure function of the queue's minutes: the same after a restart.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

#: The alert's name (the ``alert`` label of ``callpulse_alert_active``).
ABANDONMENT_SPIKE = "abandonment_spike"


@dataclass(frozen=True, slots=True)
class SpikeRules:
    """The abandonment-spike test (minutes and chances)."""

    window_min: int = 15
    baseline_min: int = 120
    min_baseline: int = 20
    alpha_on: float = 0.01
    alpha_off: float = 0.10
    lookback: int = 15


class MinuteCounts(NamedTuple):
    """What one minute adds to the test: calls offered and abandoned, short abandons out of both."""

    offered: int
    abandoned: int


class Spike(NamedTuple):
    """The test at one minute step."""

    offered: int
    abandoned: int
    #: The rate tested against: the higher of the goal and the recent level.
    threshold: float
    #: The chance of at least ``abandoned`` among ``offered`` at ``threshold`` (1.0: nothing to test).
    p_value: float


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), exactly (summed in log space)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    log_p, log_q = math.log(p), math.log1p(-p)
    total = 0.0
    for i in range(k, n + 1):
        total += math.exp(
            math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q
        )
    return min(1.0, total)


class _Sums:
    """Prefix sums of the minutes' counts: any run of minutes in O(1)."""

    def __init__(self, counts: Sequence[MinuteCounts]) -> None:
        self.n = [0]
        self.k = [0]
        for c in counts:
            self.n.append(self.n[-1] + c.offered)
            self.k.append(self.k[-1] + c.abandoned)

    def of(self, lo: int, hi: int) -> tuple[int, int]:
        """Offered and abandoned over minutes [lo, hi)."""
        return self.n[hi] - self.n[lo], self.k[hi] - self.k[lo]


def spike_at(counts: Sequence[MinuteCounts], step: int, goal: float, rules: SpikeRules) -> Spike:
    """The test of the window ending with minute ``step`` (an index into ``counts``, one per minute in order)."""
    return _spike(_Sums(counts), step, goal, rules)


def _spike(sums: _Sums, step: int, goal: float, rules: SpikeRules) -> Spike:
    lo = max(0, step - rules.window_min + 1)
    n, k = sums.of(lo, step + 1)
    base_n, base_k = sums.of(max(0, lo - rules.baseline_min), lo)
    threshold = max(goal, base_k / base_n) if base_n >= rules.min_baseline else goal
    p_value = binomial_tail(k, n, threshold) if n and k / n > threshold else 1.0
    return Spike(n, k, threshold, p_value)


def spike_state(counts: Sequence[MinuteCounts], goal: float, rules: SpikeRules) -> tuple[int, Spike] | None:
    """Whether the alert is active at the last minute of ``counts``: (the step it began at, the last test).

    None when it is not. ``counts`` must reach back ``lookback + window_min + baseline_min`` minutes for the
    hysteresis to see what it needs.
    """
    last = len(counts) - 1
    if last < 0:
        return None
    sums = _Sums(counts)
    since = -1
    spike = None
    for step in range(max(0, last - rules.lookback), last + 1):
        spike = _spike(sums, step, goal, rules)
        if spike.p_value < rules.alpha_on:
            if since < 0:
                since = step
        elif since >= 0 and spike.p_value >= rules.alpha_off:
            since = -1
    if since < 0 or spike is None:
        return None
    return since, spike
