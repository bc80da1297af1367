"""Expected wait time (EWT): what to tell a caller about the wait ahead, by five estimators.

Every estimator answers "how long until an agent takes this call" for a caller who enters now (or who waits at
a given place in line), from what the queue shows at that instant. All times are in ms.

==========  ===============================================================================================
estimator   what it announces
==========  ===============================================================================================
asterisk    Asterisk's own: the queue's *holdtime*, an exponential average of the answered waits in the order
            the calls were answered, new = (3 x old + last) / 4 (the first answered wait sets it), minus the
            caller's wait so far; the same for every place in line (app_queue's announcement)
les         last to enter service: the wait of the queue's last answered caller, minus the wait so far
hol         head of line: the wait so far of the queue's longest-waiting caller (0 when nobody waits)
ql          queue length: with ``n`` callers ahead, (n + 1) / R, where R is the answers per second of time in
            which anyone was waiting, over the last hour, in the queue's scope (see below)
qlm         queue length with abandonment (Ibrahim and Whitt): sum over i = 0..n of 1 / (R + i theta), where
            theta = abandons / the waits of the stints that left the queue and of the callers waiting, over the
            last hour: callers ahead who hang up move the line on too
==========  ===============================================================================================

``ql`` and ``qlm`` count the callers ahead over the queue's *scope*: its group (the queues file's ``group``:
queues whose agents are shared), else the queue alone. Ahead are the callers of the scope with a priority at
least the caller's (and, for a caller already waiting, those who entered before it at its priority), because
shared agents take the highest priority first across the scope. R counts answers only over time in which
someone was waiting: when nobody waits, agents sit idle and the answers per wall-clock second say nothing of
how fast a line moves. Where R is unknown (under ``MIN_BUSY_MS`` of waiting in the hour, or no answer) they
fall back to Asterisk's holdtime. Measured on real data (docs/callers.md), ``qlm`` has the lowest error and is
the default.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from typing import NamedTuple

#: The estimators that work the wait out themselves; ``best`` picks one of them.
BASE_ESTIMATORS = ("asterisk", "les", "hol", "ql", "qlm")
ESTIMATORS = (*BASE_ESTIMATORS, "best")
DEFAULT_ESTIMATOR = "best"
#: ``best`` trusts a queue's measured errors once this many answered calls were scored (before: ``qlm``).
MIN_SCORED = 50
#: The trailing window of the rates R and theta.
RATE_WINDOW_MS = 3600_000
#: Less waiting than this in the window: R is not known.
MIN_BUSY_MS = 60_000
#: Fewer answered callers who found the line empty than this in the window: their mean wait is not used.
MIN_EMPTY_LINE = 10
#: Answered waits kept per queue for the holdtime (the weight of the oldest, (3/4)^63, is below 1e-7).
ANSWERS_KEPT = 64
#: Bounds (seconds) of the announced-minus-actual histogram.
ERROR_BOUNDS_S = (-600, -300, -180, -120, -60, -30, -10, 0, 10, 30, 60, 120, 180, 300, 600)


class ScopeView(NamedTuple):
    """What the estimators read at one instant: a queue's history and the line over its scope."""

    #: The queue's answered waits, (answer time, wait), in answer order, up to the instant.
    answers: Sequence[tuple[int, int]]
    #: The wait so far of the queue's longest-waiting caller (0 when nobody waits).
    head_wait_ms: int
    #: Answers per ms of time with someone waiting, over the scope and the window (None: not known).
    rate_per_ms: float | None
    #: Abandons per ms waited, over the scope and the window (0 when nobody abandoned).
    theta_per_ms: float
    #: The mean wait of the answered callers who had found the scope's line empty, over the window (None: fewer
    #: than ``MIN_EMPTY_LINE``).
    empty_line_wait_ms: float | None = None
    #: The base estimator ``best`` follows (``best_of`` the queue's scores).
    best: str = "qlm"


