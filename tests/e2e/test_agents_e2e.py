"""Agent states from a real Asterisk 20 run (``asterisk20-agents.queue_log``), through the broker and a worker.

The log is ingested in four parts, cut at second boundaries; after each part the worker's clock (event time)
stands at the part's last line, and the per-queue agent counts are compared with a hand count.

The hand count: the agents' calls are the CONNECT lines paired with the same call id's next COMPLETEAGENT,
COMPLETECALLER, BLINDTRANSFER or ATTENDEDTRANSFER line, and the member and pause lines are read as they are
(``awk -F'|' '{print $1-1796183456, $3, $4, $5, $6}'``; t is seconds after 1796183456):

- sales (``wrapuptime=5``; static members Alice, Bob, Carol; Dave, ``Local/104@agents/n``, added at t=200 and
  removed at t=600) and support (no wrap-up time; static Carol and Erin; Frank, ``Local/202@agents/n``, added
  at t=260 and removed at t=640). Carol is in both: a call from either holds her in both.
- t=119 (line 33): Alice on a call 106-133, Carol 113-133 (from sales), Erin 116-138 (support). Bob paused
  (``Lunch``) at t=60 while on a call 24-65: on the call to 65, wrap-up to 70, paused since.
  sales: on_call 2 (Alice, Carol), paused 1 (Bob, Lunch); support: on_call 2 (Carol, Erin).
- t=323 (line 119): sales: Alice 293-331, Bob 294-326, Carol 304-326 on calls; Dave's call 291-322 ended at
  322: wrap-up to 327. support: Carol on her sales call (her Coaching pause of t=300 does not show while
  she talks), Frank 298-347 on a call, Erin's last call ended at 269: available.
  sales: on_call 3, acw 1; support: on_call 2, available 1.
- t=486 (line 197): sales: Alice paused (``Break``) at 480, her last call ended at 452; Bob on a call since
  486, Carol 465-513, Dave 466-490. support: Carol on her call, Frank 459-499, Erin paused (``Auto-Pause``)
  at 446, her last call ended at 430. sales: on_call 3, paused 1 (Break); support: on_call 2, paused 1
  (Auto-Pause).
- t=798 (the last line): every call has ended (Erin's last at 798, support has no wrap-up time), Dave and
  Frank are removed, nobody is paused: sales available 3, support available 2; Asterisk's own QueueSummary
  at the end says the same (sales LoggedIn 3 Available 3, support 2 and 2, ``asterisk20-agents.queue-show.txt``).

Per agent over the whole log (``today``): answered = its CONNECT lines; missed = its RINGNOANSWER lines (4:
Alice 3, Erin 1); transferred = its calls that ended in a BLINDTRANSFER or ATTENDEDTRANSFER (6: Alice 1, Bob 2,
Carol 2, Dave 1); talk = the sum of each call's end minus its CONNECT; after-call work = after each sales call
min(5 s, time to the agent's next CONNECT), nothing after a support call nor after Dave's last call (he was
removed during it); paused overall = Bob 70-170 (100 s), Alice 480-540 (60 s), Erin 446-500 (54 s), and none
for Carol, who stayed available or busy in sales while paused in support. AHT = (talk + after-call work) /
answered (every call completed).
"""

from __future__ import annotations

import json
import time
import urllib.error

import pytest

from tests.e2e.conftest import REPO, run_cli

pytestmark = pytest.mark.e2e

LOG = REPO.parent / "shared" / "fixtures" / "asterisk" / "asterisk20-agents.queue_log"
MEMBERS = ["--member", "Local/104@agents/n=Dave", "--member", "Local/202@agents/n=Frank"]
QUEUES = """
sales:
  wrapup: 5
  members: [Alice, Bob, Carol]
support:
  members: [Carol, Erin]
"""


def live(available=0, on_call=0, acw=0, paused=None):
    paused = paused or {}
    agents = {"available": available, "on_call": on_call, "acw": acw, "paused": sum(paused.values())}
    return {"agents": agents, "agents_staffed": sum(agents.values()), "agents_paused": paused}


#: (last line of the part, t of that line, expected live agent figures of sales and support)
PARTS = [
    (33, 119, live(on_call=2, paused={"Lunch": 1}), live(on_call=2)),
    (119, 323, live(on_call=3, acw=1), live(on_call=2, available=1)),
    (197, 486, live(on_call=3, paused={"Break": 1}), live(on_call=2, paused={"Auto-Pause": 1})),
    (None, 798, live(available=3), live(available=2)),
]


def agent_figures(worker, queue):
    try:
        data = json.loads(worker.get(f"/api/v1/queues/{queue}"))
    except urllib.error.HTTPError as exc:
        if exc.code == 404:  # no fact of the queue yet
            return None
        raise
    return {k: data["live"][k] for k in ("agents", "agents_staffed", "agents_paused")}


def test_named_agents_at_several_instants_match_the_hand_count(broker, worker_factory, tmp_path):
    queues = tmp_path / "queues.yaml"
    queues.write_text(QUEUES)
    lines = LOG.read_text().splitlines(keepends=True)
    w = worker_factory(CALLPULSE_CLOCK="event", CALLPULSE_QUEUES_FILE=str(queues)).start()
    start = 0
    for last, t, sales, support in PARTS:
        end = last if last is not None else len(lines)
        part = tmp_path / f"part-{t}.queue_log"
        part.write_text("".join(lines[start:end]))
        assert int(lines[end - 1].split("|")[0]) - 1796183456 == t
        start = end
        result = run_cli(broker, "ingest", "asterisk-queue-log", str(part), *MEMBERS)
        assert result.returncode == 0, result.stderr.decode()
        expected = {"sales": sales, "support": support}
        deadline = time.monotonic() + 60
        got = {}
        while time.monotonic() < deadline:
            got = {q: agent_figures(w, q) for q in expected}
            if got == expected:
                break
            time.sleep(0.25)
        assert got == expected, (t, w.log_tail())


