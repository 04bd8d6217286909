"""`python -m predictor.bench`: drives a real server over gRPC and REST, measures the
in-process pipeline, checks detections, writes JSON and a PNG (behaviour, never timings)."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from predictor.bench import cli, load, pipeline
from predictor.bench.plot import plot
from predictor.bench.server import LocalServer
from tests.serving import REPO
from tests.support import random_image
from tests.test_backends import save_stable_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_stable_checkpoint(tmp_path_factory.mktemp("model") / "stable.pt")


@pytest.fixture(scope="module")
def image_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    directory = tmp_path_factory.mktemp("images")
    paths = []
    for i, (h, w) in enumerate([(150, 200), (240, 120)]):
        path = directory / f"image{i}.jpg"
        cv2.imwrite(str(path), random_image(h, w, i + 1))
        paths.append(path)
    return paths


def test_served_endpoint_over_grpc_and_rest(checkpoint, image_files, tmp_path, capsys) -> None:
    report, png = tmp_path / "bench.json", tmp_path / "bench.png"
    code = cli.main(
        [
            "--serve",
            "--model_dir",
            str(checkpoint),
            "--img_size",
            "128",
            "--cache_dir",
            str(tmp_path / "cache"),
            "--images",
            *map(str, image_files),
            "--protocol",
            "grpc,rest",
            "--concurrency",
            "1,3",
            "--requests",
            "6",
            "--warmup",
            "0",
            "--json",
            str(report),
            "--plot",
            str(png),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    data = json.loads(report.read_text())
    levels = {(lv["protocol"], lv["concurrency"]): lv for lv in data["levels"]}
    assert set(levels) == {("grpc", 1), ("grpc", 3), ("rest", 1), ("rest", 3)}
    for level in levels.values():
        assert level["requests"] == 6 and level["errors"] == 0
        assert level["p50_ms"] <= level["p90_ms"] <= level["p99_ms"]
        assert level["server_rss_peak_mb"] is None or level["server_rss_peak_mb"] > 0
    check = data["check"]
    assert check["images"] == 2 and check["detections"] > 0 and check["equal"] is True
    assert "server over grpc" in out and "server over rest" in out
    assert "served by: " in out and data["machine"]["served_by"]
    image = cv2.imread(str(png))
    assert image is not None and image.shape[2] == 3 and (image < 128).any()


def test_latency_is_sampled_alternately_in_process_and_served(
    checkpoint, image_files, tmp_path, capsys
) -> None:
    report = tmp_path / "interleaved.json"
    code = cli.main(
        [
            "--serve",
            "--in-process",
            "--model_dir",
            str(checkpoint),
            "--img_size",
            "64",
            "--cache_dir",
            str(tmp_path / "cache"),
            "--images",
            *map(str, image_files),
            "--protocol",
            "grpc,rest",
            "--concurrency",
            "1",
            "--duration",
            "0.5",
            "--warmup",
            "0",
            "--latency_seconds",
            "1",
            "--no_check",
            "--json",
            str(report),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    p50 = json.loads(report.read_text())["interleaved_p50_ms"]
    assert set(p50) == {"in_process", "grpc", "rest"} and all(v > 0 for v in p50.values())
    assert "(interleaved: " in out


def test_a_paused_server_runs_nothing(tmp_path) -> None:
    ticks = tmp_path / "ticks"
    script = (
        f"import time\nwhile True:\n    open({str(ticks)!r}, 'a').write('.')\n    time.sleep(0.01)"
    )
    process = subprocess.Popen([sys.executable, "-c", script])
    server = LocalServer("", "", process, tmp_path / "log")
    try:
        while not ticks.exists():
            time.sleep(0.05)
        with server.paused():
            time.sleep(0.2)  # a tick under way finishes
            before = ticks.stat().st_size
            time.sleep(0.5)
            assert ticks.stat().st_size == before
        time.sleep(0.5)
        assert ticks.stat().st_size > before
    finally:
        process.kill()
        process.wait()


def test_in_process_limits_and_forward_ceiling(checkpoint, image_files, tmp_path, capsys) -> None:
    report = tmp_path / "in-process.json"
    code = cli.main(
        [
            "--in-process",
            "--model_dir",
            str(checkpoint),
            "--img_size",
            "64",
            "--images",
            *map(str, image_files),
            "--duration",
            "0.3",
            "--warmup",
            "0",
            "--cpus",
            "2",
            "--in_process_backends",
            "torch,onnxruntime",
            "--cache_dir",
            str(tmp_path / "cache"),
            "--forward_batches",
            "1,2",
            "--json",
            str(report),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert list((tmp_path / "cache" / "onnx").glob("*.onnx")), "the export went to --cache_dir"
    assert "onnxruntime: served by onnxruntime (detections equal PyTorch's" in out
    data = json.loads(report.read_text())
    configs = [row["config"] for row in data["in_process"]]
    assert configs == [
        "torch: 1 stream x 2 threads",
        "torch: 2 streams x 1 thread",
        "onnxruntime: 1 stream x 2 threads",
        "onnxruntime: 2 streams x 1 thread",
    ]
    assert all(row["images_per_s"] > 0 for row in data["in_process"])
    assert set(data["forward_images_per_s"]) == {"torch", "onnxruntime"}
    assert set(data["forward_images_per_s"]["torch"]) == {"1", "2"}


def test_parallel_streams_each_run_the_whole_pipeline(checkpoint, image_files) -> None:
    from predictor import Detector

    detector = Detector.load(checkpoint, "cpu", 64)
    payloads = [p.read_bytes() for p in image_files]
    result = pipeline.measure_pipeline(
        detector, payloads, streams=2, threads=1, duration=0.5, warmup=0
    )
    assert result.streams == 2 and result.images > 0
    assert len(result.latencies_ms) <= result.images


def _level(protocol: str, clients: int, images_per_s: float, p50: float, errors: int = 0):
    seconds = 10.0
    requests = round(images_per_s * seconds)
    return load.LevelResult(protocol, clients, 1, seconds, requests, errors, [p50] * 5)


def test_targets_are_the_issue_ratios() -> None:
    report = cli.Report()
    report.in_process = [
        pipeline.PipelineResult("torch", 1, 2, 10.0, 106, [94.0] * 3),  # 10.6/s, 94 ms
        pipeline.PipelineResult("torch", 2, 1, 10.0, 154, [130.0] * 3),  # 15.4/s
    ]
    report.levels = [
        _level("grpc", 1, 20.0, 50.0),
        _level("grpc", 8, 24.0, 300.0),
        _level("grpc", 64, 23.0, 2500.0, errors=1),
    ]
    report.interleaved_ms = {"in_process": [90.0, 94.0, 120.0], "grpc": [50.0, 52.0, 66.0]}
    found = {entry["name"].split(" (")[0]: entry for entry in cli.targets(report)}
    throughput = found["grpc: images/s @8 clients / in-process PyTorch best"]
    assert throughput["ratio"] == pytest.approx(24.0 / 15.4, abs=1e-3)
    assert throughput["met"] is True
    latency = found["grpc: p50 @1 client / in-process PyTorch single-image p50"]
    assert latency["ratio"] == pytest.approx(52.0 / 94.0, abs=1e-3) and latency["met"] is True
    overload = found["grpc: images/s @64 / @8 clients"]
    assert overload["ratio"] == pytest.approx(23.0 / 24.0, abs=1e-3)
    assert overload["met"] is False, "an error at 64 clients fails the target"


def test_overload_target_needs_no_in_process_run() -> None:
    report = cli.Report()
    report.levels = [_level("rest", 8, 20.0, 400.0), _level("rest", 64, 19.5, 3200.0)]
    [entry] = cli.targets(report)
    assert entry["name"] == "rest: images/s @64 / @8 clients" and entry["met"] is True


def test_precisions_side_by_side_print_their_ratio(capsys: pytest.CaptureFixture[str]) -> None:
    report = cli.Report()
    report.levels = [_level("grpc", 1, 20.0, 50.0), _level("grpc", 8, 24.0, 300.0)]
    report.other_precisions["int8"] = [
        _level("grpc", 1, 30.0, 30.0),
        _level("grpc", 8, 48.0, 150.0),
    ]
    cli._print_precision_ratios("fp32", report)
    printed = capsys.readouterr().out
    assert "int8 / fp32:" in printed
    assert re.search(r"grpc\s+1\s+1\.50x\s+0\.60x", printed)
    assert re.search(r"grpc\s+8\s+2\.00x\s+0\.50x", printed)
    assert report.to_json()["other_precisions"]["int8"][1]["images_per_s"] == 48.0


@pytest.mark.parametrize(("detections", "met"), [(12, True), (0, None)])
def test_detection_check_proves_nothing_without_detections(detections, met) -> None:
    report = cli.Report()
    report.check = {"images": 2, "detections": detections, "equal": True}
    [entry] = cli.targets(report) or [None]
    assert entry is not None and entry["met"] is met


class FixedLatency(load.Transport):
    """An endpoint that answers every request after exactly `latency` seconds."""

    protocol = "fixed"

    def __init__(self, latency: float) -> None:
        self.latency = latency

    async def send(self, index: int) -> bytes:
        await asyncio.sleep(self.latency)
        return b""


def test_closed_loop_throughput_is_clients_over_latency() -> None:
    """With 4 clients and 0.4 s per request the endpoint completes 10 requests/s, however
    long each request takes compared with the window (requests in flight when it opens
    count where they complete)."""
    result = asyncio.run(
        load.run_level(FixedLatency(0.4), 4, 1, duration=1.6, requests=None, warmup=0.2)
    )
    assert result.throughput == pytest.approx(10.0, rel=0.1)
    assert result.errors == 0
    assert result.percentile(50) == pytest.approx(400, rel=0.1)


def test_default_images(monkeypatch, tmp_path) -> None:
    generated = cli.generated_images()
    shapes = [cv2.imdecode(np.frombuffer(p, np.uint8), cv2.IMREAD_COLOR).shape for p in generated]
    assert shapes == [(1080, 810, 3), (720, 1280, 3), (480, 640, 3)]
    monkeypatch.setattr(cli, "REPO", tmp_path)  # no samples/ here
    assert cli.read_images(None) == generated
    (tmp_path / "samples").mkdir()
    cv2.imwrite(str(tmp_path / "samples" / "a.png"), random_image(20, 30))
    (tmp_path / "samples" / "labels.json").write_text("{}")
    [sample] = cli.read_images(None)
    assert sample == (tmp_path / "samples" / "a.png").read_bytes()


def test_plot_draws_every_series(tmp_path) -> None:
    levels = [_level(p, c, 10.0 * c, 5.0 * c) for p in ("grpc", "rest") for c in (1, 8, 64)]
    path = tmp_path / "plot.png"
    plot(levels, path, "title")
    image = cv2.imread(str(path))
    assert image.shape == (580, 1200, 3)
    for bgr in ((180, 119, 31), (44, 160, 44), (189, 103, 148)):  # p50, grpc and rest lines
        assert (np.abs(image.astype(int) - bgr).sum(axis=2) < 30).sum() > 50


def test_hand_encoded_protobuf_matches_the_v2_protos() -> None:
    # In a subprocess: kserve's and tritonclient's copies of the protos cannot share one.
    script = """