def holdtime(answers: Iterable[tuple[int, int]]) -> float | None:
    """Asterisk's holdtime after these answered waits (in answer order); None before the first."""
    held: float | None = None
    for _ts, wait in answers:
        held = float(wait) if held is None else (3 * held + wait) / 4
    return held


def queue_length_wait(ahead: int, rate_per_ms: float, theta_per_ms: float) -> float:
    """The expected wait with ``ahead`` callers in front: sum over i = 0..ahead of 1 / (R + i theta)."""
    return sum(1.0 / (rate_per_ms + i * theta_per_ms) for i in range(ahead + 1))


def estimates(
    view: ScopeView, ahead: int, waited_ms: int = 0, line_empty: bool = False
) -> dict[str, float | None]:
    """Each estimator's announcement (ms) to a caller.

    The caller has ``ahead`` callers in front and has waited ``waited_ms``; ``line_empty``: nobody else waits in
    the scope. None where an estimator has nothing to go on (no answered call yet).
    """
    held = holdtime(view.answers)
    last = view.answers[-1][1] if view.answers else None
    out: dict[str, float | None] = {
        "asterisk": max(0.0, held - waited_ms) if held is not None else None,
        "les": float(max(0, last - waited_ms)) if last is not None else None,
        "hol": float(view.head_wait_ms),
    }
    rate = view.rate_per_ms
    if line_empty and view.empty_line_wait_ms is not None:
        # Nobody waits: an agent may be free, or all may be busy; what callers who found the line empty
        # waited says which is usual (the queue-length formulas assume every agent busy).
        out["ql"] = out["qlm"] = view.empty_line_wait_ms
    elif rate is None:
        out["ql"] = out["qlm"] = out["asterisk"]
    else:
        out["ql"] = queue_length_wait(ahead, rate, 0.0)
        out["qlm"] = queue_length_wait(ahead, rate, view.theta_per_ms)
    out["best"] = out[view.best]
    return out


def best_of(totals: dict[str, int]) -> str:
    """The base estimator with the lowest RMSE over a queue's scored calls so far (``qlm`` until enough)."""
    n = totals.get(scored("qlm"), 0)
    if n < MIN_SCORED:
        return "qlm"
    return min(BASE_ESTIMATORS, key=lambda name: (totals.get(error_squares(name), 0), name))


def accuracy(counts: dict[str, int]) -> dict[str, dict[str, float | int | None]]:
    """Per estimator, from a window's counters: how honest its announcements at entry were.

    ``answered``: calls scored (answered after an announcement); ``rmse_seconds`` and ``mean_error_seconds``
    (announced minus actual: negative means callers waited longer than told); ``abandoned``: callers who hung
    up after an announcement (their wait is censored: they would have waited longer), and of them
    ``abandoned_after_announced``: those who had already waited longer than they were told.
    """
    out: dict[str, dict[str, float | int | None]] = {}
    for name in ESTIMATORS:
        n = counts.get(scored(name), 0)
        err = counts.get(error_sum(name), 0) / 10
        sq = counts.get(error_squares(name), 0) / 100
        out[name] = {
            "answered": n,
            "rmse_seconds": round((sq / n) ** 0.5, 3) if n else None,
            "mean_error_seconds": round(err / n, 3) if n else None,
            "abandoned": counts.get(censored(name), 0),
            "abandoned_after_announced": counts.get(censored_over(name), 0),
        }
    return out


# -- counter names (persisted: rename none) ----------------------------------------------------------------
def scored(estimator: str) -> str:
    """Answered calls whose announcement at entry was scored."""
    return "ewt_n:" + estimator


def error_sum(estimator: str) -> str:
    """Summed error, announced minus actual, in tenths of a second."""
    return "ewt_err_ds:" + estimator


def error_squares(estimator: str) -> str:
    """Summed squared error, in (tenths of a second) squared."""
    return "ewt_sq_ds2:" + estimator


def censored(estimator: str) -> str:
    """Callers who abandoned after an announcement."""
    return "ewt_abandoned:" + estimator


