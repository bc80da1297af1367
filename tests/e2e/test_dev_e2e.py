"""``callpulse dev``: broker, worker and traffic come up, KPIs show, and Ctrl-C (SIGINT) stops everything."""

import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.broker import port_open
from tests.e2e.conftest import free_port

pytestmark = pytest.mark.e2e


def test_dev_shows_live_kpis_and_stops_on_ctrl_c(tmp_path):
    broker_port, web_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLPULSE_")}
    env.update(
        CALLPULSE_BROKER=f"kafka://127.0.0.1:{broker_port}",
        CALLPULSE_WEB_PORT=str(web_port),
        CALLPULSE_CALLER_KEY="dev",
        CALLPULSE_DATADIR=str(tmp_path / "data"),
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "app", "dev", "--calls-per-minute", "600"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        entered = 0.0
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and entered == 0:
            time.sleep(0.5)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/metrics", timeout=5) as r:
                    text = r.read().decode()
            except OSError:
                continue
            entered = sum(
                s.value
                for f in text_string_to_metric_families(text)
                for s in f.samples
                if s.name == "callpulse_calls_entered_total"
            )
        assert entered > 0
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=40)
        assert proc.returncode == 0, out.decode()[-3000:]
        text = out.decode()
        assert f"http://127.0.0.1:{web_port}/metrics" in text
        # the floor page's address comes last, after start-up; Faust's own log stays in the worker's log file
        block = text[text.index("callpulse dev is running") :].split("\n\n")[0].splitlines()
        assert block[-1] == f"  floor:    http://127.0.0.1:{web_port}/"
        assert "[^Worker]" not in text
        assert "[^Worker]" in (tmp_path / "data" / "worker.log").read_text()
        assert not port_open("127.0.0.1", broker_port)
        assert not port_open("127.0.0.1", web_port)
    finally:
        if proc.poll() is None:
            proc.kill()
