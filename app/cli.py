"""The ``callpulse`` command and its subcommands.

The subcommands: ``dev``, ``worker``, ``broker``, ``produce``, ``simulate`` and ``ingest asterisk-queue-log``.

Each subcommand checks its options and hands them, with the settings, to a plain ``run_*`` function that
takes keyword arguments, so the run functions work and test without click (``simulate`` first builds its
events with ``simulation``). A bad setting or argument prints one plain sentence and exits with
``EXIT_USAGE``; an unreachable broker exits with ``EXIT_UNAVAILABLE``; a compression codec this
installation cannot read, or an embedded broker that cannot start (``callpulse broker``), with
``EXIT_FAILURE``; Ctrl-C with ``EXIT_OK``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import click
import orjson

from app.kafka import (
    TOPIC_EVENTS,
    BrokerUnavailable,
    CodecsMissing,
    broker_bind,
    check_codecs,
    detect_embedded,
    ensure_topics,
)
from app.producing import EventProducer, Pacer
from app.settings import Settings, SettingsError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3

log = logging.getLogger("callpulse")


def load_settings() -> Settings:
    """The settings from the environment; also sets up logging at their log level and logs their warnings."""
    settings = Settings.from_env()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for warning in settings.warnings:
        log.warning(warning)
    return settings


def _fail(message: str, code: int) -> None:
    click.echo(f"callpulse: {message}", err=True)
    sys.exit(code)


def _guard(fn):  # a decorator for click commands
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SettingsError as exc:
            _fail(str(exc), EXIT_USAGE)
        except BrokerUnavailable as exc:
            _fail(f"{exc}. Start one with `callpulse broker` or set CALLPULSE_BROKER.", EXIT_UNAVAILABLE)
        except CodecsMissing as exc:
            _fail(f"{exc}.", EXIT_FAILURE)
        except KeyboardInterrupt:
            sys.exit(EXIT_OK)

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """callpulse: real-time contact-center KPIs from call events. Settings: CALLPULSE_* variables (see docs/settings.md)."""


# -- worker ------------------------------------------------------------------------------------------------------


def make_worker(app: Any, log_level: str, loop: asyncio.AbstractEventLoop) -> Any:
    """The Faust worker that runs ``app``, logging at ``log_level`` (a CALLPULSE_LOG_LEVEL value)."""
    from faust.worker import Worker

    level = {"debug": "debug", "info": "info", "warning": "warn", "error": "error"}[log_level]
    worker = Worker(app, loglevel=level, quiet=True, loop=loop, redirect_stdouts=False)
    # Faust's terminal spinner sets the root logger to DEBUG whenever the level is warning or error, so every
    # debug call of Faust and aiokafka (several per message) would build a log record. A service has no use
    # for a spinner.
    worker.spinner = None
    return worker


def run_worker(*, settings: Settings) -> int:
    """Run one Faust worker until SIGINT/SIGTERM."""
    import faust  # noqa: F401 - imported here so that `callpulse produce` starts fast

    from app.faust_app import build

    check_codecs()  # before anything is read: a batch of a missing codec would stop the worker for good
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    embedded = loop.run_until_complete(detect_embedded(settings))
    loop.run_until_complete(ensure_topics(settings))
    if embedded:
        log.info("embedded broker detected: producer batches of one record, short session timeout")
    pipeline = build(settings, embedded)
    worker = make_worker(pipeline.app, settings.log_level, loop)
    # Python's cyclic GC, at its default thresholds, spent 2.7 s of a 500,000-event run (about 13 % of the
    # main thread) to find some 650 unreachable objects: the working state is large and almost free of
    # cycles. Collect the young generation every 50,000 allocations instead of 700, and the old ones rarely.
    gc.set_threshold(50_000, 20, 100)
    log.info(
        "metrics on http://%s:%s/metrics, API on http://%s:%s/api/v1/queues",
        settings.web_host,
        settings.web_port,
        settings.web_host,
        settings.web_port,
    )
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0)
    return EXIT_OK


@main.command()
@_guard
def worker() -> None:
    """Run a worker: sessionize calls.events and aggregate KPIs; serve /metrics and /api/v1/queues."""
    sys.exit(run_worker(settings=load_settings()))


# -- broker ------------------------------------------------------------------------------------------------------


def run_broker(*, settings: Settings) -> int:
    """Run the embedded broker in the foreground until SIGINT/SIGTERM."""
    from app.broker import start_broker, stop

    address, port = broker_bind(settings)
    try:
        proc = start_broker(address, port)
    except RuntimeError as exc:
        _fail(str(exc), EXIT_FAILURE)
    log.info("embedded broker (Tansu, memory storage) listening on %s:%d", address, port)
    stopping = False

    def on_signal(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not stopping and proc.poll() is None:
        time.sleep(0.2)
    stop(proc)
    return EXIT_OK


@main.command()
@_guard
def broker() -> None:
    """Run the embedded Kafka-protocol broker (Tansu, memory only) on the host and port of CALLPULSE_BROKER."""
    sys.exit(run_broker(settings=load_settings()))


# -- produce -----------------------------------------------------------------------------------------------------


async def produce_lines(settings: Settings, lines: IO[bytes], batch: int) -> tuple[int, int, int]:
    """Send JSON Lines to calls.events, keyed by call bucket, ``batch`` events of one bucket per message.

    A line that is not JSON is sent as it is (the worker dead-letters it with its reason) and reported.
    Returns (messages, events, bad lines).
    """
    producer = await EventProducer.start(settings, batch)
    bad = 0
    try:
        for number, line in enumerate(lines, 1):
            line = line.strip()
            if not line:
                continue
            try:
                value = orjson.loads(line)
            except orjson.JSONDecodeError:
                bad += 1
                log.warning("line %d is not JSON; sent as it is, for the dead-letter topic", number)
                await producer.add_raw(line)
                continue
            for item in value if isinstance(value, list) else [value]:
                await producer.add(item)
        await producer.flush()
        await producer.drain()
    finally:
        await producer.stop()
    return producer.messages, producer.events, bad


def run_produce(*, settings: Settings, source: str, batch: int) -> int:
    """Send the JSON Lines of ``source`` (``-``: stdin) to calls.events and report the counts.

    ``batch`` events of one call bucket go in one message.
    """
    stream = sys.stdin.buffer if source == "-" else open(source, "rb")
    try:
        messages, events, bad = asyncio.run(produce_lines(settings, stream, batch))
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()
    click.echo(
        f"produced {events} events in {messages} messages to {TOPIC_EVENTS}"
        + (f"; {bad} lines were not JSON" if bad else ""),
        err=True,
    )
    return EXIT_OK


@main.command()
@click.argument("source", metavar="FILE|-")
@click.option(
    "--batch",
    type=click.IntRange(1, 10_000),
    default=100,
    show_default=True,
    help="Events per message (one call bucket per message); 1 sends single-event messages.",
)
@_guard
def produce(source: str, batch: int) -> None:
    """Send canonical events from a JSON Lines file (or - for stdin) to calls.events."""
    if source != "-" and not Path(source).is_file():
        _fail(f"{source} is not a readable file.", EXIT_USAGE)
    sys.exit(run_produce(settings=load_settings(), source=source, batch=batch))


# -- ingest ------------------------------------------------------------------------------------------------------


def run_ingest_queue_log(
    *,
    settings: Settings,
    path: Path,
    follow: bool,
    speed: float,
    fmt: str | None,
    state: Path | None,
    members: dict[str, str] | None = None,
) -> int:
    """Read the queue_log at ``path`` into calls.events once, or follow it until SIGINT/SIGTERM; report.

    Following keeps its position in ``state``.
    """
    from app.ingest import QueueLogIngest

    ingest = QueueLogIngest(settings, path, fmt, speed, state if follow else None, members)
    if not follow:
        report = asyncio.run(ingest.read_once())
    else:
        loop = asyncio.new_event_loop()
        stop_event = asyncio.Event()
        loop.add_signal_handler(signal.SIGINT, stop_event.set)
        loop.add_signal_handler(signal.SIGTERM, stop_event.set)
        try:
            report = loop.run_until_complete(ingest.follow(stop_event))
        finally:
            loop.close()
    click.echo(report.summary(str(path)), err=True)
    return EXIT_OK


@main.group()
def ingest() -> None:
    """Read other systems' logs into calls.events."""


