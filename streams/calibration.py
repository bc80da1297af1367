"""Calibrate the simulator's ``bank`` profile from the Anonymous Bank call records (February 1999).

Per service type (a queue of the profile): arrivals per hour of day and weekday (mean over the month's
days of that weekday), the share of callers who hang up in the voice-response unit, and quantiles of the
time in the voice-response unit, of the service time, and of patience. Patience is estimated with the
Kaplan-Meier estimator: a caller who hung up in the queue shows their patience (an event); a caller who
was served shows only that their patience exceeded their wait (censored). Quantiles that the data cannot
reach (more than the censored share) are given as ``None``: patience longer than any wait observed.
Negative durations (clock errors in a few records) are left out.

    python -m streams.calibration ../shared/data/anonymous-bank-1999-02/calls.tsv > streams/profiles/bank.json
"""

from __future__ import annotations

import sys
from collections import defaultdict
from collections.abc import Iterable
from datetime import date
from typing import Any

import orjson

#: Service type of the data -> queue name in the profile.
QUEUES = {
    "PS": "retail",
    "PE": "english",
    "IN": "internet",
    "NE": "stocks",
    "NW": "new_customers",
    "TT": "tech",
}
#: Quantile levels kept for every distribution.
LEVELS = [i / 20 for i in range(21)]


def _seconds(hms: str) -> int:
    h, m, s = (int(x) for x in hms.split(":"))
    return h * 3600 + m * 60 + s


def _quantiles(values: list[float]) -> list[float]:
    data = sorted(values)
    n = len(data)
    return [float(data[min(n - 1, int(level * (n - 1) + 0.5))]) for level in LEVELS]


def kaplan_meier_quantiles(times: list[tuple[float, bool]]) -> list[float | None]:
    """Quantiles of a lifetime from (time, observed) pairs; None where the survival never drops that low."""
    at: dict[float, list[int]] = defaultdict(lambda: [0, 0])  # time -> [events, censored]
    for t, observed in times:
        at[t][0 if observed else 1] += 1
    at_risk = len(times)
    survival = 1.0
    curve: list[tuple[float, float]] = []  # (time, survival after it)
    for t in sorted(at):
        events, censored = at[t]
        if events and at_risk:
            survival *= 1 - events / at_risk
            curve.append((t, survival))
        at_risk -= events + censored
    out: list[float | None] = []
    for level in LEVELS:
        # the smallest time at which the cumulative share 1 - S(t) reaches the level
        hit = next((t for t, s in curve if 1 - s >= level - 1e-12), None)
        out.append(0.0 if level == 0 else hit)
    return out


def calibrate(lines: Iterable[str]) -> dict[str, Any]:
    """The ``bank`` profile from the rows of calls.tsv (header included)."""
    it = iter(lines)
    header = next(it).rstrip("\n").split("\t")
    col = {name: i for i, name in enumerate(header)}
    days: set[str] = set()
    arrivals: dict[str, list[list[int]]] = {q: [[0] * 24 for _ in range(7)] for q in QUEUES.values()}
    vru: dict[str, list[float]] = defaultdict(list)
    service: dict[str, list[float]] = defaultdict(list)
    patience: dict[str, list[tuple[float, bool]]] = defaultdict(list)
    ivr_hangups: dict[str, int] = defaultdict(int)
    calls: dict[str, int] = defaultdict(int)
    for line in it:
        f = line.rstrip("\n").split("\t")
        if len(f) != len(header) or f[col["outcome"]] == "PHANTOM" or f[col["type"]] not in QUEUES:
            continue
        queue = QUEUES[f[col["type"]]]
        day = f[col["date"]]
        days.add(day)
        weekday = date(1900 + int(day[:2]), int(day[2:4]), int(day[4:6])).weekday()
        arrivals[queue][weekday][_seconds(f[col["vru_entry"]]) // 3600 % 24] += 1
        calls[queue] += 1
        if int(f[col["vru_time"]]) >= 0:  # 25 records have negative times (clock errors): left out
            vru[queue].append(float(f[col["vru_time"]]))
        queued = f[col["q_start"]] != "0:00:00"
        outcome = f[col["outcome"]]
        if outcome == "AGENT":
            service[queue].append(float(f[col["ser_time"]]))
        if queued and int(f[col["q_time"]]) >= 0:
            patience[queue].append((float(f[col["q_time"]]), outcome == "HANG"))
        elif outcome == "HANG":
            ivr_hangups[queue] += 1
    per_weekday = [
        sum(1 for d in days if date(1900 + int(d[:2]), int(d[2:4]), int(d[4:6])).weekday() == w)
        for w in range(7)
    ]
    profile: dict[str, Any] = {
        "source": f"Anonymous Bank call center, {len(days)} days of February 1999",
        "queues": {},
    }
    for queue in QUEUES.values():
        if not calls[queue]:
            continue
        profile["queues"][queue] = {
            "calls": calls[queue],
            "arrivals_per_hour": [
                [round(c / per_weekday[w], 4) if per_weekday[w] else 0.0 for c in arrivals[queue][w]]
                for w in range(7)
            ],
            "ivr_hangup_share": round(ivr_hangups[queue] / calls[queue], 4),
            "ivr_s": _quantiles(vru[queue]),
            "service_s": _quantiles([s for s in service[queue] if s > 0]),
            "patience_s": kaplan_meier_quantiles(patience[queue]),
        }
    return profile


def main() -> None:
    """Print the calibration of the call records file named on the command line, as JSON."""
    with open(sys.argv[1], encoding="utf-8") as f:
        sys.stdout.write(orjson.dumps(calibrate(f), option=orjson.OPT_INDENT_2).decode() + "\n")


if __name__ == "__main__":
    main()
