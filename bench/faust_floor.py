"""The ceiling of any Faust agent here: a bare agent that does nothing with single-event messages.

    .venv/bin/python bench/faust_floor.py [MESSAGES] [--take N]

Fills ``calls.events`` (8 partitions) on a fresh embedded broker with MESSAGES single-event messages (the bench's
traffic), then runs one Faust worker, configured as callpulse's is against that broker, whose only agent
iterates the stream and counts: message by message, or with ``--take N`` in batches of up to N
(``stream.take(N, within=0.05)``). It prints messages/s from the first message to the last: what Faust's
per-message path alone allows, before any work of callpulse's.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

TOPIC = "calls.events"  # created by bench/run.py's producer, 8 partitions


def agent_main(broker_port: int, messages: int, take: int, out: str, datadir: str) -> None:
    """The worker process: one bare agent; writes {"seconds", "messages"} to ``out`` when all are seen."""
    import faust

    from app.cli import make_worker
    from app.compat import short_fetch_wait
    from app.faust_app import faust_options
    from app.settings import Settings
    from tests.e2e.conftest import free_port

    settings = Settings.from_env(
        {
            "CALLPULSE_BROKER": f"kafka://127.0.0.1:{broker_port}",
            "CALLPULSE_WEB_PORT": str(free_port()),
            "CALLPULSE_APP_ID": "floor",
            "CALLPULSE_DATADIR": datadir,
        }
    )
    app = faust.App("floor", **faust_options(settings, embedded=True))
    short_fetch_wait()
    topic = app.topic(TOPIC, value_serializer="raw", key_serializer="raw", partitions=8)
    seen, first = 0, 0.0

    def count(n: int) -> None:
        nonlocal seen, first
        if not seen:
            first = time.monotonic()
        seen += n
        if seen >= messages:
            Path(out).write_text(json.dumps({"seconds": time.monotonic() - first, "messages": seen}))

    @app.agent(topic)
    async def bare(stream):
        if take > 1:
            async for batch in stream.take(take, within=0.05):
                count(len(batch))
        else:
            async for _ in stream:
                count(1)

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    make_worker(app, "warning", loop).execute_from_commandline()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("messages", type=int, nargs="?", default=200_000)
    parser.add_argument("--take", type=int, default=1, help="batches of up to N messages (stream.take)")
    parser.add_argument(
        "--agent", nargs=4, help=argparse.SUPPRESS
    )  # internal: broker port, out file, datadir, take
    args = parser.parse_args()
    if args.agent:
        port, out, datadir, take = args.agent
        agent_main(int(port), args.messages, int(take), out, datadir)
        return

    import run  # bench/run.py: the same traffic, broker and producer

    from app.broker import start_broker, stop
    from tests.e2e.conftest import free_port

    work = Path(tempfile.mkdtemp(prefix="callpulse-floor-"))
    port = free_port()
    broker = start_broker("127.0.0.1", port, log_path=work / "broker.log")
    try:
        start_ms = int(time.time() * 1000) - 24 * 3600_000
        events = list(itertools.islice(run.simulated(start_ms, seed=1).run(), args.messages))
        asyncio.run(run.produce(port, run.messages(events, 1)))
        out = work / "result.json"
        proc = subprocess.Popen(
            [
                sys.executable,
                __file__,
                str(args.messages),
                "--agent",
                str(port),
                str(out),
                str(work / "data"),
                str(args.take),
            ],
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=(work / "worker.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 600
            while not out.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the bare agent stopped or timed out; see {work / 'worker.log'}")
                time.sleep(0.2)
        finally:
            proc.terminate()
            proc.wait(30)
    finally:
        stop(broker)
    result = json.loads(out.read_text())
    mode = f"stream.take({args.take})" if args.take > 1 else "message by message"
    print(
        f"bare Faust agent, {mode}: {result['messages']} messages in {result['seconds']:.2f} s, "
        f"{result['messages'] / result['seconds']:,.0f} messages/s"
    )


if __name__ == "__main__":
    main()
