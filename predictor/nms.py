"""Non-maximum suppression with the semantics of YOLOv5 v7.0 (`multi_label=False`), and
box overlap (IoU) for comparing detections."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torchvision

MAX_CANDIDATES = 30_000
CLASS_OFFSET = 7680  # separates classes in box space so one NMS call is per-class


def non_max_suppression(
    prediction: torch.Tensor,
    conf_threshold: float,
    iou_threshold: float,
    max_det: int,
    classes: Sequence[int] | None = None,
    agnostic: bool = False,
) -> list[torch.Tensor]:
    """(batch, anchors, 5 + nc) raw head output -> per image (k, 6): x1, y1, x2, y2, score, class.

    Each image is processed on its own, so no result depends on the rest of the batch.
    """
    return [
        _suppress_one(candidates, conf_threshold, iou_threshold, max_det, classes, agnostic)
        for candidates in prediction
    ]


def _suppress_one(
    x: torch.Tensor,
    conf_threshold: float,
    iou_threshold: float,
    max_det: int,
    classes: Sequence[int] | None,
    agnostic: bool,
) -> torch.Tensor:
    x = x[x[:, 4] > conf_threshold].float()
    if not len(x):
        return x.new_zeros((0, 6))
    class_scores = x[:, 5:] * x[:, 4:5]
    score, class_id = class_scores.max(1, keepdim=True)
    x = torch.cat((xywh_to_xyxy(x[:, :4]), score, class_id.float()), 1)[
        score.view(-1) > conf_threshold
    ]
    if classes is not None:
        x = x[(x[:, 5:6] == torch.tensor(list(classes), device=x.device)).any(1)]
    if not len(x):
        return x
    x = x[x[:, 4].argsort(descending=True)[:MAX_CANDIDATES]]
    offsets = x[:, 5:6] * (0 if agnostic else CLASS_OFFSET)
    keep = torchvision.ops.nms(x[:, :4] + offsets, x[:, 4], iou_threshold)[:max_det]
    return x[keep]


def xywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    half_wh = boxes[:, 2:4] / 2
    return torch.cat((boxes[:, :2] - half_wh, boxes[:, :2] + half_wh), 1)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, m) IoU of x1, y1, x2, y2 boxes."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = iw.clip(0) * ih.clip(0)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)
