"""Non-maximum suppression with YOLOv5 v7.0 semantics, against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from predictor.nms import CLASS_OFFSET, non_max_suppression, xywh_to_xyxy


def row(x1, y1, x2, y2, obj, *cls):
    """A raw head row (cx, cy, w, h, obj, cls...) for the box x1, y1, x2, y2."""
    return [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, obj, *cls]


def nms(rows, conf=0.25, iou=0.45, max_det=300, classes=None, agnostic=False, nc=None):
    if rows:
        prediction = torch.tensor([rows], dtype=torch.float32)
    else:
        prediction = torch.zeros((1, 0, 5 + (nc or 2)))
    [out] = non_max_suppression(prediction, conf, iou, max_det, classes, agnostic)
    return out


def test_xywh_to_xyxy() -> None:
    out = xywh_to_xyxy(torch.tensor([[50.0, 40.0, 20.0, 10.0]]))
    torch.testing.assert_close(out, torch.tensor([[40.0, 35.0, 60.0, 45.0]]))


def test_score_is_objectness_times_best_class() -> None:
    out = nms([row(10, 20, 50, 80, 0.5, 0.6, 0.9)])
    assert out.shape == (1, 6)
    torch.testing.assert_close(out[0], torch.tensor([10.0, 20.0, 50.0, 80.0, 0.45, 1.0]))


def test_objectness_filter_is_strict_and_applies_before_class_scores() -> None:
    rows = [
        row(0, 0, 10, 10, 0.25, 1.0, 0.0),  # obj == conf: dropped (obj must exceed conf)
        row(20, 0, 30, 10, 0.2, 1.0, 1.0),  # obj below conf
        row(40, 0, 50, 10, 0.4, 0.5, 0.1),  # obj passes, 0.4 * 0.5 = 0.2 < conf
        row(60, 0, 70, 10, 0.5, 0.0, 0.6),  # 0.3: kept, class 1
    ]
    out = nms(rows)
    assert out.shape == (1, 6)
    torch.testing.assert_close(out[0], torch.tensor([60.0, 0.0, 70.0, 10.0, 0.3, 1.0]))


def test_overlapping_boxes_of_different_classes_are_both_kept() -> None:
    rows = [row(0, 0, 100, 100, 0.9, 1.0, 0.0), row(0, 0, 100, 100, 0.8, 0.0, 1.0)]
    out = nms(rows)
    assert out[:, 5].tolist() == [0.0, 1.0]
    torch.testing.assert_close(out[:, 4], torch.tensor([0.9, 0.8]))
    agnostic = nms(rows, agnostic=True)
    assert agnostic.shape == (1, 6) and agnostic[0, 5].item() == 0.0


def test_class_offset_keeps_classes_apart_even_for_huge_boxes() -> None:
    assert CLASS_OFFSET == 7680
    rows = [row(0, 0, 4000, 4000, 0.9, 1.0, 0.0), row(10, 10, 4010, 4010, 0.8, 0.0, 1.0)]
    assert len(nms(rows)) == 2


@pytest.mark.parametrize(("iou", "kept"), [(0.3, 1), (0.333, 1), (0.334, 2), (0.45, 2)])
def test_iou_threshold(iou: float, kept: int) -> None:
    # (0,0,10,10) and (5,0,15,10): intersection 50, union 150, IoU 1/3
    rows = [row(0, 0, 10, 10, 0.9, 1.0, 0.0), row(5, 0, 15, 10, 0.8, 1.0, 0.0)]
    out = nms(rows, iou=iou)
    assert len(out) == (1 if iou < 1 / 3 else 2) == kept
    assert out[0, 4].item() == pytest.approx(0.9)  # the better box always survives


def test_suppression_is_greedy_by_score() -> None:
    # B overlaps A and C (IoU 0.6 each), A and C overlap less (IoU 1/3). A suppresses B;
    # a suppressed box suppresses nothing, so C survives.
    rows = [
        row(5, 0, 15, 10, 0.7, 1.0, 0.0),  # C: IoU(B, C) = 0.6, IoU(A, C) = 1/3
        row(0, 0, 10, 10, 0.95, 1.0, 0.0),  # A
        row(2.5, 0, 12.5, 10, 0.9, 1.0, 0.0),  # B: IoU(A, B) = 75 / 125 = 0.6
    ]
    out = nms(rows, iou=0.5)
    torch.testing.assert_close(out[:, 4], torch.tensor([0.95, 0.7]))
    assert out[:, 0].tolist() == [0.0, 5.0]
    out = nms(rows, iou=0.3)
    torch.testing.assert_close(out[:, 4], torch.tensor([0.95]))
    out = nms(rows, iou=0.65)
    torch.testing.assert_close(out[:, 4], torch.tensor([0.95, 0.9, 0.7]))


def test_results_are_sorted_and_capped_at_max_det() -> None:
    scores = [0.3, 0.9, 0.5, 0.7, 0.4]
    rows = [row(20 * i, 0, 20 * i + 10, 10, s, 1.0, 0.0) for i, s in enumerate(scores)]
    out = nms(rows)
    assert out[:, 4].tolist() == pytest.approx([0.9, 0.7, 0.5, 0.4, 0.3])
    capped = nms(rows, max_det=3)
    assert capped[:, 4].tolist() == pytest.approx([0.9, 0.7, 0.5])
    assert capped[:, 0].tolist() == [20.0, 60.0, 40.0]


def test_classes_filter() -> None:
    rows = [
        row(0, 0, 10, 10, 0.9, 1.0, 0.0, 0.0),
        row(20, 0, 30, 10, 0.9, 0.0, 0.8, 0.0),
        row(40, 0, 50, 10, 0.9, 0.0, 0.0, 0.7),
    ]
    assert nms(rows, classes=[2])[:, 5].tolist() == [2.0]
    assert sorted(nms(rows, classes=(0, 2))[:, 5].tolist()) == [0.0, 2.0]
    assert nms(rows, classes=[1, 2, 0]).shape == (3, 6)
    assert nms(rows, classes=[5]).shape == (0, 6)


def test_filter_uses_best_class_only() -> None:
    # best class is 0 (0.9); class 1 also clears conf but multi_label=False ignores it
    out = nms([row(0, 0, 10, 10, 1.0, 0.9, 0.8)], classes=[1])
    assert out.shape == (0, 6)


@pytest.mark.parametrize(
    "rows",
    [[], [row(0, 0, 10, 10, 0.1, 1.0, 1.0)], [row(0, 0, 10, 10, 0.5, 0.1, 0.2)]],
    ids=["no-candidates", "low-objectness", "low-class-score"],
)
def test_nothing_left_gives_an_empty_0x6(rows) -> None:
    out = nms(rows)
    assert out.shape == (0, 6) and out.dtype == torch.float32


def test_every_image_is_processed_on_its_own() -> None:
    a = [row(0, 0, 10, 10, 0.9, 1.0, 0.0), row(1, 1, 11, 11, 0.8, 1.0, 0.0)]
    b = [row(0, 0, 10, 10, 0.1, 1.0, 0.0), row(100, 100, 110, 110, 0.6, 0.0, 1.0)]
    batch = non_max_suppression(torch.tensor([a, b]), 0.25, 0.45, 300)
    assert len(batch) == 2
    torch.testing.assert_close(batch[0], nms(a))
    torch.testing.assert_close(batch[1], nms(b))
    assert batch[1].tolist() == [pytest.approx([100, 100, 110, 110, 0.6, 1.0])]


def test_half_precision_input_gives_float32_rows() -> None:
    prediction = torch.tensor([[row(0, 0, 10, 10, 0.5, 0.6, 0.9)]]).half()
    [out] = non_max_suppression(prediction, 0.25, 0.45, 300)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out[0, :4], torch.tensor([0.0, 0.0, 10.0, 10.0]))