@ingest.command("asterisk-queue-log")
@click.argument("path", metavar="FILE", type=click.Path(path_type=Path))
@click.option(
    "--follow", is_flag=True, help="Keep reading as the file grows, across rotation and truncation."
)
@click.option(
    "--speed",
    type=click.FloatRange(0),
    default=0,
    show_default=True,
    help="Replay at this many times real time (0: as fast as the broker takes it).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["native", "qm-csv"]),
    default=None,
    help="native pipe format or the QueueMetrics CSV export (default: detected).",
)
@click.option(
    "--state",
    type=click.Path(path_type=Path),
    default=None,
    help="With --follow: where the position is kept (default FILE.callpulse-state).",
)
@click.option(
    "--member",
    "members",
    multiple=True,
    metavar="INTERFACE=NAME",
    help="The agent a member interface is (ADDMEMBER/REMOVEMEMBER name the interface); repeatable.",
)
@_guard
def asterisk_queue_log(
    path: Path, follow: bool, speed: float, fmt: str | None, state: Path | None, members: tuple[str, ...]
) -> None:
    """Read an Asterisk queue_log (native or QueueMetrics CSV) into calls.events."""
    if not follow and not path.is_file():
        _fail(f"{path} is not a readable file.", EXIT_USAGE)
    names: dict[str, str] = {}
    for member in members:
        interface, sep, name = member.partition("=")
        if not sep or not interface.strip() or not name.strip():
            _fail(
                f"--member {member!r} is not INTERFACE=NAME (for example Local/104@agents/n=Dave).",
                EXIT_USAGE,
            )
        names[interface.strip()] = name.strip()
    state = state or path.with_name(path.name + ".callpulse-state")
    sys.exit(
        run_ingest_queue_log(
            settings=load_settings(),
            path=path,
            follow=follow,
            speed=speed,
            fmt=fmt,
            state=state,
            members=names,
        )
    )


