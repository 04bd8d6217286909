"""Start `python -m predictor` on free loopback ports for the benchmark, and stop it."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx


@dataclass
class LocalServer:
    http: str  # host:port
    grpc: str  # host:port
    pid: int
    log: Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(
    model_path: Path, model_name: str, args: Sequence[str], timeout: float = 600
) -> Iterator[LocalServer]:
    http_port, grpc_port = free_port(), free_port()
    log = Path(tempfile.mkstemp(prefix="bench-server-", suffix=".log")[1])
    command = [
        sys.executable,
        "-m",
        "predictor",
        "--model_dir",
        str(model_path),
        "--model_name",
        model_name,
        "--http_port",
        str(http_port),
        "--grpc_port",
        str(grpc_port),
        *args,
    ]
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        server = LocalServer(f"127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", process.pid, log)
        try:
            _wait_ready(server, process, model_name, timeout)
            yield server
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_ready(
    server: LocalServer, process: subprocess.Popen, model_name: str, timeout: float
) -> None:
    url = f"http://{server.http}/v2/models/{model_name}/ready"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"the server exited with {process.returncode}:\n{server.log.read_text()[-4000:]}"
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    raise TimeoutError(f"server not ready after {timeout}s:\n{server.log.read_text()[-4000:]}")
