"""The Detector pipeline: letterbox -> network -> NMS -> boxes in image pixels."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from predictor.checkpoint import CheckpointError, LoadedModel
from predictor.detector import Detections, DetectionSettings, Detector, resolve_device
from tests.support import random_image, save_responsive_checkpoint

NAMES = ["person", "car", "dog"]


def xywh(x1, y1, x2, y2, obj, *cls):
    return [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, obj, *cls]


class ScriptedNetwork(nn.Module):
    """Stands in for a network: emits fixed raw rows (input-pixel boxes), records its inputs."""

    def __init__(self, rows: list[list[float]], as_tuple: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))  # gives the detector a device
        self.rows = torch.tensor(rows)
        self.as_tuple = as_tuple
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor):
        self.inputs.append(x.clone())
        out = self.rows.expand(x.shape[0], -1, -1).clone()
        return (out, [out]) if self.as_tuple else out


SCRIPTED_ROWS = [
    xywh(100, 200, 300, 400, 0.9, 0.1, 0.8),  # score 0.72, class 1
    xywh(5, 5, 50, 50, 0.1, 0.9, 0.9),  # objectness too low
    xywh(0, 270, 640, 370, 0.8, 0.5, 0.1),  # score 0.4, class 0
]


def scripted_detector(mode: str = "square", as_tuple: bool = False) -> Detector:
    network = ScriptedNetwork(SCRIPTED_ROWS, as_tuple)
    return Detector(LoadedModel(network, ["cat", "dog"], 32, Path("fake.pt")), 640, mode)


@pytest.mark.parametrize("as_tuple", [False, True], ids=["tensor", "export-tuple"])
def test_square_pipeline_by_hand(as_tuple: bool) -> None:
    detector = scripted_detector("square", as_tuple)
    image = np.empty((720, 1280, 3), np.uint8)
    image[:] = (10, 20, 30)  # BGR
    [result] = detector.detect([image])

    [batch] = detector.model.network.inputs
    assert batch.shape == (1, 3, 640, 640) and batch.dtype == torch.float32
    pad, rgb = torch.tensor(114 / 255), torch.tensor([30 / 255, 20 / 255, 10 / 255])
    torch.testing.assert_close(batch[0, :, :140], pad.expand(3, 140, 640))
    torch.testing.assert_close(batch[0, :, 500:], pad.expand(3, 140, 640))
    torch.testing.assert_close(batch[0, :, 140:500], rgb.view(3, 1, 1).expand(3, 360, 640))

    # gain 0.5, 140 rows of padding: (100, 200, 300, 400) -> (200, 120, 600, 520)
    np.testing.assert_allclose(result.boxes, [[200, 120, 600, 520], [0, 260, 1280, 460]])
    np.testing.assert_allclose(result.scores, [0.72, 0.4], rtol=1e-6)
    assert result.class_ids.tolist() == [1, 0] and result.labels == ["dog", "cat"]
    assert result.boxes.dtype == np.float32 and result.scores.dtype == np.float32
    assert result.class_ids.dtype == np.int32 and len(result) == 2


def test_rect_pipeline_by_hand() -> None:
    detector = scripted_detector("rect")
    [result] = detector.detect([np.zeros((720, 1280, 3), np.uint8)])
    assert detector.model.network.inputs[0].shape == (1, 3, 384, 640)
    # gain 0.5, 12 rows of padding; the first box leaves the image at the bottom
    np.testing.assert_allclose(result.boxes, [[200, 376, 600, 720], [0, 516, 1280, 716]])


def test_settings_reach_nms() -> None:
    detector = scripted_detector()
    image = np.zeros((720, 1280, 3), np.uint8)
    [high] = detector.detect([image], DetectionSettings(conf_threshold=0.5))
    assert high.scores.tolist() == [pytest.approx(0.72)]
    [cats] = detector.detect([image], DetectionSettings(classes=(0,)))
    assert cats.labels == ["cat"]
    [one] = detector.detect([image], DetectionSettings(max_det=1))
    assert one.labels == ["dog"]


def test_images_of_one_input_shape_share_a_batch_and_keep_their_order() -> None:
    sizes = [(720, 1280), (1280, 720), (100, 100)]
    images = [np.zeros((h, w, 3), np.uint8) for h, w in sizes]

    square = scripted_detector("square")
    results = square.detect(images)
    assert [tuple(x.shape) for x in square.model.network.inputs] == [(3, 3, 640, 640)]
    # (100, 200, 300, 400) in the 640 input, per image
    np.testing.assert_allclose(results[0].boxes[0], [200, 120, 600, 520])
    np.testing.assert_allclose(results[1].boxes[0], [0, 400, 320, 800])  # 140 px left pad
    np.testing.assert_allclose(results[2].boxes[0], [15.625, 31.25, 46.875, 62.5])

    rect = scripted_detector("rect")
    again = rect.detect(images)
    shapes = sorted(tuple(x.shape[2:]) for x in rect.model.network.inputs)
    assert shapes == [(384, 640), (640, 384), (640, 640)]
    np.testing.assert_allclose(again[1].boxes[0], [176, 400, 576, 800])  # 12 px left pad
    np.testing.assert_allclose(again[2].boxes[0], results[2].boxes[0])


# --- a real (tiny) network ------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("detector") / "best.pt"
    save_responsive_checkpoint(path, names=NAMES)
    return path


@pytest.fixture(scope="module")
def square(checkpoint: Path) -> Detector:
    return Detector.load(checkpoint, device="cpu", img_size=128)


@pytest.fixture(scope="module")
def rect(checkpoint: Path) -> Detector:
    return Detector.load(checkpoint, device="cpu", img_size=128, letterbox="rect")


IMAGES = [random_image(90, 160, seed=1), random_image(128, 96, seed=2), random_image(70, 70, 3)]


def assert_same_detections(a: Detections, b: Detections) -> None:
    assert len(a) == len(b)
    assert a.class_ids.tolist() == b.class_ids.tolist() and a.labels == b.labels
    np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-2)  # float32 noise of batch size
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)


@pytest.mark.parametrize("mode", ["square", "rect"])
def test_detections_do_not_depend_on_the_rest_of_the_batch(request, mode: str) -> None:
    detector: Detector = request.getfixturevalue(mode)
    images = [*IMAGES, IMAGES[0]]
    batched = detector.detect(images)
    assert len(batched) == 4
    for image, result in zip(images, batched, strict=True):
        [alone] = detector.detect([image])
        assert len(alone) > 0
        assert_same_detections(result, alone)
    assert_same_detections(batched[0], batched[3])


@pytest.mark.parametrize("mode", ["square", "rect"])
def test_detections_are_well_formed(request, mode: str) -> None:
    detector: Detector = request.getfixturevalue(mode)
    for image in IMAGES:
        [result] = detector.detect([image])
        height, width = image.shape[:2]
        assert len(result) > 0
        assert result.boxes.shape == (len(result), 4)
        assert (result.boxes[:, [0, 2]] >= 0).all() and (result.boxes[:, [0, 2]] <= width).all()
        assert (result.boxes[:, [1, 3]] >= 0).all() and (result.boxes[:, [1, 3]] <= height).all()
        assert (result.boxes[:, 2] >= result.boxes[:, 0]).all()
        assert (np.diff(result.scores) <= 0).all()  # best first
        assert (result.scores > 0.25).all() and (result.scores <= 1).all()
        assert result.labels == [NAMES[i] for i in result.class_ids]


def test_square_and_rect_input_shapes(square: Detector, rect: Detector) -> None:
    image = IMAGES[0]  # 160x90: ratio 0.8 -> 128x72
    assert square.prepare(image).tensor.shape == (3, 128, 128)
    assert rect.prepare(image).tensor.shape == (3, 96, 128)  # 56 % 32 = 24 -> 12 + 12
    assert square.input_shape == rect.input_shape == (128, 128)
    assert square.letterbox == "square" and rect.letterbox == "rect"


def test_class_filter_is_the_subset_of_that_class(square: Detector) -> None:
    [everything] = square.detect([IMAGES[0]])
    assert len(set(everything.class_ids.tolist())) > 1
    for class_id in set(everything.class_ids.tolist()):
        [only] = square.detect([IMAGES[0]], DetectionSettings(classes=(class_id,)))
        mask = everything.class_ids == class_id
        assert (only.class_ids == class_id).all()
        np.testing.assert_allclose(only.boxes, everything.boxes[mask], atol=1e-4)


def test_higher_confidence_keeps_the_confident_part(square: Detector) -> None:
    [low] = square.detect([IMAGES[1]], DetectionSettings(conf_threshold=0.25))
    [high] = square.detect([IMAGES[1]], DetectionSettings(conf_threshold=0.6))
    assert 0 < len(high) < len(low)
    np.testing.assert_allclose(high.boxes, low.boxes[low.scores > 0.6], atol=1e-4)


def test_agnostic_and_max_det(square: Detector) -> None:
    [normal] = square.detect([IMAGES[0]])
    [agnostic] = square.detect([IMAGES[0]], DetectionSettings(agnostic=True))
    assert 0 < len(agnostic) < len(normal)
    [capped] = square.detect([IMAGES[0]], DetectionSettings(max_det=2))
    np.testing.assert_allclose(capped.scores, normal.scores[:2])


def test_p6_model_uses_stride_64(tmp_path: Path) -> None:
    save_responsive_checkpoint(tmp_path / "p6.pt", layout="v6-p6")
    detector = Detector.load(tmp_path / "p6.pt", device="cpu", img_size=100, letterbox="rect")
    assert detector.stride == 64 and detector.input_shape == (128, 128)
    # 160x90 into 128: 128x72, 56 % 64 = 56 -> the rect input is 128x128
    assert detector.prepare(IMAGES[0]).tensor.shape == (3, 128, 128)
    assert detector.prepare(random_image(40, 160)).tensor.shape == (3, 64, 128)
    assert len(detector.detect([IMAGES[0]])[0]) > 0


@pytest.mark.parametrize(
    "image",
    [np.zeros((10, 10), np.uint8), np.zeros((10, 10, 4), np.uint8), np.zeros((10, 10, 3))],
    ids=["greyscale", "bgra", "float"],
)
def test_prepare_rejects_what_is_not_an_8_bit_bgr_image(square: Detector, image) -> None:
    with pytest.raises(ValueError, match="HxWx3"):
        square.prepare(image)


# --- settings, devices, loading -----------------------------------------------------------------


def test_default_settings_are_yolov5s() -> None:
    settings = DetectionSettings()
    assert (settings.conf_threshold, settings.iou_threshold, settings.max_det) == (0.25, 0.45, 1000)
    assert settings.classes is None and settings.agnostic is False


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"conf_threshold": -0.01}, "conf_threshold"),
        ({"conf_threshold": 1.5}, "conf_threshold"),
        ({"conf_threshold": math.nan}, "conf_threshold"),
        ({"iou_threshold": -0.1}, "iou_threshold"),
        ({"iou_threshold": 2.0}, "iou_threshold"),
        ({"max_det": 0}, "max_det"),
        ({"max_det": -3}, "max_det"),
    ],
)
def test_invalid_settings_are_rejected(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        DetectionSettings(**kwargs)


def test_boundary_settings_are_accepted() -> None:
    DetectionSettings(conf_threshold=0.0, iou_threshold=0.0, max_det=1)
    DetectionSettings(conf_threshold=1.0, iou_threshold=1.0)


def test_device_auto(checkpoint: Path) -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    detector = Detector.load(checkpoint, device="auto", img_size=64)
    assert detector.device.type == expected
    assert detector.dtype == (torch.float16 if expected == "cuda" else torch.float32)


def test_load_reports_missing_paths(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"best\.pt"):
        Detector.load(tmp_path / "no" / "such" / "dir" / "best.pt", device="cpu")
    with pytest.raises(CheckpointError):
        Detector.load(tmp_path, device="cpu")