# -- simulate ----------------------------------------------------------------------------------------------------


def simulation(
    *,
    profile: str | None,
    seed: int,
    start_ms: int,
    hours: float | None,
    calls_per_hour: float | None,
    agents: int | None,
    aht: float | None,
    patience: float | None,
    scale: float = 1.0,
) -> Iterator[dict]:
    """The simulator's events: a profile, or the plain Erlang-A queue when its four parameters are given."""
    from streams.simulator import ErlangAConfig, ProfileSimulator, erlang_a, load_profile

    rng = random.Random(seed)
    if profile is not None:
        return ProfileSimulator(load_profile(profile), rng, start_ms, hours, scale=scale, seed=seed).run()
    config = ErlangAConfig(calls_per_hour, agents, aht, patience, hours)  # type: ignore[arg-type]
    return erlang_a(config, rng, start_ms, seed)


async def send_events(
    settings: Settings, events: Iterator[dict], speed: float, stop: asyncio.Event | None = None
) -> int:
    """Send events to calls.events, paced at ``speed`` times real time (0: as fast as possible)."""
    producer = await EventProducer.start(settings, 100 if not speed else 20)
    pacer = Pacer(speed)
    try:
        for event in events:
            if stop is not None and stop.is_set():
                break
            await pacer.wait(event["ts"], producer)
            await producer.add(event)
        await producer.flush()
        await producer.drain()
    finally:
        await producer.stop()
    return producer.events


