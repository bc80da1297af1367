"""A call's caller updates through the sessionizer's shell: sent to the caller's bucket, applied there, and the
callback list's changes to calls.callbacks (no broker: sends are recorded)."""

import orjson

from streams.events import call_bucket
from streams.validation import pseudonymise
from tests.app.test_agents import T0, FakeEvent, Recorder, events_of, make_pipeline


async def ack(event):
    return None


async def test_an_abandon_goes_to_the_caller_s_bucket_and_onto_the_callback_list(tmp_path):
    p = make_pipeline(tmp_path)
    s = p.sessionizer
    s.interval_s = 3600
    s.callbacks_topic = Recorder()
    number = "+1 555 0100"  # written with spaces: the number kept is +15550100
    call = events_of(
        "c1",
        "sales",
        ("ring", 0, {"caller": number}),
        ("queue", 0, {}),
        ("abandon", 40, {}),
        ("hangup", 40, {}),
    )
    await s.process(FakeEvent("calls.events", 0, 0, b"5", orjson.dumps(call)), ack)
    await s.flush_facts()
    caller = pseudonymise("+15550100", b"k")
    [update] = s.events_topic.sent
    assert update["key"] == call_bucket(caller).encode()
    assert update["headers"] == {"callpulse-internal": b"caller"}
    # c1 waited in sales from 0 to 40 s and abandoned; it reached no agent
    stint = ["sales", T0 * 1000, "abandoned", (T0 + 40) * 1000]
    assert orjson.loads(update["value"]) == [[caller, "c1", "+15550100", [stint], -1]]
    # the number travels to the caller's bucket, never in calls.facts
    assert all(b"5550100" not in sent["value"] for sent in s.facts_topic.sent)
    s.facts_topic.sent.clear()
    message = FakeEvent("calls.events", 1, 0, update["key"], update["value"])
    message.message.headers = [("callpulse-internal", b"caller")]
    await s.process(message, ack)
    await s.flush_facts()
    facts = [
        (sent["key"].decode(), *f)
        for sent in s.facts_topic.sent
        for _src, _off, fs in orjson.loads(sent["value"])
        for f in fs
    ]
    # on sales' list since its abandon at 40 s (a wait of 40 s >= S = 10 s): the pseudonym only
    assert facts == [("q:sales", "callback", (T0 + 40) * 1000, 1, caller, T0 * 1000 + 40_000)]
    [record] = [orjson.loads(sent["value"]) for sent in s.callbacks_topic.sent]
    assert s.callbacks_topic.sent[0]["key"] == b"sales"
    assert (record["status"], record["number"], record["attempts"], record["wait_seconds"]) == (
        "pending",
        "+15550100",
        1,
        40.0,
    )
    assert [c.number for c in s.pending_callbacks((T0 + 60) * 1000)] == ["+15550100"]
    # a message with the header that is no caller update changes nothing and is dead-lettered
    bad = FakeEvent("calls.events", 1, 1, update["key"], b'[["x", "c2", "n", [["sales", 1, "lost", 2]], -1]]')
    bad.message.headers = [("callpulse-internal", b"caller")]
    await s.process(bad, ack)
    [dead] = s.deadletter_topic.sent
    assert dead["headers"]["reason"] == b"invalid_json" and b"caller update" in dead["headers"]["error"]
