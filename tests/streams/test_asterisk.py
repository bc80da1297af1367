"""The Asterisk queue_log parser: every verb, both shapes, ids, bad lines; whole fixtures against grep counts."""

from collections import Counter
from pathlib import Path

import pytest

from streams.adapters.asterisk import BadLine, QueueLogParser, agent_id, detect_format

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "asterisk"


def parse(line, fmt="native"):
    return QueueLogParser(fmt=fmt).parse(line)


def kinds(events):
    return [(e["type"], {k: v for k, v in e.items() if k not in ("event_id", "type", "ts")}) for e in events]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            "100|c.1|support|NONE|ENTERQUEUE||55500011|1",
            [("queue", {"call_id": "c.1", "queue": "support", "caller": "55500011"})],
        ),
        (
            "100|c.1|support|SIP/agent1|CONNECT|5|c.2|0",
            [("answer", {"call_id": "c.1", "queue": "support", "agent": "agent1"})],
        ),
        ("100|c.1|support|agent1|COMPLETEAGENT|0|7|1", [("hangup", {"call_id": "c.1"})]),
        ("100|c.1|support|agent1|COMPLETECALLER|0|7|1", [("hangup", {"call_id": "c.1"})]),
        ("100|c.1|support|NONE|ABANDON|1|1|3", [("abandon", {"call_id": "c.1", "queue": "support"})]),
        (
            "100|c.1|q|NONE|EXITWITHTIMEOUT|1|1|300",
            [("exit", {"call_id": "c.1", "queue": "q", "reason": "timeout"})],
        ),
        (
            "100|c.1|q|NONE|EXITWITHKEY|5|1|1|20",
            [("exit", {"call_id": "c.1", "queue": "q", "reason": "key"})],
        ),
        ("100|c.1|q|NONE|EXITEMPTY|1|1|2", [("exit", {"call_id": "c.1", "queue": "q", "reason": "empty"})]),
        ("100|c.1|q|NONE|LEAVEEMPTY|1|1|2", [("exit", {"call_id": "c.1", "queue": "q", "reason": "empty"})]),
        (
            "100|c.1|q|NONE|WITHDRAW|1|1|9|because",
            [("exit", {"call_id": "c.1", "queue": "q", "reason": "withdraw"})],
        ),
        ("100|c.1|q|NONE|FULL|", [("refused", {"call_id": "c.1", "queue": "q", "reason": "full"})]),
        ("100|c.1|q|NONE|JOINEMPTY|", [("refused", {"call_id": "c.1", "queue": "q", "reason": "joinempty"})]),
        ("100|c.1|q|NONE|CLOSED|", [("refused", {"call_id": "c.1", "queue": "q", "reason": "closed"})]),
        (
            "100|c.1|q|SIP/a1|BLINDTRANSFER|2001|default|5|60|1",
            [("transfer", {"call_id": "c.1", "target": "2001"})],
        ),
        (
            "100|c.1|q|SIP/a1|ATTENDEDTRANSFER|BRIDGE|c.9|5|60|1",
            [("transfer", {"call_id": "c.1", "target": "c.9"})],
        ),
        (
            "100|c.1|q|SIP/a1|TRANSFER|2001|default|5|60|1",
            [("transfer", {"call_id": "c.1", "target": "2001"})],
        ),
        (
            "100|c.1|q|sipagent|RINGCANCELED|2497",
            [("ring_canceled", {"call_id": "c.1", "queue": "q", "agent": "sipagent"})],
        ),
        (
            "100|c.1|q|SIP/8007|RINGNOANSWER|1000",
            [("agent_missed", {"call_id": "c.1", "queue": "q", "agent": "8007"})],
        ),
        (
            "100|MANAGER|q|Local/1127@callback-agent|ADDMEMBER|",
            [("agent_state", {"agent": "1127", "state": "available", "queue": "q"})],
        ),
        (
            "100|MANAGER|q|SIP/9|ADDMEMBER|PAUSED",
            [("agent_state", {"agent": "9", "state": "paused", "queue": "q"})],
        ),
        (
            "100|REALTIME|q|SIP/9|REMOVEMEMBER|",
            [("agent_state", {"agent": "9", "state": "offline", "queue": "q"})],
        ),
        (
            "100|NONE|q|SIP/9|PAUSE|lunch",
            [("agent_state", {"agent": "9", "state": "paused", "queue": "q", "reason": "lunch"})],
        ),
        (
            "100|NONE|NONE|Bob|PAUSEALL|Lunch",
            [("agent_state", {"agent": "Bob", "state": "paused", "reason": "Lunch"})],
        ),
        (
            "100|NONE|q|Bob|UNPAUSE|Lunch over",
            [("agent_state", {"agent": "Bob", "state": "available", "queue": "q"})],
        ),
        ("100|NONE|q|SIP/9|UNPAUSE|", [("agent_state", {"agent": "9", "state": "available", "queue": "q"})]),
        ("100|NONE|NONE|SIP/9|PAUSEALL|", [("agent_state", {"agent": "9", "state": "paused"})]),
        ("100|NONE|NONE|SIP/9|UNPAUSEALL|", [("agent_state", {"agent": "9", "state": "available"})]),
        (
            "100|c.1|NONE|Agent/1127|AGENTCALLBACKLOGIN|hint:1127@default",
            [("agent_state", {"agent": "1127", "state": "available"})],
        ),
        (
            "100|c.1|NONE|Agent/1127|AGENTLOGOFF|SIP/1127|3600",
            [("agent_state", {"agent": "1127", "state": "offline"})],
        ),
        (
            "100|c.1|NONE|Agent/1127|OUTDIAL|555114",
            [("dial", {"call_id": "c.1", "campaign": "default", "agent": "1127"})],
        ),
        (
            "100|c.1|NONE|Agent/1127|OUTCANCEL|555114",
            [("hangup", {"call_id": "c.1", "direction": "outbound", "disposition": "no_answer"})],
        ),
        (
            "100|c.1|NONE|Agent/1127|OUTCHANUNAVAIL|555114",
            [("hangup", {"call_id": "c.1", "direction": "outbound", "disposition": "failed"})],
        ),
        (
            "100|c.1|NONE|Agent/1127|OUTCONGESTION|555114",
            [("hangup", {"call_id": "c.1", "direction": "outbound", "disposition": "failed"})],
        ),
        (
            "100|c.1|NONE|Agent/1127|OUTTRANSFER|555114|1125",
            [("transfer", {"call_id": "c.1", "direction": "outbound", "target": "1125"})],
        ),
    ],
)
def test_each_native_verb_maps_to_its_events(line, expected):
    events = parse(line)
    assert kinds(events) == expected
    assert all(e["ts"] == 100 for e in events)