def run_simulate(*, settings: Settings | None, out: Path | None, speed: float, events: Iterator[dict]) -> int:
    """Write the simulated events to ``out`` as JSON Lines, or send them to calls.events until SIGINT/SIGTERM.

    Either way paced at ``speed`` times real time (0: as fast as possible), and the count reported.
    """
    if out is not None:
        n = 0
        origin: tuple[float, float] | None = None
        with out.open("wb") as f:
            for event in events:
                if speed:
                    origin = origin or (event["ts"], time.monotonic())
                    delay = origin[1] + (event["ts"] - origin[0]) / speed - time.monotonic()
                    if delay > 0:
                        f.flush()
                        time.sleep(delay)
                f.write(orjson.dumps(event) + b"\n")
                n += 1
        click.echo(f"wrote {n} events to {out}", err=True)
        return EXIT_OK
    assert settings is not None
    loop = asyncio.new_event_loop()
    stop_event = asyncio.Event()
    loop.add_signal_handler(signal.SIGINT, stop_event.set)
    loop.add_signal_handler(signal.SIGTERM, stop_event.set)
    try:
        n = loop.run_until_complete(send_events(settings, events, speed, stop_event))
    finally:
        loop.close()
    click.echo(f"produced {n} events to {TOPIC_EVENTS}", err=True)
    return EXIT_OK


@main.command()
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write JSON Lines here instead of producing to calls.events (no broker needed).",
)
@click.option(
    "--seed", type=int, default=1, show_default=True, help="Random seed: the same seed, the same events."
)
@click.option(
    "--speed",
    type=click.FloatRange(0),
    default=None,
    help="Times real time; 0 as fast as possible. Default: 1 to Kafka, 0 with --out.",
)
@click.option(
    "--profile",
    type=click.Choice(["bank", "lively"]),
    default=None,
    help="Rich traffic calibrated on the Anonymous Bank data (bank), or steady daytime traffic (lively).",
)
@click.option(
    "--scale",
    type=click.FloatRange(0.001),
    default=1.0,
    show_default=True,
    help="Profile arrival-rate multiplier.",
)
@click.option(
    "--calls-per-hour", type=click.FloatRange(0, min_open=True), default=None, help="Erlang-A: arrival rate."
)
@click.option("--agents", type=click.IntRange(1), default=None, help="Erlang-A: agents.")
@click.option(
    "--aht",
    type=click.FloatRange(0, min_open=True),
    default=None,
    help="Erlang-A: mean handle time, seconds.",
)
@click.option(
    "--patience",
    type=click.FloatRange(0, min_open=True),
    default=None,
    help="Erlang-A: mean patience, seconds.",
)
@click.option(
    "--hours",
    type=click.FloatRange(0, min_open=True),
    default=None,
    help="Simulated hours of arrivals (default: 24 with --out or Erlang-A, endless for a profile to Kafka).",
)
@click.option("--start", "start_at", default=None, help="Event time of the start, RFC 3339 (default: now).")
@_guard
def simulate(
    out: Path | None,
    seed: int,
    speed: float | None,
    profile: str | None,
    scale: float,
    calls_per_hour: float | None,
    agents: int | None,
    aht: float | None,
    patience: float | None,
    hours: float | None,
    start_at: str | None,
) -> None:
    """Simulate a contact center: a plain Erlang-A queue, or a calibrated profile."""
    erlang = (calls_per_hour, agents, aht, patience)
    if profile is None and None in erlang:
        _fail("give --profile NAME, or all of --calls-per-hour, --agents, --aht and --patience.", EXIT_USAGE)
    if profile is not None and any(v is not None for v in erlang):
        _fail("--profile and the Erlang-A parameters exclude each other.", EXIT_USAGE)
    start_ms = int(time.time() // 60 * 60_000)
    if start_at is not None:
        from streams.exceptions import EventValidationError
        from streams.validation import parse_timestamp

        try:
            start_ms = parse_timestamp(start_at)
        except EventValidationError as exc:
            _fail(f"--start {exc.error}.", EXIT_USAGE)
    if hours is None and (out is not None or profile is None):
        hours = 24.0
    events = simulation(
        profile=profile,
        seed=seed,
        start_ms=start_ms,
        hours=hours,
        calls_per_hour=calls_per_hour,
        agents=agents,
        aht=aht,
        patience=patience,
        scale=scale,
    )
    if speed is None:
        speed = 0.0 if out is not None else 1.0
    settings = None if out is not None else load_settings()
    sys.exit(run_simulate(settings=settings, out=out, speed=speed, events=events))


# -- dev ---------------------------------------------------------------------------------------------------------


#: Arrivals per hour of the ``lively`` profile at scale 1 (the sum of its queues' Monday peaks).
def _lively_scale(calls_per_minute: float) -> float:
    from streams.simulator import load_profile

    base = sum(max(q["arrivals_per_hour"][0]) for q in load_profile("lively")["queues"].values())
    return calls_per_minute * 60 / base


async def _dev_traffic(settings: Settings, stop: asyncio.Event, calls_per_minute: float) -> None:
    events = simulation(
        profile="lively",
        seed=random.randrange(10**6),
        start_ms=int(time.time() * 1000),
        hours=None,
        calls_per_hour=None,
        agents=None,
        aht=None,
        patience=None,
        scale=_lively_scale(calls_per_minute),
    )
    await send_events(settings, events, 1.0, stop)


def _wait_for_worker(url: str, proc: subprocess.Popen, timeout_s: float) -> None:
    """Until the worker answers ``url`` (or exits, or ``timeout_s`` passes: the addresses are printed anyway)."""
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=2):  # loopback, our own worker
                return
        except OSError:
            time.sleep(0.3)


