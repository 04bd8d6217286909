"""`--precision` served: an INT8 model answering V2 with its self-check in metadata and
metrics; every way INT8 cannot serve is a start-up error (exit 2) or a 400 from the
repository load API, never a silent fp32; an unloaded model's series are gone."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
import torch

from predictor.synthetic import generate_scene, write_labelled_folder
from tests.serving import REPO, Server, running_server
from tests.support import jpeg, v2_body

DEMO = REPO / "model_store" / "yolov5n-shapes.pt"
SIZE = 224  # small for speed; the demo model was trained at 320
CALIBRATION_SEED = 101  # not a training seed


def model_directory(path: Path, config: str = "", calibration: Path | None = None) -> Path:
    path.mkdir(parents=True)
    shutil.copy(DEMO, path / DEMO.name)
    if config:
        (path / "config.yaml").write_text(config)
    if calibration is not None:
        shutil.copytree(calibration, path / "calibration")
    return path


@pytest.fixture(scope="module")
def calibration(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 demo-like scenes: 9 calibrate, 3 are held back for the self-check."""
    return write_labelled_folder(tmp_path_factory.mktemp("calib"), CALIBRATION_SEED, 12) / "images"


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory, calibration: Path) -> Path:
    root = tmp_path_factory.mktemp("int8-repo") / "models"
    # 3 held-back images make a coarse agreement (0.95 here): the bar is lowered to 0.9
    config = f"precision: int8\nimg_size: {SIZE}\nint8_min_agreement: 0.9\n"
    model_directory(root / "shapes", config, calibration)
    return root


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[Server]:
    with running_server(repository, "--device", "cpu", model_name="shapes") as server:
        yield server


def metrics(server: Server) -> str:
    return httpx.get(f"{server.http_url}/metrics", timeout=10).text


def test_int8_model_answers_v2_and_reports_its_self_check(server: Server) -> None:
    image = cv2.imencode(".png", generate_scene(CALIBRATION_SEED, 40).image)[1].tobytes()
    response = httpx.post(
        f"{server.http_url}/v2/models/shapes/infer", json=v2_body(image), timeout=60
    )
    assert response.status_code == 200, response.text
    scores = {o["name"]: o["data"] for o in response.json()["outputs"]}["scores"]
    assert len(scores) > 0  # the demo model finds the scene's shapes in INT8 too

    parameters = httpx.get(f"{server.http_url}/v2/models/shapes", timeout=10).json()["parameters"]
    assert parameters["backend"] == "onnxruntime"
    assert parameters["precision"] == "int8"
    assert parameters["backend_reason"].startswith("--precision int8: agreement with fp32")
    assert 0.9 <= parameters["int8_agreement"] <= 1.0
    assert ">= 0.9 " in parameters["backend_reason"]  # config.yaml's int8_min_agreement
    assert {"int8_precision", "int8_recall", "int8_score_shift"} <= parameters.keys()

    text = metrics(server)
    info = re.search(r"yolov5_model_info\{([^}]*)model=\"shapes\"[^}]*\}", text)
    assert info is not None and 'backend="onnxruntime"' in info.group(0)
    assert 'precision="int8"' in info.group(0)
    gauge = re.search(r'yolov5_int8_agreement\{model="shapes",version="[^"]*"\} (\S+)', text)
    assert gauge is not None and float(gauge.group(1)) == parameters["int8_agreement"]
    assert "agreement with fp32" in server.log.read_text()  # logged as well


def test_a_load_that_cannot_be_int8_is_a_400_with_the_reason(
    server: Server, repository: Path
) -> None:
    model_directory(repository / "uncalibrated", f"precision: int8\nimg_size: {SIZE}\n")
    response = httpx.post(f"{server.http_url}/v2/repository/models/uncalibrated/load", timeout=120)
    assert response.status_code == 400, response.text
    assert "INT8 needs calibration images" in response.text
    assert "--calibration_dir" in response.text
    ready = httpx.get(f"{server.http_url}/v2/models/shapes/ready", timeout=10)
    assert ready.status_code == 200  # the others keep serving


