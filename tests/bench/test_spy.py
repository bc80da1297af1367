"""bench/spy.py: a py-spy raw profile summed by layer, on a profile written by hand."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import spy

# Stacks of two threads as py-spy --threads --format raw writes them (outermost frame first, samples last).
LOOP = "run_worker (app/cli.py:3);execute (mode/worker.py:4);_run_once (asyncio/base_events.py:5)"
PROFILE = f"""\
thread (7): MainThread;{LOOP};_run (asyncio/events.py:6);process (app/pipeline.py:9);apply (streams/calls.py:3) 50
thread (7): MainThread;{LOOP};_run (asyncio/events.py:6);process (app/pipeline.py:9);apply (streams/calls.py:3);__init__ (<string>:2) 10
thread (7): MainThread;{LOOP};_run (asyncio/events.py:6);process (app/pipeline.py:9) 20
thread (7): MainThread;{LOOP};_run (asyncio/events.py:6);_fetch (aiokafka/consumer/fetcher.py:5);send (asyncio/selector_events.py:8) 15
thread (7): MainThread;{LOOP};select (selectors.py:6) 10
thread (7): MainThread;{LOOP};_run (asyncio/events.py:6);metrics (app/web.py:4);generate_latest (prometheus_client/exposition.py:2) 5
thread (9): Consumer;_drain (faust/transport/consumer.py:1);select (selectors.py:2) 40
"""


def test_each_sample_is_charged_to_its_innermost_layer_below_the_event_loop():
    lines = [line.split() for line in spy.summary(PROFILE).splitlines()]
    # Main thread, 110 samples: the core 50 + 10 (the <string> frame is charged outward to streams/), the
    # shell 20, aiokafka 15 (its socket send in asyncio counts as aiokafka's), the event loop's own poll 10
    # (not app/cli.py's or mode's, which only started the loop), the scrape 5.
    assert lines == [
        ["thread", "MainThread:", "110", "samples"],
        ["54.5%", "domain", "core", "(streams/)"],
        ["54.5%", "streams/calls.py"],
        ["18.2%", "callpulse", "shell", "(app/)"],
        ["18.2%", "app/pipeline.py"],
        ["13.6%", "aiokafka"],
        ["13.6%", "aiokafka/consumer/fetcher.py"],
        ["9.1%", "event", "loop", "(asyncio),", "standard", "library"],
        ["4.5%", "/metrics", "scrapes"],
        ["thread", "Consumer:", "40", "samples"],
        ["100.0%", "Faust", "and", "mode"],
        ["100.0%", "faust/transport/consumer.py"],
    ]


def test_faust_modules_named_app_are_faust_not_the_shell():
    assert spy.charge([("start", "faust/app/base.py")]) == ("Faust and mode", "faust/app/base.py")
