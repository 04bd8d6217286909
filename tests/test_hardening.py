"""Limits, hostile input, malicious checkpoints, graceful shutdown, metrics and logs."""

from __future__ import annotations

import base64
import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from predictor import soak
from tests.serving import REPO, Server, running_server
from tests.support import save_detecting_checkpoint

LIMITS = ["--max_request_bytes", "300000", "--max_images", "3", "--max_image_pixels", "1000000"]


def jpeg(height: int = 120, width: int = 160) -> bytes:
    image = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    return cv2.imencode(".jpg", image)[1].tobytes()


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (a decompression bomb's calling card)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def v2_body(*images: bytes, **extra) -> dict:
    data = [base64.b64encode(b).decode() for b in images]
    return {
        "inputs": [{"name": "image", "shape": [len(data)], "datatype": "BYTES", "data": data}],
        **extra,
    }


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("hardening")
    save_detecting_checkpoint(directory / "model.pt", nc=2, names=["a", "b"])
    return directory


@pytest.fixture(scope="module")
def server(model_dir: Path) -> Iterator[Server]:
    with running_server(model_dir, "--img_size", "128", *LIMITS) as server:
        yield server


def infer(server: Server, body: dict | bytes, **kwargs) -> httpx.Response:
    url = f"{server.http_url}/v2/models/yolov5/infer"
    if isinstance(body, bytes):
        return httpx.post(url, content=body, timeout=30, **kwargs)
    return httpx.post(url, json=body, timeout=30, **kwargs)


def assert_still_serving(server: Server) -> None:
    response = infer(server, v2_body(jpeg()))
    assert response.status_code == 200, response.text


# -- limits ----------------------------------------------------------------------------


def test_body_over_limit_is_413(server: Server) -> None:
    response = infer(server, v2_body(jpeg(), b"x" * 400_000))
    assert response.status_code == 413
    assert "--max_request_bytes=300000" in response.json()["error"]
    assert_still_serving(server)


def test_too_many_images_is_413(server: Server) -> None:
    response = infer(server, v2_body(*[jpeg(32, 32)] * 4))
    assert response.status_code == 413
    assert "--max_images=3" in response.json()["error"]


def test_decompression_bomb_is_refused_from_its_header(server: Server) -> None:
    started = time.monotonic()
    response = infer(server, v2_body(png_header_only(60000, 60000)))
    assert response.status_code == 413
    assert "60000" in response.json()["error"] or "bomb" in response.json()["error"]
    assert time.monotonic() - started < 5
    response = infer(server, v2_body(png_header_only(2000, 2000)))
    assert response.status_code == 413
    assert "--max_image_pixels=1000000" in response.json()["error"]
    assert_still_serving(server)


def test_raw_pixels_over_limit_are_413(server: Server) -> None:
    pixels = np.zeros((1, 1100, 1000, 3), np.uint8)
    body = {
        "inputs": [{"name": "image", "shape": list(pixels.shape), "datatype": "UINT8", "data": [0]}]
    }
    # shape disagrees with data: a 400, not a crash
    assert infer(server, body).status_code == 400
    assert_still_serving(server)


# -- hostile input ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b'{"inputs": [', 400, ""),
        (b"{}", 400, "inputs"),
        (v2_body(jpeg()[:-200]), 400, "truncated"),
        (v2_body(b""), 400, "empty"),
        (v2_body(b"GIF89a not really"), 400, "decodable"),
        (v2_body(jpeg(), parameters={"conf_threshold": "NaN"}), 400, "conf_threshold"),
    ],
)
def test_hostile_input_gets_a_clear_4xx(server: Server, body, status, message) -> None:
    response = infer(server, body, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    assert message in response.text


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(
                st.sampled_from(["inputs", "name", "shape", "datatype", "data", "parameters", "x"]),
                children,
                max_size=5,
            )
        ),
        max_leaves=20,
    )
)
def test_fuzzed_bodies_never_cause_5xx(server: Server, body) -> None:
    response = infer(server, json.dumps(body).encode())
    assert response.status_code < 500, (body, response.text)


def test_server_still_serves_after_the_fuzzing(server: Server) -> None:
    assert_still_serving(server)


# -- observability ---------------------------------------------------------------------


def test_request_id_is_returned_and_logged(server: Server) -> None:
    response = infer(server, v2_body(jpeg()), headers={"x-request-id": "req-42"})
    assert response.headers["x-request-id"] == "req-42"
    generated = infer(server, v2_body(jpeg())).headers["x-request-id"]
    assert len(generated) == 32
    log = server.log.read_text()
    entries = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    access = [e for e in entries if e.get("request_id") == "req-42"]
    assert access and access[0]["status"] == 200 and access[0]["path"].endswith("/infer")
    assert base64.b64encode(jpeg()).decode()[:40] not in log, "image data leaked into logs"


