"""The demo-model trainer: data, target assignment, CIoU, AP, and a smoke run."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from predictor.checkpoint import load_checkpoint, upstream_class_paths
from predictor.synthetic import CLASS_NAMES, SceneConfig, generate_scene
from predictor.training.data import AugmentConfig, TrainingSet, clip_polygon, polygon_area
from predictor.training.loss import LossGains, YoloLoss, bbox_ciou, build_targets
from predictor.training.metrics import APAccumulator, average_precision, match_detections
from predictor.training.trainer import TrainConfig, lr_factor, train

REPO = Path(__file__).resolve().parents[1]

# P3 anchors of YOLOv5 (10x13, 16x30, 33x23 pixels) in grid units of stride 8.
P3_ANCHORS = torch.tensor([[[1.25, 1.625], [2.0, 3.75], [4.125, 2.875]]])


def target(x: float, y: float, w: float, h: float, grid: int = 40, cls: int = 1) -> torch.Tensor:
    """One target row given in grid units of a `grid` x `grid` level."""
    return torch.tensor([[0.0, cls, x / grid, y / grid, w / grid, h / grid]])


def assigned(level) -> set[tuple[int, int, int]]:
    return {
        (int(a), int(y), int(x))
        for a, y, x in zip(level.anchor, level.cell_y, level.cell_x, strict=True)
    }


# -- synthetic data -------------------------------------------------------------------------


def test_scenes_are_deterministic_and_boxes_lie_inside_the_image() -> None:
    first, again = generate_scene(7, 3), generate_scene(7, 3)
    assert np.array_equal(first.image, again.image)
    assert np.array_equal(first.boxes, again.boxes)
    assert not np.array_equal(first.image, generate_scene(8, 3).image)
    for index in range(10):
        scene = generate_scene(7, index)
        height, width = scene.image.shape[:2]
        assert len(scene.boxes) == len(scene.classes)
        assert set(scene.classes.tolist()) <= set(range(len(CLASS_NAMES)))
        assert (scene.boxes[:, :2] >= 0).all()
        assert (scene.boxes[:, 2] <= width).all() and (scene.boxes[:, 3] <= height).all()


def test_a_circle_box_is_exactly_its_drawn_extent() -> None:
    config = SceneConfig(objects=(1, 1), empty_fraction=0.0, noise_sigma=(0, 0), jpeg_quality=None)
    for index in range(40):
        scene = generate_scene(11, index, config)
        if scene.classes.tolist() == [0]:
            break
    else:
        pytest.fail("no single-circle scene")
    x1, y1, x2, y2 = scene.boxes[0]
    assert x2 - x1 == pytest.approx(y2 - y1, abs=1e-4)  # the 72-gon's box is the circle's
    # the pixel columns through the centre change colour at the box edges (within a pixel)
    row = scene.image[int((y1 + y2) / 2)].astype(int)
    jumps = np.nonzero(np.abs(np.diff(row, axis=0)).sum(1) > 60)[0] + 1
    assert any(abs(j - x1) <= 1.0 for j in jumps) and any(abs(j - x2) <= 1.0 for j in jumps)


def test_polygon_clipping() -> None:
    square = np.array([[-2.0, -2.0], [2.0, -2.0], [2.0, 2.0], [-2.0, 2.0]])
    clipped = clip_polygon(square, 0, 0, 10, 10)
    assert polygon_area(clipped) == pytest.approx(4.0)
    assert clipped.min(0).tolist() == [0.0, 0.0] and clipped.max(0).tolist() == [2.0, 2.0]
    triangle = np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]])
    part = clip_polygon(triangle, 0, 0, 10, 2)  # the band y < 2: a trapezoid, area 8 - 2
    assert polygon_area(part) == pytest.approx(6.0)
    assert part.max(0).tolist() == [4.0, 2.0]


def test_augmented_labels_are_normalised_boxes() -> None:
    dataset = TrainingSet(seed=5, count=6, img_size=96)
    rng = np.random.default_rng(0)
    images, targets = next(dataset.batches(4, rng))
    assert images.shape == (4, 3, 96, 96) and images.dtype == torch.float32
    assert targets.shape[1] == 6 and len(targets)
    assert targets[:, 0].min() >= 0 and targets[:, 0].max() <= 3
    x, y, w, h = targets[:, 2:].T
    assert (w > 0).all() and (h > 0).all()
    assert (x - w / 2 >= -1e-5).all() and (x + w / 2 <= 1 + 1e-5).all()
    assert (y - h / 2 >= -1e-5).all() and (y + h / 2 <= 1 + 1e-5).all()


# -- target building ------------------------------------------------------------------------


def test_anchor_matching_and_neighbour_cells() -> None:
    # centre (10.3, 20.7), size 2 x 3 cells: ratios to the three anchors (w, h and inverse)
    # are at most 1.85, 1.25 and 2.06, all within anchor_t = 4, so every anchor matches.
    # x is 0.3 into its cell -> the left neighbour (9); y is 0.7 -> the one below (21).
    [level] = build_targets(target(10.3, 20.7, 2.0, 3.0), P3_ANCHORS, [(40, 40)])
    cells = {(20, 10), (20, 9), (21, 10)}
    assert assigned(level) == {(a, y, x) for a in range(3) for y, x in cells}
    for a, y, x, box, anchor in zip(
        level.anchor, level.cell_y, level.cell_x, level.box, level.anchor_wh, strict=True
    ):
        # the box centre is relative to the responsible cell's corner: in (-0.5, 1.5)
        assert box[:2].tolist() == pytest.approx([10.3 - int(x), 20.7 - int(y)], abs=1e-5)
        assert box[2:].tolist() == pytest.approx([2.0, 3.0])
        assert anchor.tolist() == P3_ANCHORS[0, int(a)].tolist()
    assert set(level.cls.tolist()) == {1} and set(level.image.tolist()) == {0}


def test_anchor_ratio_threshold() -> None:
    # 6 x 6 cells: against 1.25 x 1.625 the ratio is 4.8 (> 4), against 2 x 3.75 it is 3.0,
    # against 4.125 x 2.875 it is 2.09 -> anchors 1 and 2 only.
    [level] = build_targets(target(5.6, 5.6, 6.0, 6.0), P3_ANCHORS, [(40, 40)])
    assert set(level.anchor.tolist()) == {1, 2}
    # right and below neighbours (both 0.6 into the cell)
    assert {(y, x) for _, y, x in assigned(level)} == {(5, 5), (5, 6), (6, 5)}
    # far too big for every anchor: nothing on this level
    [level] = build_targets(target(20.0, 20.0, 30.0, 30.0), P3_ANCHORS, [(40, 40)])
    assert len(level.anchor) == 0


def test_no_neighbour_outside_the_grid() -> None:
    # centre 0.3 cells from the left/top border: there is no cell to the left or above.
    [level] = build_targets(target(0.3, 0.3, 1.5, 2.0), P3_ANCHORS, [(40, 40)])
    assert {(y, x) for _, y, x in assigned(level)} == {(0, 0)}
    # 0.3 cells from the right/bottom border (39.7): no cell to the right or below.
    [level] = build_targets(target(39.7, 39.7, 1.5, 2.0), P3_ANCHORS, [(40, 40)])
    assert {(y, x) for _, y, x in assigned(level)} == {(39, 39)}


def test_targets_on_several_levels_and_images() -> None:
    anchors = torch.cat((P3_ANCHORS, P3_ANCHORS / 2))  # a second, coarser level (20 x 20)
    targets = torch.cat((target(10.3, 20.7, 2.0, 3.0), target(30.5, 8.5, 2.0, 3.0)))
    targets[1, 0] = 3  # second target belongs to image 3
    first, second = build_targets(targets, anchors, [(40, 40), (20, 20)])
    assert set(first.image.tolist()) == {0, 3}
    # on the coarse level the 2 x 3 box becomes 1 x 1.5 grid cells
    assert second.box[:, 2:].unique(dim=0).tolist() == [[1.0, 1.5]]


# -- CIoU -----------------------------------------------------------------------------------


def test_ciou_of_shifted_equal_boxes() -> None:
    # (0,0)-(2,2) vs (1,1)-(3,3): IoU = 1 / 7; centres sqrt(2) apart; enclosing box 3 x 3,
    # diagonal^2 = 18; same aspect ratio, v = 0. CIoU = 1/7 - 2/18.
    ciou = bbox_ciou(torch.tensor([[1.0, 1.0, 2.0, 2.0]]), torch.tensor([[2.0, 2.0, 2.0, 2.0]]))
    assert ciou.item() == pytest.approx(1 / 7 - 2 / 18, abs=1e-6)


def test_ciou_with_different_aspect_ratios() -> None:
    # (0,0)-(4,2) vs (0,0)-(2,2): IoU = 4 / 8 = 0.5; centres 1 apart; enclosing 4 x 2,
    # diagonal^2 = 20; v = 4/pi^2 (atan(1) - atan(2))^2 = 0.0419565;
    # alpha = v / (v - 0.5 + 1) = 0.0774166. CIoU = 0.5 - 0.05 - alpha * v = 0.4467519.
    v = 4 / math.pi**2 * (math.atan(1.0) - math.atan(2.0)) ** 2
    assert v == pytest.approx(0.0419565, abs=1e-7)
    alpha = v / (v + 0.5)
    ciou = bbox_ciou(torch.tensor([[2.0, 1.0, 4.0, 2.0]]), torch.tensor([[1.0, 1.0, 2.0, 2.0]]))
    assert ciou.item() == pytest.approx(0.5 - 1 / 20 - alpha * v, abs=1e-6)
    assert ciou.item() == pytest.approx(0.4467519, abs=1e-6)


def test_ciou_of_identical_boxes_is_one() -> None:
    box = torch.tensor([[5.0, 6.0, 3.0, 7.0]])
    assert bbox_ciou(box, box).item() == pytest.approx(1.0, abs=1e-6)


def test_loss_gains_scale_like_yolov5() -> None:
    gains = LossGains.scaled(levels=3, num_classes=3, img_size=320)
    assert gains.box == pytest.approx(0.05)
    assert gains.cls == pytest.approx(0.5 * 3 / 80)
    assert gains.obj == pytest.approx(1.0 * (320 / 640) ** 2)


def test_loss_of_zero_logits() -> None:
    from predictor.runtime.architecture import build_model, yolov5_spec

    torch.manual_seed(0)
    model = build_model(yolov5_spec("n", nc=3), list(CLASS_NAMES)).train()
    criterion = YoloLoss(model.head, img_size=64)
    outputs = [torch.zeros(1, 3, 64 // s, 64 // s, 8) for s in (8, 16, 32)]
    targets = torch.tensor([[0.0, 2.0, 0.5, 0.5, 0.2, 0.3]])
    # zero logits decode to each matched anchor at its cell centre; objectness 0.5 everywhere
    loss, items = criterion(outputs, targets)
    assert items.shape == (3,) and (items > 0).all()
    assert loss.item() == pytest.approx(items.sum().item())  # batch of one
    bce_half = math.log(2)  # BCE of logit 0 against target 0 (no objects matched there)
    assert items[1].item() > criterion.gains.obj * bce_half * 0.4


# -- average precision ----------------------------------------------------------------------


def test_average_precision_all_point_interpolation() -> None:
    # 3 objects; ranked detections TP, FP, TP, FP: recall 1/3, 1/3, 2/3, 2/3 and precision
    # 1, 1/2, 2/3, 1/2. Envelope: 1 up to recall 1/3, 2/3 up to 2/3, 0 beyond.
    # AP = 1/3 * 1 + 1/3 * 2/3 = 5/9.
    recall = np.array([1, 1, 2, 2]) / 3
    precision = np.array([1, 1 / 2, 2 / 3, 1 / 2])
    assert average_precision(recall, precision) == pytest.approx(5 / 9)
    assert average_precision(np.array([0.5, 1.0]), np.array([1.0, 1.0])) == pytest.approx(1.0)


def test_map_on_a_hand_made_case() -> None:
    names = ["a", "b"]
    accumulator = APAccumulator(names, thresholds=(0.5, 0.75))
    truth = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], float)
    # image 1: class a has objects 0 and 1, class b object 2
    accumulator.add(
        boxes=np.array(
            [
                [0, 0, 10, 10],  # a, 0.9: exact -> TP at both thresholds
                [0, 0, 10, 11],  # a, 0.8: duplicate of object 0 -> FP
                [20, 20, 30, 36],  # a, 0.7: IoU 10*10 / (10*16) = 0.625: TP at 0.5, FP at 0.75
                [40, 40, 50, 50],  # b, 0.6: exact -> TP
            ],
            float,
        ),
        scores=np.array([0.9, 0.8, 0.7, 0.6]),
        classes=np.array([0, 0, 0, 1]),
        true_boxes=truth,
        true_classes=np.array([0, 0, 1]),
    )
    # image 2: one object of class b, missed; one false detection of class b
    accumulator.add(
        boxes=np.array([[60, 60, 70, 70]], float),
        scores=np.array([0.95]),
        classes=np.array([1]),
        true_boxes=np.array([[0, 0, 10, 10]], float),
        true_classes=np.array([1]),
    )
    result = accumulator.result()
    # class a at 0.5: TP FP TP -> recall 1/2 1/2 1, precision 1 1/2 2/3: AP = 1/2 + 1/2*2/3
    # class b at 0.5: FP (0.95) TP (0.6) of 2 objects -> recall 0 1/2, precision 0 1/2: 1/4
    assert result.ap50_per_class == pytest.approx({"a": 5 / 6, "b": 1 / 4})
    assert result.map50 == pytest.approx((5 / 6 + 1 / 4) / 2)
    # at 0.75 class a is TP FP FP: 1/2; b unchanged: 1/4
    assert result.map50_95 == pytest.approx(((5 / 6 + 1 / 2) / 2 + (1 / 4 + 1 / 4) / 2) / 2)
    assert result.objects == 4 and result.images == 2


def test_match_prefers_higher_scores() -> None:
    correct = match_detections(
        boxes=np.array([[0, 0, 10, 10], [1, 1, 10, 10]], float),
        scores=np.array([0.2, 0.9]),
        classes=np.array([0, 0]),
        true_boxes=np.array([[0, 0, 10, 10]], float),
        true_classes=np.array([0]),
    )
    assert correct[:, 0].tolist() == [False, True]


# -- training -------------------------------------------------------------------------------


def test_lr_schedules() -> None:
    config = TrainConfig(lrf=0.01)
    assert lr_factor(0.0, config) == pytest.approx(1.0)
    assert lr_factor(1.0, config) == pytest.approx(0.01)
    assert lr_factor(0.5, config) == pytest.approx(0.505)
    config.schedule = "linear"
    assert lr_factor(0.5, config) == pytest.approx(0.505)


def test_smoke_training_loss_goes_down(tmp_path: Path) -> None:
    # one fixed batch of 8 scenes, no augmentation: the loss must fall as the model fits it
    torch.set_num_threads(1)
    config = TrainConfig(
        img_size=128,
        epochs=40,
        batch_size=8,
        train_images=8,
        val_images=4,
        epoch_eval_images=0,
        threads=1,
        warmup_min_iters=5,
        augment=AugmentConfig(scale=0.0, fliplr=0.0, flipud=0.0, hsv_h=0.0, hsv_s=0.0, hsv_v=0.0),
    )
    lines: list[str] = []
    result = train(config, tmp_path / "smoke.pt", log=lines.append)
    losses = np.array(result.losses).sum(1)
    assert len(losses) == 40
    assert losses[-5:].mean() < 0.8 * losses[:5].mean(), losses
    assert any("eta" in line for line in lines)
    assert result.evaluation is not None and result.evaluation.images == 4
    loaded = load_checkpoint(result.output)
    assert loaded.names == list(CLASS_NAMES)


def test_last_and_best_are_written_as_train_py_writes_them(tmp_path: Path) -> None:
    config = TrainConfig(
        img_size=64, epochs=2, batch_size=4, train_images=4, val_images=0, epoch_eval_images=0
    )
    config.threads, config.warmup_min_iters = 1, 1
    result = train(config, tmp_path / "best.pt", log=lambda _: None, last=tmp_path / "last.pt")
    with upstream_class_paths():  # YOLOv5's own `models` package, as train.py pickles it
        last = torch.load(tmp_path / "last.pt", map_location="cpu", weights_only=False)
        best = torch.load(result.output, map_location="cpu", weights_only=False)
        assert {type(last["model"]).__module__, type(last["ema"]).__module__} == {"models.yolo"}
    # last.pt mid-training: training weights and EMA, optimizer state, EMA update count
    assert last["epoch"] == 1 and last["updates"] == 2
    assert {"state", "param_groups"} <= set(last["optimizer"])
    for key in ("model", "ema"):
        assert next(last[key].parameters()).dtype == torch.float16
    assert not torch.equal(next(last["model"].parameters()), next(last["ema"].parameters())), (
        "the EMA is its own weights"
    )
    # best.pt stripped: the EMA under `model`, nothing else
    assert best["ema"] is None and best["optimizer"] is None and best["epoch"] == -1
    assert torch.equal(next(best["model"].parameters()), next(last["ema"].parameters()))
    for path in (tmp_path / "last.pt", result.output):
        assert load_checkpoint(path).names == list(CLASS_NAMES)


def test_genuine_checkpoints_help() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "predictor.training.genuine", "--help"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    assert "last.pt" in run.stdout and "best.pt" in run.stdout and "--out" in run.stdout


def test_genuine_untrained_yolov5s_is_stripped_train_py_format(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "predictor.training.genuine", "--untrained-only"]
    subprocess.run([*command, "--out", str(tmp_path)], check=True, cwd=REPO, timeout=120)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["untrained.pt"]
    with upstream_class_paths():
        raw = torch.load(tmp_path / "untrained.pt", map_location="cpu", weights_only=False)
    assert raw["ema"] is None and raw["optimizer"] is None and raw["epoch"] == -1
    assert next(raw["model"].parameters()).dtype == torch.float16
    loaded = load_checkpoint(tmp_path / "untrained.pt")
    assert loaded.names == list(CLASS_NAMES)
    assert sum(p.numel() for p in loaded.network.parameters()) > 7_000_000  # YOLOv5s, not n


def test_make_demo_model_smoke_cli(tmp_path: Path) -> None:
    output = tmp_path / "demo.pt"
    script = REPO / "model_store" / "make_demo_model.py"
    run = subprocess.run(
        [sys.executable, str(script), "--smoke", "--threads", "1", "--output", str(output)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "mAP@0.5" in run.stdout
    with upstream_class_paths():  # YOLOv5's own `models` package, as train.py pickles it
        checkpoint = torch.load(output, map_location="cpu", weights_only=False)
        model = checkpoint["model"]
        assert type(model).__module__ == "models.yolo"
        assert type(model.model[0]).__module__ == "models.common"
    assert {"model", "ema", "epoch", "opt"} <= set(checkpoint)
    assert checkpoint["ema"] is None and checkpoint["epoch"] == -1
    assert next(model.parameters()).dtype == torch.float16
    assert list(model.names) == list(CLASS_NAMES)
    assert not list((REPO / "model_store").glob("__pycache__"))


def test_make_demo_model_help() -> None:
    script = REPO / "model_store" / "make_demo_model.py"
    run = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, check=True
    )
    for flag in ("--output", "--epochs", "--img-size", "--seed", "--threads", "--smoke"):
        assert flag in run.stdout