def censored_over(estimator: str) -> str:
    """Callers who abandoned after waiting longer than they were told."""
    return "ewt_abandoned_over:" + estimator


#: The histogram of the default estimator's error (announced minus actual) for answered calls.
ERROR_HISTOGRAM = "ewt_error"


class ScopeLine:
    """The queue stints of a scope that ended, indexed for the rates' window: O(log n) per question.

    Each stint is (end, start, outcome, empty line); stints come mostly in end order (appended) and now and then
    a little out of it (inserted near the end: only what follows is recomputed). Kept per scope by the engine
    and built again from the keys' stints when one is taken back (a union does not subtract).
    """

    __slots__ = ("ends", "rows", "cum", "busy_a", "busy_b", "busy_cum")

    #: Columns of ``cum``: summed wait, answers after a wait, abandons, answers at an empty line, their wait.
    WAIT, ANSWERED, ABANDONED, EMPTY, EMPTY_WAIT = range(5)

    def __init__(self, stints: Iterable[Sequence[int]] = ()) -> None:
        self.ends: list[int] = []
        self.rows: list[tuple[int, int, int, int]] = []
        self.cum: list[tuple[int, int, int, int, int]] = [(0, 0, 0, 0, 0)]
        #: The union of the stints as disjoint intervals [a, b), with the prefix sums of their lengths.
        self.busy_a: list[int] = []
        self.busy_b: list[int] = []
        self.busy_cum: list[int] = [0]
        for stint in sorted((s[0], s[1], s[2], s[3]) for s in stints):
            self.add(*stint)

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, end: int, start: int, outcome: int, empty: int) -> None:
        """One more stint (``outcome``: 0 answered, 1 abandoned, 2 exited, 3 answered at once)."""
        i = bisect_right(self.ends, end)
        self.ends.insert(i, end)
        self.rows.insert(i, (end, start, outcome, empty))
        cum = self.cum
        del cum[i + 1 :]
        for row_end, row_start, row_outcome, row_empty in self.rows[i:]:
            wait, answered, abandoned, n_empty, empty_wait = cum[-1]
            w = row_end - row_start
            cum.append(
                (
                    wait + w,
                    answered + (row_outcome == 0),
                    abandoned + (row_outcome == 1),
                    n_empty + (row_empty and row_outcome in (0, 3)),
                    empty_wait + (w if row_empty and row_outcome == 0 else 0),
                )
            )
        if start < end:
            self._merge(start, end)

    def _merge(self, start: int, end: int) -> None:
        a, b = self.busy_a, self.busy_b
        j0 = bisect_left(b, start)  # the first interval ending at or after the start
        j1 = bisect_right(a, end)  # past the last interval starting at or before the end
        if j0 < j1:
            start, end = min(start, a[j0]), max(end, b[j1 - 1])
        a[j0:j1] = [start]
        b[j0:j1] = [end]
        cum = self.busy_cum
        del cum[j0 + 1 :]
        for k in range(j0, len(a)):
            cum.append(cum[-1] + b[k] - a[k])

    def window(self, lo: int, hi: int) -> tuple[int, int, int, int, int]:
        """What the stints that ended in (lo, hi] sum to.

        Their summed wait, answers after a wait, abandons, answers at an empty line and those answers' wait.
        """
        i, j = bisect_right(self.ends, lo), bisect_right(self.ends, hi)
        first, last = self.cum[i], self.cum[j]
        return (
            last[0] - first[0],
            last[1] - first[1],
            last[2] - first[2],
            last[3] - first[3],
            last[4] - first[4],
        )

    def busy(self, lo: int, hi: int) -> int:
        """The length of the union of the stints within [lo, hi)."""
        if hi <= lo:
            return 0
        a, b = self.busy_a, self.busy_b
        k0, k1 = bisect_right(b, lo), bisect_left(a, hi)
        if k0 >= k1:
            return 0
        total = self.busy_cum[k1] - self.busy_cum[k0]
        return total - max(0, lo - a[k0]) - max(0, b[k1 - 1] - hi)