import sys
import numpy as np
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from predictor.bench import load

request = pb.ModelInferRequest.FromString(load.grpc_request("m", [b"ab", b"xyz"]))
assert request.model_name == "m", request
assert request.inputs[0].name == "image" and request.inputs[0].datatype == "BYTES"
assert list(request.inputs[0].shape) == [2]
assert request.raw_input_contents[0] == b"\\x02\\x00\\x00\\x00ab\\x03\\x00\\x00\\x00xyz"

response = pb.ModelInferResponse(model_name="m", id="1")
arrays = {
    "num_detections": np.array([2, 0], np.int32),
    "boxes": np.arange(16, dtype=np.float32).reshape(2, 2, 4),
    "scores": np.array([[0.9, 0.5], [0, 0]], np.float32),
    "classes": np.array([[1, 2], [-1, -1]], np.int32),
}
for name, array in arrays.items():
    datatype = "INT32" if array.dtype == np.int32 else "FP32"
    response.outputs.add(name=name, datatype=datatype, shape=list(array.shape))
    response.raw_output_contents.append(array.tobytes())
first, second = load.parse_grpc(response.SerializeToString())
assert first.boxes.tolist() == arrays["boxes"][0].tolist()
assert first.scores.tolist() == arrays["scores"][0].tolist()
assert first.classes.tolist() == [1, 2] and len(second.scores) == 0
print("ok")
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert done.stdout.strip() == "ok", done.stderr