def test_the_csv_export_puts_the_same_facts_in_other_fields():
    enter = "13,1543602677,1543602660.197,IT,NONE,ENTERQUEUE,55590318250,,,1,0,0,0,2018-11-30 13:31:17"
    assert kinds(parse(enter, "qm-csv")) == [
        ("queue", {"call_id": "1543602660.197", "queue": "IT", "caller": "55590318250"})
    ]
    # OUTANSWER is logged when the outbound call ends: answer and hangup now, contact by ttime (398 s >= 30 s)
    answer = "12,1543602424,1543602022.182,NONE,Agent/1127,OUTANSWER,3318,COMPLETEAGENT,,0,0,2,398,2018-11-30 13:27:04"
    events = parse(answer, "qm-csv")
    assert kinds(events) == [
        ("answer", {"call_id": "1543602022.182", "direction": "outbound", "agent": "1127"}),
        ("hangup", {"call_id": "1543602022.182", "direction": "outbound", "disposition": "contact"}),
    ]
    assert [e["event_id"] for e in events] == ["qm-12-1", "qm-12-2"]
    short = answer.replace(",2,398,", ",9,29,")  # 29 s of talk: no contact
    assert "disposition" not in parse(short, "qm-csv")[1]
    blind = "928,1543938963,1543938872.1743,IT,Agent/1128,BLINDTRANSFER,55557379271,1142,transfer,1,0,6,38,2018-12-04 10:56:03"
    assert kinds(parse(blind, "qm-csv")) == [("transfer", {"call_id": "1543938872.1743", "target": "1142"})]
    assert (
        parse(
            "uid,date_time,callid,queue_name,type,event,param1,param2,param3,entpos,expos,htime,ttime,time",
            "qm-csv",
        )
        == []
    )


def test_ids_are_deterministic_and_identical_lines_in_one_second_stay_distinct():
    line = "1543859343|1543859342.3140|NONE|Agent/1144|OUTDIAL|11"
    first, second = QueueLogParser(), QueueLogParser()
    a = [e["event_id"] for e in first.parse(line) + first.parse(line)]
    b = [e["event_id"] for e in second.parse(line) + second.parse(line)]
    assert a == b and a[0] != a[1]  # two identical dials: two ids; a second reading: the same two ids
    # the occurrence counts survive a follower's restart
    restored = QueueLogParser()
    restored.restore(first.state())
    assert restored.parse(line)[0]["event_id"] not in a


@pytest.mark.parametrize(
    ("line", "fmt", "fragment"),
    [
        ("garbage", "native", "at least 5"),
        ("12x|c.1|q|NONE|ENTERQUEUE||1|1", "native", "epoch '12x'"),
        ("100|NONE|q|NONE|ENTERQUEUE||1|1", "native", "without a call id"),
        ("100|c.1|NONE|NONE|ENTERQUEUE||1|1", "native", "without a queue"),
        ("100|NONE|q|NONE|ADDMEMBER|", "native", "without an agent"),
        ("1,2,3", "qm-csv", "3 columns"),
    ],
)
def test_bad_lines_say_why(line, fmt, fragment):
    with pytest.raises(BadLine, match=fragment):
        parse(line, fmt)


