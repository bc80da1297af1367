"""Kill soak: a worker is killed with SIGKILL at random moments of a stream; the final counts must be exact.

    .venv/bin/python bench/soak.py                     # 10 rounds of 6 kills over 12,000 calls
    .venv/bin/python bench/soak.py --rounds 30 --kills 10 --calls 24000 --max-delay 0.8

Not a test (one round takes about two minutes, mostly group rejoins after each kill), but the way to
shake out recovery defects that a single kill hits rarely. Each round, on a fresh embedded broker:

1. ``callpulse produce --batch 1`` writes the calls of ``tests/e2e``'s kill test: call i queues at 2 i
   seconds into queue a, b or c (i % 3), and i % 4 shapes it: abandons after 7 s; answered after 12 s;
   answered after 30 s; exits after 50 s (timeout). So every queue gets calls/3 entered, calls/12 of each
   shape, and the expected counts follow by hand (``expected_counts``);
2. ``--kills`` times: a worker starts, runs until its exported counters move, then for a random
   0..``--max-delay`` seconds more, and is killed with SIGKILL;
3. a last worker runs to the end; every counter of every queue must equal the hand count.

A failed round keeps its directory (worker logs, the events) under ``--keep``; the exit status is the
number of failed rounds.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.broker import stop
from tests.e2e.conftest import Broker, Worker, run_cli
from tests.e2e.test_pipeline_e2e import load_calls, write_jsonl


def expected_counts(calls: int) -> dict[str, int]:
    """Per queue: calls/3 entered and offered; of each shape calls/12 (see the module docstring)."""
    shape = calls // 12
    return {
        "entered": calls // 3,
        "offered": calls // 3,
        "answered": 2 * shape,
        "answered_within_sl": shape,
        "abandoned": shape,
        "short_abandoned": shape,
        "abandoned_within_sl": shape,
    }


def entered(worker: Worker) -> float:
    return sum(worker.value("callpulse_calls_entered_total", queue=q) or 0 for q in "abc")


def skips_repaired(directory: Path) -> int:
    """How often the workers of a round found offsets skipped by the consumer and read them themselves."""
    return sum(
        log.read_text(errors="replace").count("the consumer skipped offsets")
        for log in directory.glob("worker-*.log")
    )


def one_round(directory: Path, calls: int, kills: int, max_delay: float, rnd: random.Random) -> list[tuple]:
    """Run one round; return the counters that differ from the hand counts as (queue, name, got, expected)."""
    broker = Broker(directory)
    worker = Worker(broker, directory, CALLPULSE_CLOCK="event")
    try:
        result = run_cli(
            broker, "produce", "--batch", "1", str(write_jsonl(directory / "load.jsonl", load_calls(calls)))
        )
        if result.returncode != 0:
            raise RuntimeError(result.stderr.decode())
        seen = 0.0
        for kill in range(kills):
            worker.start()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and entered(worker) <= seen and seen < calls:
                time.sleep(0.05)
            seen = entered(worker)
            delay = rnd.uniform(0, max_delay)
            time.sleep(delay)
            print(f"  kill {kill + 1}: {seen:.0f} calls entered, {delay:.2f} s later", flush=True)
            worker.kill()
        worker.start()
        expected = expected_counts(calls)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if all(
                worker.value("callpulse_calls_offered_total", queue=q) == expected["offered"] for q in "abc"
            ):
                break
            time.sleep(0.5)
        time.sleep(3)  # anything counted twice would show now
        return [
            (q, name, worker.value(f"callpulse_calls_{name}_total", queue=q), value)
            for q in "abc"
            for name, value in expected.items()
            if worker.value(f"callpulse_calls_{name}_total", queue=q) != value
        ]
    finally:
        worker.stop()
        stop(broker.proc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--kills", type=int, default=6, help="kills per round")
    parser.add_argument("--calls", type=int, default=12_000, help="calls per round (a multiple of 12)")
    parser.add_argument(
        "--max-delay", type=float, default=1.0, help="seconds a worker may run after its counters move"
    )
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--keep", type=Path, default=Path("bench/results/soak"), help="where failed rounds are kept"
    )
    args = parser.parse_args()
    args.keep = (
        args.keep.resolve()
    )  # the workers run in the round's directory: a relative path would be theirs
    if args.calls <= 0 or args.calls % 12:
        parser.error("--calls must be a positive multiple of 12")
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rnd = random.Random(seed)
    print(f"seed {seed}", flush=True)
    failed = 0
    for n in range(1, args.rounds + 1):
        directory = args.keep / f"round-{seed}-{n}"
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        wrong = one_round(directory, args.calls, args.kills, args.max_delay, rnd)
        skips = skips_repaired(directory)
        print(
            f"round {n}: "
            + ("exact" if not wrong else f"WRONG {wrong} (kept in {directory})")
            + f"; offsets skipped by the consumer and read from the broker: {skips} time{'s' * (skips != 1)}",
            flush=True,
        )
        if wrong:
            failed += 1
        else:
            shutil.rmtree(directory)
    print(f"{args.rounds - failed} of {args.rounds} rounds exact")
    return failed


if __name__ == "__main__":
    sys.exit(main())
