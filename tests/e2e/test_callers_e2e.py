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

import pytest

from tests.e2e.conftest import REPO, run_cli

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
