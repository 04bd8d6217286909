"""Start `python -m predictor` on free loopback ports (for the benchmark and the tests),
wait until its model is ready, and stop it."""

from __future__ import annotations

import contextlib
import signal
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
    process: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """The server's process stopped (SIGSTOP) meanwhile: not one of its threads runs."""
        self.process.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            self.process.send_signal(signal.SIGCONT)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(
    model_path: Path,
    model_name: str,
    args: Sequence[str],
    timeout: float = 600,
    log_dir: Path | None = None,
) -> Iterator[LocalServer]:
    """Serve `model_path` as `model_name`; see `serve_command`."""
    command = ["--model_dir", str(model_path), "--model_name", model_name, *args]
    with serve_command(command, model_name, timeout, log_dir) as server:
        yield server


@contextlib.contextmanager
def serve_command(
    args: Sequence[str],
    ready_model: str,
    timeout: float = 600,
    log_dir: Path | None = None,
    cwd: Path | None = None,
) -> Iterator[LocalServer]:
    """`python -m predictor ARGS` on free ports, ready once `ready_model` is. The server's
    output goes to `log_dir/server-<http port>.log` (default: a temp file)."""
    http_port, grpc_port = free_port(), free_port()
    if log_dir is None:
        log = Path(tempfile.mkstemp(prefix="bench-server-", suffix=".log")[1])
    else:
        log = log_dir / f"server-{http_port}.log"
    command = [sys.executable, "-m", "predictor", *args]
    command += ["--http_port", str(http_port), "--grpc_port", str(grpc_port)]
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, cwd=cwd)
        server = LocalServer(f"127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", process, log)
        try:
            _wait_ready(server, process, ready_model, timeout)
            yield server
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


class ServerExited(RuntimeError):
    """The server stopped before it was ready (a refused model: its log says why)."""

    def __init__(self, code: int, log_tail: str) -> None:
        super().__init__(f"the server exited with {code}:\n{log_tail}")
        self.code = code
        self.log_tail = log_tail


def _wait_ready(
    server: LocalServer, process: subprocess.Popen, model_name: str, timeout: float
) -> None:
    url = f"http://{server.http}/v2/models/{model_name}/ready"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerExited(process.returncode, server.log.read_text()[-4000:])
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    raise TimeoutError(f"server not ready after {timeout}s:\n{server.log.read_text()[-4000:]}")
