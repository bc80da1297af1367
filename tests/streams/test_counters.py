"""Counter names: the stored names the engine writes, and the names the JSON API shows for them."""

from streams import counters


def test_stored_names_are_the_persisted_format():
    # These strings are in every stored minute and key state: changing one loses history on upgrade.
    assert [
        counters.exited("timeout"),
        counters.refused("full"),
        counters.survey("nps", "promoter"),
        counters.agent_ms("acw"),
        counters.wait_sum("abandoned"),
        counters.wait_histogram("exited"),
        counters.histogram_bucket("talk", 3),
        counters.histogram_sum("handle"),
    ] == [
        "exited:timeout",
        "refused:full",
        "survey:nps:promoter",
        "agent_ms:acw",
        "wait_abandoned_ms",
        "wait:exited",
        "h:talk:3",
        "h:handle:sum",
    ]


def test_the_api_shows_dotted_names_and_seconds():
    window = {
        "entered": 4,
        "exited:timeout": 2,
        "survey:csat:positive": 1,
        "agent_ms:available": 61_500,
        "wait_answered_ms": 12_000,
        "talk_ms": 90_250,
        "holds": 3,
    }
    assert counters.readable(window) == {
        "entered": 4,
        "exited.timeout": 2,
        "survey.csat.positive": 1,
        "agent_seconds.available": 61.5,
        "wait_answered_seconds": 12.0,
        "talk_seconds": 90.25,
        "holds": 3,
    }
