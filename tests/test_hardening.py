"""Limits, hostile input, malicious checkpoints, graceful shutdown, metrics and logs."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.utils import InferenceServerException

from predictor import soak
from tests.serving import REPO, Server, running_server
from tests.support import jpeg, png_header_only, save_detecting_checkpoint, v2_body

INFERENCE_HEADER = "Inference-Header-Content-Length"
# Small enough that every limit is reachable under the body limit (raw pixels included).
LIMITS = ["--max_request_bytes", "300000", "--max_images", "3", "--max_image_pixels", "90000"]


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
    assert "--max_image_pixels=90000" in response.json()["error"]
    assert_still_serving(server)


def test_raw_pixels_over_limit_are_413(server: Server) -> None:
    """UINT8 pixels over --max_image_pixels, in the binary extension."""
    pixels = np.zeros((1, 301, 300, 3), np.uint8)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": list(pixels.shape),
                    "datatype": "UINT8",
                    "parameters": {"binary_data_size": pixels.nbytes},
                }
            ]
        }
    ).encode()
    body = header + pixels.tobytes()
    assert len(body) < 300_000  # under --max_request_bytes: the pixel limit refuses it
    response = infer(server, body, headers={INFERENCE_HEADER: str(len(header))})
    assert response.status_code == 413, response.text
    assert "300x301 = 90300 pixels, over --max_image_pixels=90000" in response.text
    assert_still_serving(server)


# -- hostile input ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b'{"inputs": [', 400, "not valid JSON"),
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
    assert message in response.json()["error"]


def log_entries(server: Server, start: int = 0) -> list[dict]:
    """The server's JSON log records from byte `start` on."""
    with server.log.open("rb") as log:
        log.seek(start)
        lines = log.read().decode(errors="replace").splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


def test_client_errors_are_logged_as_access_lines_not_errors(server: Server) -> None:
    """Every kind of 4xx: one INFO access line with the reason, no ERROR, no traceback."""
    start = server.log.stat().st_size
    url = server.http_url
    refused = [
        infer(server, b'{"inputs": ['),
        infer(server, v2_body(jpeg()[:-200])),
        infer(server, v2_body(b"GIF89a not really")),
        infer(server, v2_body(jpeg(), parameters={"classes": "unicorn"})),
        infer(server, v2_body(*[jpeg(32, 32)] * 4)),
        infer(server, v2_body(png_header_only(60000, 60000))),
        infer(server, v2_body(jpeg(), b"x" * 400_000)),
        infer(
            server, {"inputs": [{"name": "image", "shape": [1], "datatype": "FP32", "data": [1]}]}
        ),
        infer(server, v2_body(jpeg(), outputs=[{"name": "masks"}])),
        httpx.post(f"{url}/v2/models/nosuch/infer", json=v2_body(jpeg())),
        httpx.post(f"{url}/v2/models/yolov5/versions/9/infer", json=v2_body(jpeg())),
        httpx.post(f"{url}/v1/models/yolov5:predict", json={"instances": [{"image": 3}]}),
        httpx.post(f"{url}/v1/models/nosuch:predict", json={"instances": []}),
        httpx.get(f"{url}/v2/models/nosuch"),
        httpx.post(f"{url}/v2/repository/models/nosuch/load"),
        httpx.post(f"{url}/v2/repository/index", content=b"[1]"),
    ]
    assert all(400 <= r.status_code < 500 for r in refused), [r.status_code for r in refused]
    refuse_over_grpc(server)
    time.sleep(0.5)  # the log is written by another process
    entries = log_entries(server, start)
    assert not [e for e in entries if e["level"] in ("ERROR", "CRITICAL") or "exception" in e]
    access = [e for e in entries if e["logger"] == "predictor.access"]
    refused_lines = [e for e in access if str(e["status"]).startswith("4") or e.get("reason")]
    assert len(refused_lines) >= len(refused) + 2
    assert all(e["level"] == "INFO" and e["reason"] for e in refused_lines)