def test_rest_payload_uses_the_binary_extension() -> None:
    body, headers = load.rest_request([b"ab"])
    header_length = int(headers["Inference-Header-Content-Length"])
    header = json.loads(body[:header_length])
    assert header["inputs"][0]["parameters"]["binary_data_size"] == 6
    assert body[header_length:] == b"\x02\x00\x00\x00ab"


def test_the_default_model_is_the_genuine_checkpoint(monkeypatch, tmp_path) -> None:
    missing = tmp_path / "best.pt"
    monkeypatch.setattr(cli, "DEFAULT_MODEL", missing)
    with pytest.raises(SystemExit, match=r"python -m predictor\.training\.genuine"):
        cli.main(["--in-process", "--duration", "0"])


def test_divergence_report(checkpoint, capsys) -> None:
    from predictor.bench import divergence

    assert divergence.main([str(checkpoint), "--img_size", "64", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    for level in divergence.LEVELS:
        assert f"{level} " in out and "raw difference boxes" in out
    for operator in ("Sigmoid", "SiLU (Sigmoid, Mul)", "Conv 3x3, 64 ch"):
        assert f"  {operator}" in out
    assert "forward median ms over 1 interleaved rounds" in out


def test_nothing_to_measure_is_an_error(capsys) -> None:
    with pytest.raises(SystemExit):
        cli.main([])
    assert "nothing to measure" in capsys.readouterr().err


def test_a_refused_server_is_one_error_line_not_a_traceback(checkpoint, capsys) -> None:
    # fp16 is CUDA only: the server refuses at start with exit 2 and says so.
    serve = ["--serve", "--model_dir", str(checkpoint), "--img_size", "64", "--no_check"]
    code = cli.main([*serve, "--concurrency", "1", "--server_args=--precision fp16"])
    out = capsys.readouterr().out
    assert code == 2
    assert "error: the server exited with 2: error: " in out
    assert "fp16" in out.splitlines()[-1]