def test_prometheus_metrics(server: Server) -> None:
    infer(server, v2_body(jpeg()))
    infer(server, v2_body(b"not an image"))
    text = httpx.get(f"{server.http_url}/metrics").text
    for needle in (
        'yolov5_inference_requests_total{model="yolov5",outcome="ok"}',
        'yolov5_inference_requests_total{model="yolov5",outcome="invalid"}',
        'yolov5_stage_seconds_bucket{le="0.001",model="yolov5",stage="decode"}',
        'stage="inference"',
        'stage="preprocess"',
        'stage="postprocess"',
        "yolov5_batch_size_bucket",
        'yolov5_queue_depth{model="yolov5"}',
        'yolov5_images_total{model="yolov5"}',
        'yolov5_model_info{classes="a,b",device="cpu"',
        'yolov5_http_requests_total{path="/v2/models/{name}/infer",status="413"}',
    ):
        assert needle in text, needle


# -- soak (short version; the full one is `python -m predictor.soak --duration 600`) ---


def test_short_soak_has_no_unexpected_responses(server: Server) -> None:
    report = soak.asyncio.run(
        soak.soak(server.http_url, "yolov5", concurrency=16, duration=15, image=jpeg(240, 320))
    )
    assert sum(report.sent.values()) > 50
    assert not report.unexpected, report.unexpected
    assert report.rss_growth is not None and report.rss_growth < 0.05


# -- lifecycle -------------------------------------------------------------------------


def test_sigterm_drains_in_flight_requests_then_exits_0(model_dir: Path) -> None:
    with running_server(model_dir, "--img_size", "640") as server:
        big = v2_body(
            *[cv2.imencode(".png", np.full((900, 1200, 3), 90, np.uint8))[1].tobytes()] * 8
        )
        results: dict[str, httpx.Response] = {}
        worker = threading.Thread(target=lambda: results.setdefault("r", infer(server, big)))
        worker.start()
        time.sleep(1.0)
        server.process.send_signal(signal.SIGTERM)
        worker.join(timeout=60)
        assert results["r"].status_code == 200
        assert server.process.wait(timeout=60) == 0


def run_with_kserve(script: str) -> None:
    """Run `script` in a child process: kserve's and tritonclient's V2 protos cannot share
    one, and tritonclient is imported in this one."""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=300
    )
    assert done.stdout.strip().endswith("ok"), done.stdout + done.stderr


def test_a_draining_model_is_not_loaded_again(model_dir: Path) -> None:
    """kserve's DataPlane.get_model calls load(), on the event loop, on a model that is not
    ready: ours while it drains for shutdown. That must not build a second set of engines
    (seconds of a blocked event loop, threads and memory never freed) nor undo the drain."""
    run_with_kserve(
        f"""
import asyncio, threading
from pathlib import Path
from kserve.model_repository import ModelRepository
from kserve.protocol.dataplane import DataPlane
from predictor.server.model import ModelVersion, ServingOptions, YoloV5Model

spec = ModelVersion("1", Path({str(model_dir / "model.pt")!r}), ServingOptions(img_size=64))
model = YoloV5Model("m", [spec])
model.load()
loaded, threads = model.versions["1"], threading.active_count()
model.ready = False  # SIGTERM received
repository = ModelRepository()
repository.update(model)
assert asyncio.run(DataPlane(repository).get_model("m")) is model
assert model.versions["1"] is loaded, "loaded again"
assert threading.active_count() == threads and not model.ready
print("ok")
"""
    )


def test_grpc_reports_a_model_that_is_not_ready_as_unavailable() -> None:
    run_with_kserve(
        """
import asyncio
from grpc import StatusCode
from kserve.errors import ModelNotReady
from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor
from predictor.server import kserve_fixes

class Context:
    async def abort(self, code, details):
        self.aborted = (code, details)

kserve_fixes.apply()
context = Context()
asyncio.run(
    ExceptionToStatusInterceptor().handle_exception(ModelNotReady("m"), None, context, "Infer")
)
assert context.aborted == (StatusCode.UNAVAILABLE, "Model with name m is not ready."), context
print("ok")
"""
    )


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_checkpoint_stops_startup_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    model_dir = tmp_path / "models"
    model_dir.mkdir()
    torch.save({"model": None, "opt": {"x": _Exploit(marker)}}, model_dir / "evil.pt")
    result = subprocess.run(
        [sys.executable, "-m", "predictor", "--model_dir", str(model_dir)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "evil.pt" in result.stderr and "system" in result.stderr
    assert not marker.exists()


@pytest.mark.parametrize(("content", "reason"), [(b"", "not a readable"), (b"PK\x03\x04", "")])
def test_broken_checkpoint_is_one_clear_line(tmp_path: Path, content: bytes, reason: str) -> None:
    (tmp_path / "broken.pt").write_bytes(content)
    result = subprocess.run(
        [sys.executable, "-m", "predictor", "--model_dir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "broken.pt" in error_lines[0] and reason in error_lines[0]


def test_no_or_several_checkpoints_is_a_startup_error(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "predictor", "--model_dir", str(tmp_path)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "found no checkpoint" in result.stderr
    for name in ("a.pt", "b.pt"):
        (tmp_path / name).write_bytes(b"")
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "found 2 checkpoint files (a.pt, b.pt)" in result.stderr
