"""Facts: the diff of two derivations (upserts of live values) and the wire form of calls.facts."""

from streams.facts import FACT_KINDS, CompletedWire, ExitedWire, Fact, PlainWire, diff, from_wire, to_wire

T = 1_767_225_600_000


def test_the_wire_form_holds_what_the_aggregator_reads_per_kind():
    cases = {
        Fact("entered", "q:a", T, "entered:e1", "c1"): ["entered", T, 1],
        Fact("answered", "q:a", T, "answered:e2", "c1", wait_ms=12_000): ["answered", T, 1, 12_000, "c1"],
        Fact("abandoned", "q:a", T, "abandoned:e3", "c1", wait_ms=9_000, sign=-1): [
            "abandoned",
            T,
            -1,
            9_000,
            "c1",
        ],
        Fact("exited", "q:a", T, "exited:e4", "c1", wait_ms=5_000, reason="timeout"): [
            "exited",
            T,
            1,
            5_000,
            "timeout",
            "c1",
        ],
        Fact("refused", "q:a", T, "refused:e5", "c1", reason="full"): ["refused", T, 1, "full"],
        Fact(
            "completed",
            "q:a",
            T,
            "completed:e6",
            "c1",
            talk_ms=120_000,
            hold_ms=30_000,
            holds=2,
            acw_ms=15_000,
            transferred=1,
        ): ["completed", T, 1, 120_000, 30_000, 2, 15_000, 1],
        Fact("survey", "q:a", T, "survey:e7", "c1", scale="nps", score=9): ["survey", T, 1, "nps", 9],
        Fact(
            "live", "q:a", T, "live:c1", "c1", status="waiting", since_ms=T - 5, caller="5f0c", priority=2
        ): ["live", T, 1, "c1", "waiting", T - 5, "5f0c", 2],
        Fact("agent", "q:a", T, "agent:ag:a", agent="ag", status="on_call", since_ms=T - 7): [
            "agent",
            T,
            1,
            "ag",
            "on_call",
            T - 7,
            "",
        ],
        Fact("agent_next", "q:a", T, "agent_next:ag:a", agent="ag", status="available", since_ms=T + 5): [
            "agent_next",
            T,
            1,
            "ag",
            "available",
            T + 5,
            "",
        ],
        Fact(
            "agent_time",
            "q:a",
            T,
            "agent_time:ag:a:1",
            agent="ag",
            status="paused",
            since_ms=T - 9,
            reason="Lunch",
        ): ["agent_time", T, 1, "ag", "paused", T - 9, "Lunch"],
        Fact("attempt", "c:x", T, "attempt:e8", "c2"): ["attempt", T, 1],
    }
    for fact, wire in cases.items():
        assert to_wire(fact) == wire
        # read back, every field of the wire form carries the fact's value under the fact's own name
        read = from_wire(wire)
        assert {name: getattr(fact, name) for name in read._fields} == read._asdict()
    # every kind has a form: the others are [kind, ts, sign]
    for kind in FACT_KINDS:
        assert to_wire(Fact(kind, "q:a", T, "x"))[:3] == [kind, T, 1]


def test_diff_sends_a_replaced_live_value_as_the_new_value_alone():
    waiting = Fact("live", "q:a", T, "live:c1", "c1", status="waiting", since_ms=T)
    talking = Fact("live", "q:a", T + 10, "live:c1", "c1", status="talking", since_ms=T + 10)
    elsewhere = Fact("live", "q:b", T + 10, "live:c1", "c1", status="waiting", since_ms=T + 10)
    answered = Fact("answered", "q:a", T + 10, "answered:e2", "c1", wait_ms=10)
    assert diff([waiting], [answered, talking]) == [answered, talking]
    # moved to another queue: nothing replaces the value in q:a, so it is retracted
    assert diff([waiting], [elsewhere]) == [waiting.retraction(), elsewhere]
    # a counted fact that changes is always retracted
    amended = answered._replace(wait_ms=11)
    assert diff([answered], [amended]) == [answered.retraction(), amended]


def test_the_fast_constructors_fill_every_field_in_its_place():
    from streams.facts import agent_fact, live_fact

    assert live_fact("q:a", T, "c1", "held", T - 3) == Fact(
        "live", "q:a", T, "live:c1", "c1", status="held", since_ms=T - 3
    )
    assert live_fact("q:a", T, "c1", "waiting", T, "5f0c", 1) == Fact(
        "live", "q:a", T, "live:c1", "c1", status="waiting", since_ms=T, caller="5f0c", priority=1
    )
    assert agent_fact("agent_time", "q:a", T, "agent_time:ag:a:1", "ag", "acw", T - 9) == Fact(
        "agent_time", "q:a", T, "agent_time:ag:a:1", agent="ag", status="acw", since_ms=T - 9
    )


def test_the_aggregator_reads_a_wire_fact_by_name():
    exited = from_wire(["exited", T, -1, 5_000, "timeout"])
    assert type(exited) is ExitedWire and (exited.wait_ms, exited.reason, exited.sign) == (
        5_000,
        "timeout",
        -1,
    )
    completed = from_wire(["completed", T, 1, 120_000, 30_000, 2, 15_000, 1])
    assert type(completed) is CompletedWire
    assert (
        completed.talk_ms,
        completed.hold_ms,
        completed.holds,
        completed.acw_ms,
        completed.transferred,
    ) == (120_000, 30_000, 2, 15_000, 1)
    assert from_wire(["conversion", T, 1]) == PlainWire("conversion", T, 1)


def test_a_fact_stored_before_callers_were_kept_decodes_with_no_caller():
    # A tombstone's open completion written by the 18-field form: kind .. agent, then the sign.
    old = ["completed", "q:a", T, "completed:e6", "c1", 0, "", 120_000, 0, 0, 0, 0, "", 0, "", 0, "", -1]
    fact = Fact.decode(old)
    assert (fact.talk_ms, fact.caller, fact.priority, fact.sign) == (120_000, "", 0, -1)
    assert Fact.decode(fact.encode()) == fact