def test_markers_and_unknown_verbs_are_counted_and_skipped():
    parser = QueueLogParser()
    for line in (
        "1|NONE|NONE|NONE|QUEUESTART|",
        "2|NONE|NONE|NONE|CONFIGRELOAD|",
        "3|c|q|NONE|MYVERB|x",
        "4|NONE|NONE|NONE|QUEUESTART|",
    ):
        assert parser.parse(line) == []
    assert parser.skipped == Counter(QUEUESTART=2, CONFIGRELOAD=1, MYVERB=1)


def test_agent_ids_and_format_detection():
    assert [agent_id(m) for m in ("Local/1127@callback-agent", "Agent/1127", "SIP/1127", "agent1")] == [
        "1127",
        "1127",
        "1127",
        "agent1",
    ]
    assert (
        detect_format(
            "uid,date_time,callid,queue_name,type,event,param1,param2,param3,entpos,expos,htime,ttime,time"
        )
        == "qm-csv"
    )
    assert detect_format("1795490107|1795490107.10|support|NONE|ENTERQUEUE||55500011|1") == "native"


def type_counts(path, fmt):
    parser = QueueLogParser(fmt=fmt)
    out = Counter()
    for line in path.read_text().splitlines():
        out.update(e["type"] for e in parser.parse(line))
    return out, parser.skipped


def test_whole_fixtures_map_line_for_line():
    # native local smoke: grep -c per verb: ENTERQUEUE 4, CONNECT 3, ABANDON 1, COMPLETEAGENT 3
    counts, skipped = type_counts(FIXTURES / "asterisk20-local-smoke.queue_log", "native")
    assert counts == Counter(queue=4, answer=3, abandon=1, hangup=3) and not skipped
    # native SIP smoke: ENTERQUEUE 4, CONNECT 1, COMPLETECALLER 1, ABANDON 3, RINGCANCELED 2
    counts, skipped = type_counts(FIXTURES / "asterisk20-sip-smoke.queue_log", "native")
    assert counts == Counter(queue=4, answer=1, hangup=1, abandon=3, ring_canceled=2) and not skipped
    # the agents run (grep '|RINGNOANSWER|' and '|RINGCANCELED|'): phones rang to the 15 s timeout 4 times
    # (Alice 3 in sales, Erin 1 in support); one caller hung up while Alice's phone rang (RINGCANCELED)
    counts, _ = type_counts(FIXTURES / "asterisk20-agents.queue_log", "native")
    assert (counts["agent_missed"], counts["ring_canceled"]) == (4, 1)
    # production export (awk -F, 'NR>1{print $6}' | sort | uniq -c): ENTERQUEUE 108, CONNECT 93,
    # COMPLETEAGENT 51 + COMPLETECALLER 38 = 89 hangups, + OUTCANCEL 24 + OUTCHANUNAVAIL 18 + OUTCONGESTION 9
    # + 77 OUTANSWER hangups = 217 hangups; answers 93 + 77 OUTANSWER = 170; RINGNOANSWER 360; OUTDIAL 128;
    # transfers BLIND 1 + ATTENDED 1 + OUTTRANSFER 1; ABANDON 12; EXITWITHTIMEOUT 1; agent states:
    # ADDMEMBER 26 + REMOVEMEMBER 10 + AGENTCALLBACKLOGIN 14 + AGENTCALLBACKLOGOFF 10 = 60
    counts, skipped = type_counts(FIXTURES / "pbxware-2018.queue_log.csv", "qm-csv")
    assert counts == Counter(
        queue=108,
        answer=170,
        hangup=217,
        agent_missed=360,
        dial=128,
        transfer=3,
        abandon=12,
        exit=1,
        agent_state=60,
    )
    assert skipped == Counter(CONFIGRELOAD=11, QUEUESTART=7)


def test_member_names_say_which_agent_an_interface_is():
    # ADDMEMBER/REMOVEMEMBER name the interface, CONNECT the member (the fixture's Dave, Local/104@agents/n)
    parser = QueueLogParser(member_names={"Local/104@agents/n": "Dave"})
    added = parser.parse("1796183656|MANAGER|sales|Local/104@agents/n|ADDMEMBER|")
    connect = parser.parse("1796183700|1796183690.1|sales|Dave|CONNECT|10|1796183698.2|2")
    assert [(e["type"], e["agent"]) for e in added + connect] == [("agent_state", "Dave"), ("answer", "Dave")]
    # without the name the interface's id is the agent: 104
    assert (
        QueueLogParser().parse("1796183656|MANAGER|sales|Local/104@agents/n|ADDMEMBER|")[0]["agent"] == "104"
    )