#: agent -> (answered, missed, transferred, talk s, after-call work s, paused s), counted as the docstring says
PER_AGENT = {
    "Alice": (16, 3, 1, 419, 80, 60),
    "Bob": (17, 0, 2, 448, 85, 100),
    "Carol": (20, 0, 2, 541, 75, 0),
    "Dave": (11, 0, 1, 316, 50, 0),
    "Erin": (11, 1, 0, 369, 0, 54),
    "Frank": (7, 0, 0, 229, 0, 0),
}
#: agent -> (overall state at the end, its queues and their states)
AT_END = {
    "Alice": ("available", {"sales": "available"}),
    "Bob": ("available", {"sales": "available"}),
    "Carol": ("available", {"sales": "available", "support": "available"}),
    "Dave": ("offline", {}),
    "Erin": ("available", {"support": "available"}),
    "Frank": ("offline", {}),
}


def test_each_agent_s_own_figures_match_the_hand_count(broker, worker_factory, tmp_path):
    queues = tmp_path / "queues.yaml"
    queues.write_text(QUEUES)
    result = run_cli(broker, "ingest", "asterisk-queue-log", str(LOG), *MEMBERS)
    assert result.returncode == 0, result.stderr.decode()
    w = worker_factory(CALLPULSE_CLOCK="event", CALLPULSE_QUEUES_FILE=str(queues)).start()

    def figures():
        out = {}
        for a in json.loads(w.get("/api/v1/agents"))["agents"]:
            today = a.get("windows", {}).get("today")
            if today is None:
                continue
            out[a["agent"]] = (
                today["answered"],
                today["missed"],
                today["transferred"],
                today["talk_seconds"],
                today["acw_seconds"],
                today["seconds_in_state"]["paused"],
            )
        return out

    deadline = time.monotonic() + 60
    got = {}
    while time.monotonic() < deadline and got != PER_AGENT:
        got = figures()
        time.sleep(0.25)
    assert got == PER_AGENT, w.log_tail()
    agents = {a["agent"]: a for a in json.loads(w.get("/api/v1/agents"))["agents"]}
    assert {
        name: (a["state"], {q: s["state"] for q, s in a["queues"].items()}) for name, a in agents.items()
    } == AT_END
    for name, (answered, _missed, _tr, talk, acw, _paused) in PER_AGENT.items():
        today = agents[name]["windows"]["today"]
        assert today["average_handle_time_seconds"] == pytest.approx((talk + acw) / answered), name
        # no agent's calls overlap in this log: its time on calls is its talk time; no time is negative
        assert today["seconds_in_state"]["on_call"] == talk, name
        assert min(today["seconds_in_state"].values()) >= 0, name
    # one agent alone, and an unknown one
    bob = json.loads(w.get("/api/v1/agents/Bob"))
    assert (bob["agent"], bob["state"], bob["windows"]["today"]["answered"]) == ("Bob", "available", 17)
    with pytest.raises(urllib.error.HTTPError) as info:
        w.get("/api/v1/agents/Nobody")
    assert info.value.code == 404


def test_an_agent_on_a_call_shows_the_call_and_a_paused_one_the_reason(broker, worker_factory, tmp_path):
    # through line 197 (t=486): Bob on a call from sales since 486; Alice paused (Break) since 480; Carol
    # paused (Coaching) in support only at 300-390, so at t=323 (line 119) she is on a sales call in both
    queues = tmp_path / "queues.yaml"
    queues.write_text(QUEUES)
    part = tmp_path / "part.queue_log"
    part.write_text("".join(LOG.read_text().splitlines(keepends=True)[:197]))
    assert run_cli(broker, "ingest", "asterisk-queue-log", str(part), *MEMBERS).returncode == 0
    w = worker_factory(CALLPULSE_CLOCK="event", CALLPULSE_QUEUES_FILE=str(queues)).start()
    t0 = 1796183456

    def iso(t):
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0 + t))

    expected = {
        "Bob": {"state": "on_call", "since": iso(486), "call": {"queue": "sales", "since": iso(486)}},
        "Alice": {"state": "paused", "since": iso(480), "reason": "Break"},
        "Erin": {"state": "paused", "since": iso(446), "reason": "Auto-Pause"},
    }
    deadline = time.monotonic() + 60
    got = {}
    while time.monotonic() < deadline:
        agents = {a["agent"]: a for a in json.loads(w.get("/api/v1/agents"))["agents"]}
        got = {
            name: {k: agents[name][k] for k in ("state", "since", "call", "reason") if k in agents[name]}
            for name in expected
            if name in agents and "since" in agents[name]
        }
        if got == expected:
            break
        time.sleep(0.25)
    assert got == expected, w.log_tail()
    # Alice is paused in sales, her only queue, with the reason
    assert agents["Alice"]["queues"] == {"sales": {"state": "paused", "since": iso(480), "reason": "Break"}}
