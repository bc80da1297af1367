"""bench/spy.py: a py-spy raw profile summed by layer, on a profile written by hand."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import spy  # noqa: E402

# Six stacks of two threads, as py-spy --threads --format raw writes them (sample counts last).
PROFILE = """\
process 7 :"python -m app worker";thread (7): MainThread;run (asyncio/base_events.py:1);process (app/pipeline.py:9);apply (streams/calls.py:3) 50
thread (7): MainThread;run (asyncio/base_events.py:1);process (app/pipeline.py:9);apply (streams/calls.py:3);__init__ (<string>:2) 10
thread (7): MainThread;run (asyncio/base_events.py:1);process (app/pipeline.py:9) 20
thread (7): MainThread;run (asyncio/base_events.py:1);_fetch (aiokafka/consumer/fetcher.py:5);send (asyncio/selector_events.py:8) 15
thread (7): MainThread;run (asyncio/base_events.py:1);metrics (app/web.py:4);generate_latest (prometheus_client/exposition.py:2) 5
thread (9): Consumer;_drain (faust/transport/consumer.py:1);select (selectors.py:2) 40
"""


def test_each_sample_is_charged_to_its_innermost_layer_and_a_scrape_to_the_scrape():
    text = spy.summary(PROFILE, seconds=1, rate=100)
    lines = text.splitlines()
    # Main thread: 100 samples; core 50 + 10 (the <string> frame is charged outward to streams/),
    # shell 20, aiokafka 15 (its socket send in asyncio counts as aiokafka's), scrape 5.
    assert lines[0] == "thread MainThread: 100 samples, 100% busy"
    assert lines[1].split() == ["60.0%", "domain", "core", "(streams/)"]
    assert lines[2].split() == ["60.0%", "streams/calls.py"]
    assert lines[3].split() == ["20.0%", "callpulse", "shell", "(app/)"]
    assert lines[4].split() == ["20.0%", "app/pipeline.py"]
    assert lines[5].split() == ["15.0%", "aiokafka"]
    assert lines[6].split() == ["5.0%", "/metrics", "scrapes"]
    assert lines[7] == "thread Consumer: 40 samples, 40% busy"
    assert lines[8].split() == ["100.0%", "Faust", "and", "mode"]
    assert len(lines) == 9


def test_a_stack_of_no_known_layer_is_the_event_loop_and_standard_library():
    assert spy.charge([("run", "asyncio/base_events.py"), ("select", "selectors.py")]) == (spy.OTHER, "")
