"""The bundled demo checkpoint finds every object in the sample images."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from predictor.detector import DetectionSettings, Detector
from predictor.nms import box_iou
from predictor.synthetic import CLASS_NAMES

REPO = Path(__file__).resolve().parents[1]
MODEL_STORE = REPO / "model_store"
SAMPLES = REPO / "samples"
IMG_SIZE = 320  # the size the demo model was trained at (model_store/README.md)
LABELS = json.loads((SAMPLES / "labels.json").read_text())


def test_model_store_holds_exactly_one_small_checkpoint() -> None:
    checkpoints = [p for p in MODEL_STORE.iterdir() if p.suffix in (".pt", ".pth", ".torchscript")]
    assert [p.name for p in checkpoints] == ["yolov5n-shapes.pt"]
    assert checkpoints[0].stat().st_size < 5_000_000


@pytest.fixture(scope="module")
def detector() -> Detector:
    return Detector.load(MODEL_STORE / "yolov5n-shapes.pt", device="cpu", img_size=IMG_SIZE)


def test_demo_model_names(detector: Detector) -> None:
    assert detector.names == list(CLASS_NAMES) == LABELS["names"]


@pytest.mark.parametrize("letterbox", ["square", "rect"])
@pytest.mark.parametrize("record", LABELS["images"], ids=lambda r: r["file"])
def test_finds_every_sample_object(detector: Detector, record: dict, letterbox: str) -> None:
    detector.letterbox = letterbox
    image = cv2.imread(str(SAMPLES / record["file"]))
    assert image.shape[:2] == (record["height"], record["width"])
    [found] = detector.detect([image], DetectionSettings(conf_threshold=0.25, iou_threshold=0.45))
    truth = np.array([o["box"] for o in record["objects"]], np.float64)
    truth_classes = np.array([o["class_id"] for o in record["objects"]])
    ious = box_iou(truth, found.boxes)
    ious[truth_classes[:, None] != found.class_ids[None, :]] = 0.0
    for obj, best in zip(record["objects"], ious.max(1, initial=0.0), strict=True):
        assert best >= 0.5, f"{record['file']}: {obj['label']} at {obj['box']} missed"
    # and nothing confident that is not one of the objects
    stray = found.scores[ious.max(0, initial=0.0) < 0.5] if len(found) else np.zeros(0)
    assert (stray < 0.5).all(), f"{record['file']}: false detections scored {stray}"
