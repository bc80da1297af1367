"""Callers from a real Asterisk 20 run (``asterisk20-agents.queue_log``), through the broker and a worker.

The waiting list is read at two instants, after ingesting the log up to a line (the worker's clock, event
time, then stands at that line). The hand count lists each ENTERQUEUE line (caller id, and Asterisk's own
position at the join in its last field) whose call has no CONNECT, ABANDON or EXIT* line up to the instant
(``awk -F'|' '{print NR, $1-1796183456, $2, $3, $4, $5, $6, $7, $8}'``; t is seconds after 1796183456):

- t=268 (line 99): sales has five callers, who joined at 248 (``.117``, position 1), 252 (``.121``, 2), 254
  (``.123``, 3), 261 (``.127``, 4) and 268 (``.129``, 5); support has none.
- t=380 (line 152): sales has none (its last caller, ``.195``, joined at 375 and was connected at 377); support
  has six: 336 (``.165``, position 2 at the join: ``.163`` was ahead and was connected at 351), 342 (``.171``),
  356 (``.183``), 361 (``.189``), 365 (``.179``, blind-transferred from sales at 365 after talking to Carol:
  its stint in support starts at the transfer) and 380 (``.203``, position 6 at the join).

Each waiting list is in join order (no priorities in a queue_log), and each caller's position at the
instant it joined equals Asterisk's position field. The pseudonym is HMAC-SHA256 of the caller id under
``CALLPULSE_CALLER_KEY`` (first 16 hex digits), computed here with the standard library.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import urllib.error
import urllib.request

import pytest

from tests.e2e.conftest import REPO, consume_all, run_cli

pytestmark = pytest.mark.e2e

LOG = REPO.parent / "shared" / "fixtures" / "asterisk" / "asterisk20-agents.queue_log"
EPOCH = 1796183456
KEY = "callers-e2e-key"


def pseudonym(number: str) -> str:
    return hmac.new(KEY.encode(), number.encode(), hashlib.sha256).hexdigest()[:16]


#: (last line ingested, t, queue -> [(call id, joined at t, caller id)] in the order they are served)
INSTANTS = [
    (
        99,
        268,
        {
            "sales": [
                ("1796183704.117", 248, "+15554909533"),
                ("1796183708.121", 252, "+15551740997"),
                ("1796183709.123", 254, "+15555611298"),
                ("1796183717.127", 261, "+15550606611"),
                ("1796183723.129", 268, "+15553506211"),
            ],
            "support": [],
        },
    ),
    (
        152,
        380,
        {
            "sales": [],
            "support": [
                ("1796183792.165", 336, "+15552786404"),
                ("1796183798.171", 342, "+15557695246"),
                ("1796183811.183", 356, "+15556431588"),
                ("1796183817.189", 361, "+15550980601"),
                ("1796183810.179", 365, "+15553956958"),
                ("1796183836.203", 380, "+15555878884"),
            ],
        },
    ),
]


def callers(worker, queue):
    try:
        return json.loads(worker.get(f"/api/v1/queues/{queue}/callers"))
    except urllib.error.HTTPError as exc:
        if exc.code == 404:  # no fact of the queue yet
            return None
        raise


def test_waiting_callers_at_two_instants_match_the_hand_count(broker, worker_factory, tmp_path):
    lines = LOG.read_text().splitlines(keepends=True)
    w = worker_factory(CALLPULSE_CLOCK="event", CALLPULSE_CALLER_KEY=KEY).start()
    start = 0
    for last, t, expected_queues in INSTANTS:
        assert int(lines[last - 1].split("|")[0]) - EPOCH == t
        part = tmp_path / f"part-{t}.queue_log"
        part.write_text("".join(lines[start:last]))
        start = last
        result = run_cli(broker, "ingest", "asterisk-queue-log", str(part))
        assert result.returncode == 0, result.stderr.decode()
        expected = {
            queue: [
                {
                    "position": i,
                    "call_id": call,
                    "caller": pseudonym(number),
                    "priority": 0,
                    "waiting_since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(EPOCH + joined)),
                    "wait_seconds": float(t - joined),
                }
                for i, (call, joined, number) in enumerate(rows, start=1)
            ]
            for queue, rows in expected_queues.items()
        }
        deadline = time.monotonic() + 60
        got: dict = {}
        while time.monotonic() < deadline:
            answers = {q: callers(w, q) for q in expected}
            got = {q: a["callers"] if a is not None else None for q, a in answers.items()}
            if got == expected:
                break
            time.sleep(0.25)
        assert got == expected, (t, w.log_tail())
        # No raw number in the answer: only pseudonyms.
        assert "+1555" not in json.dumps(answers)
    check_expected_wait_at_380(w)
    # The rest of the log, then the peaks and the volume of the whole run.
    part = tmp_path / "rest.queue_log"
    part.write_text("".join(lines[start:]))
    assert run_cli(broker, "ingest", "asterisk-queue-log", str(part)).returncode == 0
    check_peaks_and_volume_at_the_end(w)


#: Per queue, by hand from the log: each stint runs from its ENTERQUEUE to its CONNECT, ABANDON or EXIT* line,
#: each conversation from its CONNECT to its COMPLETEAGENT, COMPLETECALLER, BLINDTRANSFER or ATTENDEDTRANSFER
#: line; the highest number at once in 03:45-04:00 and 04:00-04:15 UTC (04:00:00 is t=544), and the stints
#: that left the queue in each (offered). Every call of the run has ended by the last line (t=798, 04:04:14).
PEAKS = {"sales": [(5, 4, 49), (4, 4, 15)], "support": [(6, 3, 20), (2, 3, 6)]}


def check_peaks_and_volume_at_the_end(w):
    deadline = time.monotonic() + 60
    got: dict = {}
    while time.monotonic() < deadline:
        got = {}
        for queue in PEAKS:
            rows = json.loads(w.get(f"/api/v1/queues/{queue}/peaks"))["intervals"]
            got[queue] = [(r["peak_waiting"], r["peak_talking"], r["offered"]) for r in rows[-2:]]
        if got == PEAKS:
            break
        time.sleep(0.25)
    assert got == PEAKS, w.log_tail()
    # 2026-12-02 is a Wednesday: offered in its hours 3 and 4 (UTC), the same stints as above.
    for queue, ((_, _, before), (_, _, after)) in PEAKS.items():
        volume = json.loads(w.get(f"/api/v1/queues/{queue}/volume?weeks=1"))
        wednesday = volume["weekdays"]["wednesday"]
        assert (wednesday["days"], wednesday["offered"][3], wednesday["offered"][4]) == (1, before, after)
        assert sum(sum(d["offered"]) for d in volume["weekdays"].values()) == before + after
    with pytest.raises(urllib.error.HTTPError) as info:
        w.get("/api/v1/queues/sales/volume?weeks=9")  # beyond CALLPULSE_VOLUME_WEEKS (8)
    assert info.value.code == 400
    # No CALLPULSE_API_TOKEN on this worker: the list with the callers' numbers is off.
    with pytest.raises(urllib.error.HTTPError) as info:
        w.get("/api/v1/callbacks")
    assert info.value.code == 403


#: support's answered waits up to t=380, in answer order: CONNECT minus ENTERQUEUE of each call (lines 29-133;
#: the same as Asterisk's own holdtime field of each CONNECT line).
SUPPORT_WAITS = [4, 18, 1, 2, 22, 23, 3, 1, 18]


def check_expected_wait_at_380(w):
    """The expected wait in support at t=380, worked out from the log.

    - asterisk: the holdtime, (3 x old + last) / 4 over SUPPORT_WAITS, about 10.44 s;
    - les: the last answered wait, 18 s; hol: the longest wait now, .165's 44 s (joined at 336);
    - R: 9 answers (every one waited) over the time someone waited in support: 112-116, 118-136, 145-146,
      212-214, 228-260 (two callers), 295-298, 329-330, and 333-380 (.163 until 351, .165 since 336 and the
      others still waiting): 4 + 18 + 1 + 2 + 32 + 3 + 1 + 47 = 108 s; no abandon, so theta = 0 and ql = qlm:
      (n + 1) x 108 / 9 = 12 s per caller ahead. A caller entering now has the 6 ahead: 84 s.
    """
    held = None
    for wait in SUPPORT_WAITS:
        held = wait if held is None else (3 * held + wait) / 4
    assert held is not None and round(held, 2) == 10.44
    new = json.loads(w.get("/api/v1/queues/support/ewt?accuracy=1"))
    assert new["estimates"] == {
        "asterisk": round(held, 3),
        "les": 18.0,
        "hol": 44.0,
        "ql": 84.0,
        "qlm": 84.0,
        "best": 84.0,  # qlm until 50 calls are scored
    }
    assert (new["estimator"], new["expected_wait_seconds"], new["callers_ahead"]) == ("best", 84.0, 6)
    # Every answered caller was told on entering (9 scored); nobody abandoned support yet.
    today = new["accuracy"]["today"]
    assert {name: (a["answered"], a["abandoned"]) for name, a in today.items()} == dict.fromkeys(
        ("asterisk", "les", "hol", "ql", "qlm", "best"), (9, 0)
    )
    # The first in line (.165, waiting 44 s) has nobody ahead: 12 s; the history estimators subtract its wait.
    first = json.loads(w.get("/api/v1/queues/support/ewt?position=1"))
    assert "accuracy" not in first
    assert first["caller"] == {"position": 1, "waited_seconds": 44.0}
    assert (first["callers_ahead"], first["estimates"]["qlm"], first["estimates"]["asterisk"]) == (
        0,
        12.0,
        0.0,
    )
    last = json.loads(w.get("/api/v1/queues/support/ewt?position=6"))
    assert (last["callers_ahead"], last["estimates"]["qlm"], last["estimates"]["les"]) == (5, 72.0, 18.0)
    assert json.loads(w.get("/api/v1/queues/support"))["live"]["expected_wait_seconds"] == 84.0
    for query, status in (("position=7", 404), ("position=0", 400), ("priority=high", 400)):
        with pytest.raises(urllib.error.HTTPError) as info:
            w.get(f"/api/v1/queues/support/ewt?{query}")
        assert info.value.code == status, query
        assert "error" in json.loads(info.value.read())
    # The gauge of a caller entering now.
    assert 'callpulse_expected_wait_seconds{queue="support"} 84.0' in w.get("/metrics").decode()


# -- repeat callers and the callback list, across a kill -9 -------------------------------------------------
TOKEN = "callback-token-e2e"
A, B, D, E = "+15550001", "+15550002", "+15550004", "+15550005"


def calls_of(t0: int, calls: list[tuple[str, str | None, str, list[tuple[str, int]]]]) -> str:
    """JSON Lines of whole calls: (call id, caller, queue, [(event type, seconds after t0)])."""
    lines = []
    for call, caller, queue, steps in calls:
        for etype, sec in steps:
            event = {"event_id": f"{call}-{etype}-{sec}", "type": etype, "ts": t0 + sec, "call_id": call}
            if etype == "ring" and caller is not None:
                event["caller"] = caller
            if etype == "queue":
                event["queue"] = queue
            if etype == "answer":
                event["agent"] = "ann"
            lines.append(json.dumps(event))
    return "\n".join(lines) + "\n"


def test_repeats_and_the_callback_list_by_hand_across_a_restart_and_no_number_leaks(
    broker, worker_factory, tmp_path
):
    """Hand count (seconds after t0; S = 10 s):

    first part: A abandons sales after 40 s (on the list); B after 5 s (a short abandon: not on it); an
    anonymous caller after 40 s (no number: never on it); D is answered at 35; E abandons after 30 s (on it).
    Then the worker is killed (kill -9) and started again. Second part: D calls sales again at 600, less than
    24 h after its answered call: 1 repeat; A calls support at 900 and is answered at 910: A leaves the list,
    and its abandon is recovered (870 s after it, within an hour). At the end: E alone on sales' list.
    """
    t0 = int(time.time()) - 7200
    env = {"CALLPULSE_CLOCK": "event", "CALLPULSE_API_TOKEN": TOKEN}
    w = worker_factory(**env).start()
    first = tmp_path / "first.jsonl"
    first.write_text(
        calls_of(
            t0,
            [
                ("a1", A, "sales", [("ring", 0), ("queue", 0), ("abandon", 40), ("hangup", 40)]),
                ("b1", B, "sales", [("ring", 10), ("queue", 10), ("abandon", 15), ("hangup", 15)]),
                ("c1", "anonymous", "sales", [("ring", 20), ("queue", 20), ("abandon", 60), ("hangup", 60)]),
                ("d1", D, "sales", [("ring", 30), ("queue", 30), ("answer", 35), ("hangup", 95)]),
                ("e1", E, "sales", [("ring", 100), ("queue", 100), ("abandon", 130), ("hangup", 130)]),
            ],
        )
    )
    assert run_cli(broker, "produce", str(first)).returncode == 0
    w.wait_for("callpulse_callbacks_pending", 2, queue="sales")
    # The list needs the token: none, a wrong one, then the right one.
    for headers, status in (({}, 401), ({"Authorization": "Bearer nope"}, 401)):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(urllib.request.Request(w.base + "/api/v1/callbacks", headers=headers))
        assert info.value.code == status
    listed = callbacks(w)
    assert [(c["queue"], c["number"], c["attempts"], c["wait_seconds"]) for c in listed] == [
        ("sales", A, 1, 40.0),
        ("sales", E, 1, 30.0),
    ]
    w.kill()
    w.start()
    second = tmp_path / "second.jsonl"
    second.write_text(
        calls_of(
            t0,
            [
                ("d2", D, "sales", [("ring", 600), ("queue", 600), ("answer", 610), ("hangup", 700)]),
                ("a2", A, "support", [("ring", 900), ("queue", 900), ("answer", 910), ("hangup", 960)]),
            ],
        )
    )
    assert run_cli(broker, "produce", str(second)).returncode == 0
    w.wait_for("callpulse_callbacks_pending", 1, queue="sales")
    w.wait_for("callpulse_repeat_calls_total", 1, queue="sales")
    w.wait_for("callpulse_abandons_recovered_total", 1, queue="sales")
    assert w.value("callpulse_abandons_unrecovered_total", queue="sales") == 0
    listed = callbacks(w)
    assert [(c["queue"], c["number"], c["first_abandon"]) for c in listed] == [
        ("sales", E, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0 + 130)))
    ]
    # calls.callbacks told of A and E coming onto the list and of A leaving it (at least once each)
    records = [json.loads(r.value) for r in consume_all(broker, "calls.callbacks", 3)]
    assert {(r["number"], r["status"]) for r in records} == {(A, "pending"), (E, "pending"), (A, "closed")}
    # No number anywhere else: every other answer of the API, /metrics, the worker's logs, calls.facts.
    numbers = [n.lstrip("+") for n in (A, B, D, E)]
    seen = {
        path: w.get(path).decode()
        for path in (
            "/metrics",
            "/api/v1/queues",
            "/api/v1/queues/sales",
            "/api/v1/queues/sales/callers",
            "/api/v1/queues/sales/ewt?accuracy=1",
            "/api/v1/agents",
        )
    }
    seen["logs"] = "\n".join(p.read_text(errors="replace") for p in tmp_path.glob("worker-*.log"))
    facts = consume_all(broker, "calls.facts", 10**6, timeout=5)
    assert facts
    seen["calls.facts"] = "\n".join(r.value.decode() for r in facts)
    leaks = [(where, n) for where, text in seen.items() for n in numbers if n in text]
    assert leaks == []


def callbacks(w) -> list[dict]:
    request = urllib.request.Request(
        w.base + "/api/v1/callbacks", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())["callbacks"]
