"""The real `python -m predictor` on free loopback ports, for tests."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from predictor.bench.server import LocalServer, serve, serve_command

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
    with serve_command(args, model_name, timeout, log_dir, cwd=REPO) as local:
        yield Server(local, model_name)
