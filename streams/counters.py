"""The names of the KPI engine's counters: ``streams.kpi`` writes them, the exposition and the API read them here.

The engine keeps, per queue or campaign, integer counters by name: in each minute bucket (for windows) and
cumulative (``totals``, for the Prometheus counters). The names are persisted with the state, so they are
part of the stored format: rename none of them.

=============================  ==============================================================
name                           what it counts (durations in ms)
=============================  ==============================================================
entered, answered, abandoned,  stints and their outcomes (E, A, Ab, X of DESIGN 4)
exited
answered_within_sl             answered with wait <= T
abandoned_within_sl            abandoned with wait <= T
short_abandoned                abandoned with wait < S
wait_<outcome>_ms              summed queue wait of answered, abandoned, exited stints
exited:<reason>                flow-outs by reason
refused:<reason>               refusals by reason
completed, talk_ms, hold_ms,   handled segments and their summed talk, hold, hold count,
holds, acw_ms, transferred     after-call work and transfers
agent_missed, expired          rings an agent let time out; calls lost to the call timeout
ring_abandoned                 rings the caller ended by hanging up
survey:<scale>:<band>          survey responses by scale and band
attempt, connected, contact,   outbound, per campaign
conversion
agent_ms:<state>               agent time in a state (minute buckets and spans only)
=============================  ==============================================================

Histograms (``hist``) are named ``wait:<outcome>``, ``talk`` and ``handle``; their exported series are
``h:<histogram>:<bucket index>`` (cumulative) and ``h:<histogram>:sum``, and ``offered`` is exported as
answered + abandoned + exited.
"""

from __future__ import annotations

#: Histograms of queue waits by outcome, and of talk and handle times.
WAIT_OUTCOMES = ("answered", "abandoned", "exited")
TALK_HISTOGRAM = "talk"
HANDLE_HISTOGRAM = "handle"


def exited(reason: str) -> str:
    """Flow-outs with this reason."""
    return "exited:" + reason


def refused(reason: str) -> str:
    """Refusals with this reason."""
    return "refused:" + reason


def survey(scale: str, band: str) -> str:
    """Survey responses of a scale in a band."""
    return f"survey:{scale}:{band}"


def agent_ms(state: str) -> str:
    """Agent time (ms) in a state."""
    return "agent_ms:" + state


def wait_sum(outcome: str) -> str:
    """Summed queue wait (ms) of the stints with this outcome."""
    return f"wait_{outcome}_ms"


def wait_histogram(outcome: str) -> str:
    """The histogram of queue waits of the stints with this outcome."""
    return "wait:" + outcome


def histogram_bucket(histogram: str, index: int) -> str:
    """The exported cumulative count of a histogram's bucket ``index`` (the last one is +Inf)."""
    return f"h:{histogram}:{index}"


def histogram_sum(histogram: str) -> str:
    """The exported sum (ms) of a histogram."""
    return f"h:{histogram}:sum"


def readable(counts: dict[str, int]) -> dict[str, int | float]:
    """A window's counters as the JSON API shows them: parts joined by dots, durations in seconds.

    ``exited:timeout`` is ``exited.timeout``, ``survey:csat:positive`` is ``survey.csat.positive``,
    ``agent_ms:available`` is ``agent_seconds.available``, ``wait_answered_ms`` is ``wait_answered_seconds``.
    """
    out: dict[str, int | float] = {}
    for name, value in counts.items():
        head, sep, rest = name.partition(":")
        if head.endswith("_ms"):
            out[head[:-3] + "_seconds" + ("." + rest.replace(":", ".") if sep else "")] = value / 1000
        else:
            out[name.replace(":", ".")] = value
    return out