def refuse_over_grpc(server: Server) -> None:
    """gRPC refusals (tritonclient, no kserve in this process): a bad image, no such model."""
    client = grpcclient.InferenceServerClient(server.grpc_target)
    tensor = grpcclient.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([b"not an image"], dtype=object))
    for model in ("yolov5", "nosuch"):
        with pytest.raises(InferenceServerException):
            client.infer(model, [tensor])


def test_grpc_requests_are_limited_by_max_request_bytes(server: Server) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_target)
    tensor = grpcclient.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([b"x" * 400_000], dtype=object))
    with pytest.raises(InferenceServerException) as raised:
        client.infer("yolov5", [tensor])
    assert raised.value.status() == "StatusCode.RESOURCE_EXHAUSTED", raised.value
    assert "300000" in raised.value.message()


def test_another_kserve_is_refused_unless_allowed() -> None:
    run_with_kserve(
        """
from unittest import mock
from predictor.server import kserve_compat
kserve_compat.check_kserve_version()
with mock.patch.object(kserve_compat.metadata, "version", return_value="0.22.0"):
    try:
        kserve_compat.check_kserve_version()
        raise SystemExit("not refused")
    except kserve_compat.IncompatibleKServe as error:
        assert "kserve 0.22.0 is installed" in str(error)
        assert "--kserve_version_check off" in str(error)
    kserve_compat.check_kserve_version(allow_other=True)
print("ok")
"""
    )


@pytest.mark.parametrize("path", ["/v2/models/yolov5/infer", "/v1/models/yolov5:predict"])
def test_a_client_that_writes_its_whole_body_first_gets_the_413(server: Server, path) -> None:
    """urllib sends the whole body before it reads: the server must read the rest of an
    over-limit body before it answers, or the client sees a connection reset."""
    body = b"x" * (16 * 1024 * 1024)
    request = urllib.request.Request(
        server.http_url + path, data=body, headers={"Content-Type": "application/json"}
    )
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=60)
    assert raised.value.code == 413
    assert "--max_request_bytes=300000" in json.loads(raised.value.read())["error"]
    assert_still_serving(server)


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
        *(f'stage="{s}"' for s in ("queue_wait", "letterbox", "forward", "nms", "encode")),
        "yolov5_batch_size_bucket",
        'yolov5_inflight_images{model="yolov5"} 0.0',
        'yolov5_images_total{model="yolov5"}',
        'yolov5_model_info{backend="',
        'classes="a,b",device="cpu"',
        'yolov5_http_requests_total{path="/v2/models/{name}/infer",status="413"}',
    ):
        assert needle in text, needle


def test_inflight_images_count_requests_until_answered(server: Server) -> None:
    """The autoscaling signal: images admitted or waiting, until their answer is sent."""
    body = v2_body(*[jpeg()] * 3)

    def gauge() -> float:
        text = httpx.get(f"{server.http_url}/metrics").text
        [line] = [
            x for x in text.splitlines() if x.startswith('yolov5_inflight_images{model="yolov5"}')
        ]
        return float(line.split()[-1])

    done = threading.Event()

    def client() -> None:
        while not done.is_set():
            assert infer(server, body).status_code == 200

    workers = [threading.Thread(target=client) for _ in range(8)]
    for worker in workers:
        worker.start()
    try:
        seen = [gauge() for _ in range(40)]
    finally:
        done.set()
        for worker in workers:
            worker.join()
    assert max(seen) > 3 and all(value % 3 == 0 for value in seen), seen
    assert gauge() == 0


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
from predictor.server.model import ModelVersion, YoloV5Model
from predictor.server.options import ServingOptions

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
from predictor.server.kserve_compat import ErrorInterceptor

class Context:
    async def abort(self, code, details):
        self.aborted = (code, details)

context = Context()
asyncio.run(ErrorInterceptor().handle_exception(ModelNotReady("m"), None, context, "Infer"))
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
