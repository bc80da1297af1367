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
