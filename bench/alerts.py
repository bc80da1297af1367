"""Back-test of the abandonment-spike alerts: the in-app test beside the shipped Prometheus rule, minute by minute.

    .venv/bin/python bench/alerts.py [--goal 0.05] [--spikes 40] [--seed 3]

Both are run on the same per-minute counts of each queue (offered and abandoned, short abandons under S = 10 s
out of both, as the KPI):

- ``in-app``: ``streams.alerts.spike_state`` at every minute;
- ``rule``: the shipped ``CallpulseAbandonmentSpike`` (deploy/prometheus/rules), emulated: the 15-minute
  abandonment above goal + 0.05, and above twice the same 15 minutes a week before (or none then), on at least
  20 offered calls, for 5 minutes.

Data sets: the bank's February 1999 calls (real; queue PS, NW, NE, the busiest; each queued call counts at its
exit), as they are, and with ``--spikes`` injected spikes (in a 30-minute stretch of a day's busy hours, 40 % of
the calls that were answered are turned into abandons, after the same wait), the same spikes for both. For each:
alarms per day (an alarm is a start of the alert), and for the injected spikes the share detected (an alarm
within the stretch or 15 minutes after) and the median delay from the stretch's start to the alarm.
"""

from __future__ import annotations

import argparse
import csv
import random
import statistics
import sys
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streams.alerts import MinuteCounts, SpikeRules, spike_state

BANK = Path(__file__).resolve().parents[2] / "shared" / "data" / "anonymous-bank-1999-02" / "calls.tsv"
SHORT_S = 10
QUEUES = ("PS", "NW", "NE")


def _seconds(hms: str) -> int:
    h, m, s = (int(x) for x in hms.split(":"))
    return h * 3600 + m * 60 + s


def bank_stints() -> dict[str, list[tuple[int, int, bool]]]:
    """Per queue, every queued call: (exit minute since the month's start, wait s, abandoned)."""
    out: dict[str, list[tuple[int, int, bool]]] = defaultdict(list)
    first: float | None = None
    with BANK.open() as f:
        for row in csv.DictReader(f, delimiter="\t"):
            if row["outcome"] == "PHANTOM" or row["q_start"] == "0:00:00" or row["type"] not in QUEUES:
                continue
            day = datetime.strptime("19" + row["date"], "%Y%m%d").replace(tzinfo=UTC).timestamp()
            first = day if first is None or day < first else first
            exit_s = day + _seconds(row["q_start"]) + int(row["q_time"])
            out[row["type"]].append((int(exit_s // 60), int(row["q_time"]), row["outcome"] == "HANG"))
    base = int(first // 60) if first is not None else 0
    return {q: [(m - base, w, ab) for m, w, ab in stints] for q, stints in out.items()}


def minute_counts(stints: list[tuple[int, int, bool]], minutes: int) -> list[MinuteCounts]:
    offered = [0] * minutes
    abandoned = [0] * minutes
    for m, wait, ab in stints:
        if 0 <= m < minutes and not (ab and wait < SHORT_S):
            offered[m] += 1
            abandoned[m] += 1 if ab else 0
    return [MinuteCounts(o, a) for o, a in zip(offered, abandoned, strict=True)]


def inject(
    stints: list[tuple[int, int, bool]], rng: random.Random, n: int, minutes: int
) -> tuple[list[tuple[int, int, bool]], list[int]]:
    """``n`` spikes: 30-minute stretches starting 09:00-15:00 on distinct days, 40 % of answered calls abandoned."""
    days = rng.sample(range(minutes // 1440), min(n, minutes // 1440))
    starts = sorted(d * 1440 + rng.randrange(9 * 60, 15 * 60) for d in days)
    out = []
    for m, wait, ab in stints:
        if not ab and any(s <= m < s + 30 for s in starts) and rng.random() < 0.4:
            ab = True
        out.append((m, wait, ab))
    return out, starts


def in_app(counts: list[MinuteCounts], goal: float) -> list[int]:
    """The minutes at which the in-app alert starts."""
    rules = SpikeRules()
    span = rules.lookback + rules.window_min + rules.baseline_min
    starts = []
    was = False
    for m in range(len(counts)):
        active = spike_state(counts[max(0, m - span) : m + 1], goal, rules) is not None
        if active and not was:
            starts.append(m)
        was = active
    return starts


def rule(counts: list[MinuteCounts], goal: float) -> list[int]:
    """The minutes at which the shipped Prometheus rule starts firing (its condition held 5 minutes)."""
    n = [0]
    k = [0]
    for c in counts:
        n.append(n[-1] + c.offered)
        k.append(k[-1] + c.abandoned)

    def window(end: int) -> tuple[int, int]:  # the 15 minutes ending with minute ``end``
        lo = max(0, end - 14)
        return n[end + 1] - n[lo], k[end + 1] - k[lo]

    starts = []
    held = 0
    firing = False
    for m in range(len(counts)):
        offered, abandoned = window(m)
        cond = offered >= 20 and abandoned / offered > goal + 0.05
        if cond and m >= 7 * 1440:
            last_n, last_k = window(m - 7 * 1440)
            cond = last_n == 0 or abandoned / offered > 2 * (last_k / last_n)
        held = held + 1 if cond else 0
        now = held >= 5
        if now and not firing:
            starts.append(m)
        firing = now
    return starts


def score(alarms: list[int], spikes: list[int], days: float) -> str:
    detected = []
    false = 0
    for a in alarms:
        hit = [s for s in spikes if s <= a < s + 45]
        if hit:
            detected.append((hit[0], a))
        else:
            false += 1
    first = {}
    for s, a in detected:
        first.setdefault(s, a - s)
    delays = sorted(first.values())
    share = f"{len(first)}/{len(spikes)}" if spikes else "-"
    delay = f"{statistics.median(delays):.0f} min" if delays else "-"
    return f"{false / days:5.2f} false alarms/day, detected {share:>6}, median delay {delay:>7}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--goal", type=float, default=0.05)
    ap.add_argument("--spikes", type=int, default=20)
    ap.add_argument("--seed", type=int, default=3)
    args = ap.parse_args()
    data = bank_stints()
    minutes = max(m for stints in data.values() for m, _w, _a in stints) + 1
    days = minutes / 1440
    rng = random.Random(args.seed)
    print(f"bank, {days:.0f} days, goal {args.goal}")
    for queue in QUEUES:
        counts = minute_counts(data[queue], minutes)
        spiked, starts = inject(data[queue], rng, args.spikes, minutes)
        spiked_counts = minute_counts(spiked, minutes)
        for name, detect in (("in-app", in_app), ("rule", rule)):
            as_is = detect(counts, args.goal)
            injected = detect(spiked_counts, args.goal)
            print(
                f"{queue:<3} {name:<7} as recorded: {len(as_is) / days:5.2f} alarms/day; "
                f"with {len(starts)} spikes: {score(injected, starts, days)}",
                flush=True,
            )


if __name__ == "__main__":
    main()
