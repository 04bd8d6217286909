"""The real `python -m predictor` on free loopback ports, for tests."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from predictor.bench.server import LocalServer, free_port, serve

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Server:
    local: LocalServer
    model_name: str = "yolov5"

    @property
    def http_url(self) -> str:  # http://127.0.0.1:PORT
        return f"http://{self.local.http}"

    @property
    def http_host(self) -> str:  # 127.0.0.1:PORT, as tritonclient.http takes it
        return self.local.http

    @property
    def grpc_target(self) -> str:
        return self.local.grpc

    @property
    def process(self):
        return self.local.process

    @property
    def log(self) -> Path:
        return self.local.log


@contextlib.contextmanager
def running_server(
    model_dir: Path, *args: str, model_name: str = "yolov5", timeout: float = 120
) -> Iterator[Server]:
    """Serve `model_dir`; the log and the export cache go beside it, not into the repo."""
    cache = ("--cache_dir", str(model_dir.parent / "export-cache"))
    with serve(model_dir, model_name, [*cache, *args], timeout, log_dir=model_dir.parent) as local:
        yield Server(local, model_name)


@contextlib.contextmanager
def running_command(
    *args: str, model_name: str, log_dir: Path, timeout: float = 120
) -> Iterator[Server]:
    """`python -m predictor ARGS` with nothing added but free ports (`running_server` always
    names the model); ready once `model_name` is."""
    http, grpc = free_port(), free_port()
    log = log_dir / f"server-{http}.log"
    command = [sys.executable, "-m", "predictor", *args]
    command += ["--http_port", str(http), "--grpc_port", str(grpc)]
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, cwd=REPO)
        local = LocalServer(f"127.0.0.1:{http}", f"127.0.0.1:{grpc}", process, log)
        try:
            _wait_ready(local, model_name, timeout)
            yield Server(local, model_name)
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_ready(local: LocalServer, model_name: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if local.process.poll() is not None:
            raise RuntimeError(f"the server exited:\n{local.log.read_text()[-4000:]}")
        with contextlib.suppress(httpx.HTTPError):
            ready = httpx.get(f"http://{local.http}/v2/models/{model_name}/ready", timeout=2)
            if ready.status_code == 200:
                return
        time.sleep(0.3)
    raise TimeoutError(f"not ready after {timeout}s:\n{local.log.read_text()[-4000:]}")
