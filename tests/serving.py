"""Start the real `python -m predictor` server on free loopback ports for tests."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Server:
    http_url: str  # http://127.0.0.1:PORT
    grpc_target: str  # 127.0.0.1:PORT
    process: subprocess.Popen
    model_name: str = "yolov5"

    @property
    def http_host(self) -> str:
        return self.http_url.removeprefix("http://")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(
    model_dir: Path, *args: str, model_name: str = "yolov5", timeout: float = 120
) -> Iterator[Server]:
    http_port, grpc_port = free_port(), free_port()
    log = open(model_dir.parent / f"server-{http_port}.log", "wb")  # noqa: SIM115
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "predictor",
            "--model_dir",
            str(model_dir),
            "--model_name",
            model_name,
            "--http_port",
            str(http_port),
            "--grpc_port",
            str(grpc_port),
            "--cache_dir",
            str(model_dir.parent / "export-cache"),
            *args,
        ],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = Server(f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", process, model_name)
    try:
        _wait_ready(server, timeout, Path(log.name))
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def _wait_ready(server: Server, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    url = f"{server.http_url}/v2/models/{server.model_name}/ready"
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"server exited with {server.process.returncode}:\n{log.read_text()}"
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.3)
    raise TimeoutError(f"server not ready after {timeout}s:\n{log.read_text()}")