def run_dev(*, settings: Settings, calls_per_minute: float) -> int:
    """The embedded broker, a worker and live traffic; Ctrl-C stops everything."""
    from app.broker import port_open, start_broker, stop

    address, port = broker_bind(settings)
    broker_proc = None
    if port_open(address, port):
        log.info("a broker already listens on %s:%d; using it", address, port)
    else:
        broker_proc = start_broker(address, port)
        log.info("embedded broker listening on %s:%d", address, port)
    env = dict(os.environ, CALLPULSE_BROKER=f"kafka://{address}:{port}")
    # The worker's own log (Faust's start-up banner and all) goes to a file, unless CALLPULSE_LOG_LEVEL asks for
    # it in the terminal; the addresses are printed once the worker answers, so they are the last lines shown.
    worker_log = None
    if "CALLPULSE_LOG_LEVEL" not in os.environ:
        Path(settings.datadir).mkdir(parents=True, exist_ok=True)
        worker_log = open(Path(settings.datadir) / "worker.log", "ab")  # open while the worker runs
    worker_proc = subprocess.Popen(
        [sys.executable, "-m", "app", "worker"],
        env=env,
        start_new_session=True,
        stdout=worker_log,
        stderr=subprocess.STDOUT if worker_log is not None else None,
    )
    base = f"http://{settings.web_host}:{settings.web_port}"
    _wait_for_worker(f"{base}/metrics", worker_proc, timeout_s=120)
    where = f"  worker log: {Path(settings.datadir) / 'worker.log'}\n" if worker_log is not None else ""
    click.echo(
        f"\ncallpulse dev is running. Ctrl-C stops it.\n{where}  broker:   kafka://{address}:{port}\n"
        f"  metrics:  {base}/metrics\n  API:      {base}/api/v1/queues\n  floor:    {base}/\n"
    )
    stop_event = asyncio.Event()
    loop = asyncio.new_event_loop()
    traffic = loop.create_task(_dev_traffic(settings, stop_event, calls_per_minute))
    loop.add_signal_handler(signal.SIGINT, stop_event.set)
    loop.add_signal_handler(signal.SIGTERM, stop_event.set)

    async def watch() -> None:
        while not stop_event.is_set():
            if worker_proc.poll() is not None:
                log.error("the worker exited with code %s", worker_proc.returncode)
                stop_event.set()
            await asyncio.sleep(0.5)

    try:
        loop.run_until_complete(asyncio.gather(traffic, watch()))
    finally:
        click.echo("stopping...", err=True)
        stop(worker_proc, timeout_s=15)
        if broker_proc is not None:
            stop(broker_proc)
        if worker_log is not None:
            worker_log.close()
        loop.close()
    return EXIT_OK if worker_proc.returncode in (0, -signal.SIGTERM) else EXIT_FAILURE


@main.command()
@click.option(
    "--calls-per-minute",
    type=click.FloatRange(0.1, 100_000),
    default=30,
    show_default=True,
    help="Arrival rate of the generated traffic.",
)
@_guard
def dev(calls_per_minute: float) -> None:
    """Run everything on this machine: embedded broker, a worker, and live traffic."""
    sys.exit(run_dev(settings=load_settings(), calls_per_minute=calls_per_minute))
