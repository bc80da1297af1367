"""Where a worker's time goes: a py-spy profile summed by layer.

    .venv/bin/python bench/spy.py PROFILE.txt

PROFILE is py-spy's raw output with threads (``py-spy record --threads --format raw``), as
``bench/run.py --profile`` writes it. Each sample is charged to the innermost frame of a known layer
(time spent in asyncio or the standard library on behalf of aiokafka counts as aiokafka's) below the
event loop's callback frames: the loop's own time (waking tasks, running callbacks, polling sockets) is
the event loop's, whoever started the loop. Anything under a ``/metrics`` scrape counts as the scrape.
For each thread it prints the share of its samples per layer and the files of each layer that took
most. (py-spy counts a thread waiting for the GIL as idle, so how busy a worker was is better read from
its CPU time: ``bench/run.py`` reports it.)
"""

from __future__ import annotations

import argparse
import re
from collections import Counter, defaultdict
from pathlib import Path

# (layer, file prefixes) in the order a frame is tested; the first match names the frame's layer.
LAYERS = (
    ("domain core (streams/)", ("streams/",)),
    ("callpulse shell (app/)", ("app/",)),
    ("Faust and mode", ("faust/", "mode/")),
    ("aiokafka", ("aiokafka/", "kafka/")),
)
LOOP_FILES = frozenset({"asyncio/base_events.py", "asyncio/events.py"})
SCRAPE = "/metrics scrapes"
OTHER = "event loop (asyncio), standard library"
_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^():]+)(?::\d+)?\)$")


def layer_of(file: str) -> str | None:
    for layer, prefixes in LAYERS:  # py-spy names a module's file relative to its sys.path entry
        if file.startswith(prefixes):
            return layer
    return None


def parse(text: str) -> dict[str, list[tuple[list[tuple[str, str]], int]]]:
    """Thread name -> [(frames outermost first as (function, file)), samples]."""
    threads: dict[str, list[tuple[list[tuple[str, str]], int]]] = defaultdict(list)
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        parts = stack.split(";")
        head = 0
        while head < len(parts) and not _FRAME.match(parts[head]):
            head += 1  # "process ...", "thread (id): name"
        thread = parts[head - 1].split(": ", 1)[-1] if head else "?"
        frames = [(m["function"], m["file"]) for m in map(_FRAME.match, parts[head:]) if m]
        threads[thread].append((frames, int(count)))
    return threads


def charge(frames: list[tuple[str, str]]) -> tuple[str, str]:
    """(layer, file within the layer) a sample is charged to."""
    if any(file.startswith("prometheus_client/") for _, file in frames):
        return SCRAPE, ""
    for _, file in reversed(frames):
        if file in LOOP_FILES:
            break  # the event loop itself: whoever runs it (mode's worker, a thread) does not own its time
        layer = layer_of(file)
        if layer:
            return layer, file
    return OTHER, ""


def summary(text: str) -> str:
    lines = []
    threads = parse(text)
    for thread, samples in sorted(threads.items(), key=lambda kv: -sum(n for _, n in kv[1])):
        total = sum(n for _, n in samples)
        lines.append(f"thread {thread}: {total} samples")
        layers: Counter[str] = Counter()
        files: dict[str, Counter[str]] = defaultdict(Counter)
        for frames, n in samples:
            layer, file = charge(frames)
            layers[layer] += n
            if file:
                files[layer][file] += n
        for layer, n in layers.most_common():
            lines.append(f"  {n / total:6.1%}  {layer}")
            if layer in files:
                for file, m in files[layer].most_common(5):
                    lines.append(f"          {m / total:6.1%}  {file}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile", type=Path)
    args = parser.parse_args()
    print(summary(args.profile.read_text()))


if __name__ == "__main__":
    main()
