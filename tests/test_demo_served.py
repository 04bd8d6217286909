"""The quickstart, end to end: the bundled model served as `scripts/serve` serves it, and
the client command on the sample images."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from predictor import client
from predictor.nms import box_iou
from tests.serving import REPO, Server, running_server

SAMPLES = REPO / "samples"
LABELS = json.loads((SAMPLES / "labels.json").read_text())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    model_store = tmp_path_factory.mktemp("quickstart") / "model_store"
    shutil.copytree(REPO / "model_store", model_store)
    with running_server(model_store) as server:  # no flags: model_store/config.yaml decides
        yield server


@pytest.mark.parametrize("record", LABELS["images"], ids=lambda r: r["file"])
def test_served_demo_model_finds_every_sample_object(server: Server, record: dict) -> None:
    grpc = grpcclient.InferenceServerClient(server.grpc_target)
    tensor = grpcclient.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([(SAMPLES / record["file"]).read_bytes()], dtype=object))
    result = grpc.infer("yolov5", [tensor])
    count = int(result.as_numpy("num_detections")[0])
    boxes, classes = result.as_numpy("boxes")[0, :count], result.as_numpy("classes")[0, :count]
    truth = np.array([o["box"] for o in record["objects"]])
    truth_classes = np.array([o["class_id"] for o in record["objects"]])
    ious = box_iou(truth, boxes)
    ious[truth_classes[:, None] != classes[None, :]] = 0.0
    assert (ious.max(1, initial=0) >= 0.5).all(), f"{record['file']}: missed an object"
    assert count == len(record["objects"]), "config.yaml's conf 0.5 leaves no stray boxes"


def test_client_prints_a_table_and_writes_annotated_images(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = sorted(SAMPLES.glob("*.jpg"))
    assert client.main([*map(str, images), "--url", server.http_url, "--out", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    for record in LABELS["images"]:
        for obj in record["objects"]:
            assert any(
                line.startswith(record["file"]) and obj["label"] in line
                for line in table.splitlines()
            )
    for image in images:
        annotated = cv2.imread(str(tmp_path / image.name))
        original = cv2.imread(str(image))
        assert annotated.shape == original.shape
        assert (annotated != original).any(), "boxes were drawn"


def test_client_explains_a_missing_server(tmp_path: Path, capsys) -> None:
    image = SAMPLES / "sample_1.jpg"
    assert client.main([str(image), "--url", "127.0.0.1:9"]) == 1
    assert "request to 127.0.0.1:9 failed" in capsys.readouterr().err