def test_metadata_names_the_backend_and_unload_removes_the_series(
    server: Server, repository: Path
) -> None:
    model_directory(repository / "plain", "img_size: 160\n")
    loaded = httpx.post(f"{server.http_url}/v2/repository/models/plain/load", timeout=120)
    assert loaded.status_code == 200, loaded.text
    body = v2_body(jpeg())
    answer = httpx.post(f"{server.http_url}/v2/models/plain/infer", json=body, timeout=60)
    assert answer.status_code == 200, answer.text

    parameters = httpx.get(f"{server.http_url}/v2/models/plain", timeout=10).json()["parameters"]
    assert parameters["backend"] in ("onnxruntime", "torch")
    assert parameters["backend_reason"]  # accepted with what difference, or why not
    assert parameters["precision"] == "fp32"
    assert not any(key.startswith("int8_") for key in parameters)
    text = metrics(server)
    assert re.search(
        rf'yolov5_model_info\{{backend="{parameters["backend"]}",[^}}]*model="plain"', text
    )
    assert 'yolov5_inference_requests_total{model="plain",outcome="ok"}' in text

    unloaded = httpx.post(f"{server.http_url}/v2/repository/models/plain/unload", timeout=60)
    assert unloaded.status_code == 200, unloaded.text
    assert 'model="plain"' not in metrics(server)
    assert 'model="shapes"' in metrics(server)


# -- start-up refusals: exit 2 with what to do ------------------------------------------


def start(model_dir: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    """`python -m predictor` expected to refuse before serving."""
    cache = str(model_dir.parent / "cache")
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "predictor",
            "--model_dir",
            str(model_dir),
            "--cache_dir",
            cache,
            *flags,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )


def test_int8_without_calibration_images_refuses_to_start(tmp_path: Path) -> None:
    model = model_directory(tmp_path / "model")
    started = start(model, "--precision", "int8", "--img_size", str(SIZE))
    assert started.returncode == 2, started.stderr[-2000:]
    assert "error: INT8 needs calibration images" in started.stderr
    assert "--calibration_dir DIR" in started.stderr
    assert "python -m predictor.quantize" in started.stderr


def test_int8_below_the_agreement_threshold_refuses_to_start(tmp_path: Path) -> None:
    """Calibrated on dark frames, checked on scenes: the ranges are wrong, detections
    change, and the server says so instead of serving them."""
    images = tmp_path / "unlike"
    images.mkdir()
    for index in range(8):  # sorted by name, indices 1 and 5 are held back
        image = (
            generate_scene(CALIBRATION_SEED, index).image
            if index % 4 == 1
            else np.full((240, 320, 3), 8, np.uint8)
        )
        cv2.imwrite(str(images / f"{index:02d}.png"), image)
    model = model_directory(tmp_path / "model")
    started = start(
        model, "--precision", "int8", "--img_size", str(SIZE), "--calibration_dir", str(images)
    )
    assert started.returncode == 2, started.stderr[-2000:]
    assert "error: INT8 refused: agreement with fp32" in started.stderr
    assert "below --int8_min_agreement 0.95" in started.stderr


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--precision", "int8", "--device", "cuda"), "int8 runs on the CPU only"),
        (("--precision", "fp16", "--device", "cpu"), "fp16 runs on CUDA only"),
    ],
)
def test_impossible_precisions_refuse_to_start(
    tmp_path: Path, flags: tuple[str, ...], message: str
) -> None:
    started = start(model_directory(tmp_path / "model"), *flags)
    assert started.returncode == 2 and message in started.stderr, started.stderr[-2000:]


@pytest.mark.skipif(torch.cuda.is_available(), reason="auto is CUDA here: fp16 serves")
def test_fp16_on_a_cpu_only_machine_refuses_to_start(tmp_path: Path) -> None:
    """The device resolved at start-up (auto: the CPU here) meets the same rule."""
    started = start(model_directory(tmp_path / "model"), "--precision", "fp16", "--img_size", "160")
    assert started.returncode == 2, started.stderr[-2000:]
    assert "error: --precision fp16 runs on CUDA only" in started.stderr
