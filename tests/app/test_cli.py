"""The command line: run functions get their arguments; bad input is one sentence and an exit code."""

import os
import subprocess
import sys
from unittest import mock

from click.testing import CliRunner

from app import cli, producing


def run(*args, **env):
    full = {k: v for k, v in os.environ.items() if not k.startswith("CALLPULSE_")}
    full.update(env)
    return subprocess.run([sys.executable, "-m", "app", *args], env=full, capture_output=True, timeout=60)


def test_a_bad_setting_is_one_sentence_and_exit_2():
    result = run("worker", CALLPULSE_GRACE="soon")
    assert result.returncode == cli.EXIT_USAGE
    assert result.stderr.decode().strip() == "callpulse: CALLPULSE_GRACE must be a number, not 'soon'."


def test_an_unreachable_broker_is_one_sentence_and_exit_3():
    with mock.patch(
        "app.kafka._admin", side_effect=cli.BrokerUnavailable("cannot reach the Kafka broker at x:1")
    ):
        result = CliRunner().invoke(
            cli.main, ["produce", "-"], input=b"{}\n", env={"CALLPULSE_CALLER_KEY": "k"}
        )
    assert result.exit_code == cli.EXIT_UNAVAILABLE
    assert "cannot reach the Kafka broker at x:1. Start one with `callpulse broker`" in result.output


def test_a_missing_compression_codec_stops_the_worker_with_one_sentence():
    from app import kafka

    codecs = dict(kafka.CODECS, snappy=lambda: False, zstd=lambda: False)
    with mock.patch.dict(kafka.CODECS, codecs), mock.patch("app.kafka.detect_embedded") as detect:
        result = CliRunner().invoke(cli.main, ["worker"], env={"CALLPULSE_CALLER_KEY": "k"})
    assert result.exit_code == cli.EXIT_FAILURE
    assert result.output.strip() == (
        "callpulse: this installation cannot read Kafka's snappy, zstd compression "
        "(aiokafka needs the cramjam package: pip install 'aiokafka[snappy,lz4,zstd]')."
    )
    detect.assert_not_called()  # stopped before reaching for the broker


def test_this_installation_reads_every_kafka_codec():
    from app import kafka

    kafka.check_codecs()
    assert sorted(kafka.CODECS) == ["gzip", "lz4", "snappy", "zstd"]


def test_a_missing_file_is_one_sentence():
    result = run("produce", "/nonexistent.jsonl", CALLPULSE_CALLER_KEY="k")
    assert result.returncode == cli.EXIT_USAGE
    assert result.stderr.decode().strip() == "callpulse: /nonexistent.jsonl is not a readable file."


def test_produce_passes_its_options():
    with mock.patch.object(cli, "run_produce", return_value=0) as run_produce:
        result = CliRunner().invoke(
            cli.main, ["produce", "--batch", "7", "-"], env={"CALLPULSE_CALLER_KEY": "k"}
        )
    assert result.exit_code == 0
    assert run_produce.call_args.kwargs["source"] == "-" and run_produce.call_args.kwargs["batch"] == 7


def test_message_keys_are_call_buckets():
    import zlib

    assert producing.message_key({"call_id": "c1"}) == str(zlib.crc32(b"c1") % 256).encode()
    assert (
        producing.message_key({"agent": "a7", "type": "agent_state"}) == str(zlib.crc32(b"a7") % 256).encode()
    )
    assert producing.message_key({"type": "queue"}) == b"_unroutable"
    assert producing.message_key([1]) == b"_unroutable"


def test_simulate_needs_a_profile_or_every_erlang_a_parameter(tmp_path):
    result = run("simulate", "--agents", "3", "--out", str(tmp_path / "x.jsonl"))
    assert result.returncode == cli.EXIT_USAGE
    assert result.stderr.decode().strip() == (
        "callpulse: give --profile NAME, or all of --calls-per-hour, --agents, --aht and --patience."
    )
    result = run("simulate", "--profile", "bank", "--agents", "3", "--out", str(tmp_path / "x.jsonl"))
    assert (
        result.stderr.decode().strip()
        == "callpulse: --profile and the Erlang-A parameters exclude each other."
    )


def test_simulate_to_a_file_is_deterministic(tmp_path):
    args = [
        "simulate",
        "--calls-per-hour",
        "120",
        "--agents",
        "2",
        "--aht",
        "60",
        "--patience",
        "30",
        "--hours",
        "1",
        "--seed",
        "9",
        "--start",
        "2026-01-01T00:00:00Z",
    ]
    assert run(*args, "--out", str(tmp_path / "a.jsonl")).returncode == 0
    assert run(*args, "--out", str(tmp_path / "b.jsonl")).returncode == 0
    a = (tmp_path / "a.jsonl").read_bytes()
    assert a == (tmp_path / "b.jsonl").read_bytes() and a.count(b'"type":"queue"') > 60  # Poisson(120): > 60


def test_the_worker_logs_at_its_level_without_turning_the_root_logger_to_debug():
    # Faust's spinner would set the root logger to DEBUG at level warning: every debug call of Faust and
    # aiokafka would then build a record.
    import asyncio
    import logging

    import faust

    loop = asyncio.new_event_loop()
    root = logging.getLogger()
    saved = root.level, list(root.handlers)
    try:
        worker = cli.make_worker(faust.App("log-test", autodiscover=False), "warning", loop)
        worker._setup_logging()
        assert root.level == logging.WARNING
        assert not logging.getLogger("aiokafka").isEnabledFor(logging.DEBUG)
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]
        loop.close()
