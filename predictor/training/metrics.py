"""Detection quality: per-class average precision with all-point interpolation, and mAP.

Detections of each class, over all images, are ranked by score; each is a true positive
when it overlaps (IoU >= threshold) a ground-truth box of its class in its image that no
higher-scoring detection has claimed (the best-overlapping unclaimed box is taken), else a
false positive. AP is the area under the precision-recall curve after replacing each
precision by the highest precision at any greater or equal recall (the VOC 2010+ / COCO
"all-point" interpolation, without sampling recall at fixed points).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ..nms import box_iou


class LabelledImage(Protocol):
    """An image with its true objects (a synthetic `Scene`, or a labelled file)."""

    @property
    def image(self) -> np.ndarray: ...  # H x W x 3 BGR uint8

    @property
    def boxes(self) -> np.ndarray: ...  # (n, 4) x1, y1, x2, y2 in pixels

    @property
    def classes(self) -> np.ndarray: ...  # (n,) class ids


COCO_THRESHOLDS = tuple(np.round(np.arange(0.5, 0.96, 0.05), 2).tolist())


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the interpolated precision-recall curve (points in ranking order)."""
    recall = np.concatenate(([0.0], np.asarray(recall, np.float64), [1.0]))
    precision = np.concatenate(([0.0], np.asarray(precision, np.float64), [0.0]))
    # precision envelope: the best precision achievable at this recall or beyond
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.nonzero(recall[1:] != recall[:-1])[0]
    return float(np.sum((recall[steps + 1] - recall[steps]) * precision[steps + 1]))


def match_detections(
    boxes: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    true_boxes: np.ndarray,
    true_classes: np.ndarray,
    thresholds: Sequence[float] = (0.5,),
) -> np.ndarray:
    """(k, len(thresholds)) bool: is each detection of one image a true positive?"""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    true_boxes = np.asarray(true_boxes, np.float64).reshape(-1, 4)
    correct = np.zeros((len(boxes), len(thresholds)), bool)
    if not len(boxes) or not len(true_boxes):
        return correct
    ious = box_iou(boxes, true_boxes)
    ious[np.asarray(classes)[:, None] != np.asarray(true_classes)[None, :]] = 0.0
    order = np.argsort(-np.asarray(scores), kind="stable")
    for column, threshold in enumerate(thresholds):
        claimed = np.zeros(len(true_boxes), bool)
        for i in order:
            candidates = np.where(claimed, -1.0, ious[i])
            best = int(np.argmax(candidates))
            if candidates[best] >= threshold:
                claimed[best] = True
                correct[i, column] = True
    return correct


@dataclass
class EvaluationResult:
    map50: float
    map50_95: float
    ap50_per_class: dict[str, float] = field(default_factory=dict)
    precision: float = 0.0  # at the score of the best F1 (all classes together), IoU 0.5
    recall: float = 0.0
    images: int = 0
    objects: int = 0

    def summary(self) -> str:
        per_class = ", ".join(f"{k} {v:.3f}" for k, v in self.ap50_per_class.items())
        return (
            f"mAP@0.5 {self.map50:.4f}  mAP@0.5:0.95 {self.map50_95:.4f}  "
            f"P {self.precision:.3f} R {self.recall:.3f}  ({per_class}; "
            f"{self.images} images, {self.objects} objects)"
        )


class APAccumulator:
    """Collects detections and ground truth image by image; computes AP per class."""

    def __init__(self, names: Sequence[str], thresholds: Sequence[float] = COCO_THRESHOLDS):
        self.names = list(names)
        self.thresholds = tuple(thresholds)
        self._scores: list[np.ndarray] = []
        self._classes: list[np.ndarray] = []
        self._correct: list[np.ndarray] = []
        self._true_classes: list[np.ndarray] = []
        self.images = 0

    def add(
        self,
        boxes: np.ndarray,
        scores: np.ndarray,
        classes: np.ndarray,
        true_boxes: np.ndarray,
        true_classes: np.ndarray,
    ) -> None:
        self._correct.append(
            match_detections(boxes, scores, classes, true_boxes, true_classes, self.thresholds)
        )
        self._scores.append(np.asarray(scores, np.float64).reshape(-1))
        self._classes.append(np.asarray(classes, np.int64).reshape(-1))
        self._true_classes.append(np.asarray(true_classes, np.int64).reshape(-1))
        self.images += 1

    def result(self) -> EvaluationResult:
        scores = np.concatenate(self._scores) if self._scores else np.zeros(0)
        classes = np.concatenate(self._classes) if self._classes else np.zeros(0, np.int64)
        correct = (
            np.concatenate(self._correct)
            if self._correct
            else np.zeros((0, len(self.thresholds)), bool)
        )
        true_classes = (
            np.concatenate(self._true_classes) if self._true_classes else np.zeros(0, np.int64)
        )
        order = np.argsort(-scores, kind="stable")
        scores, classes, correct = scores[order], classes[order], correct[order]
        aps: dict[int, np.ndarray] = {}
        for cls in np.unique(true_classes):
            positives = int((true_classes == cls).sum())
            hits = correct[classes == cls]
            tp = np.cumsum(hits, 0)
            fp = np.cumsum(~hits, 0)
            recall = tp / positives
            precision = tp / np.maximum(tp + fp, 1)
            aps[int(cls)] = np.array(
                [
                    average_precision(recall[:, j], precision[:, j])
                    for j in range(len(self.thresholds))
                ]
            )
        precision, recall = _best_f1_point(correct[:, :1].reshape(-1), len(true_classes))
        index50 = self.thresholds.index(0.5) if 0.5 in self.thresholds else 0
        return EvaluationResult(
            map50=float(np.mean([ap[index50] for ap in aps.values()])) if aps else 0.0,
            map50_95=float(np.mean([ap.mean() for ap in aps.values()])) if aps else 0.0,
            ap50_per_class={self._name(c): float(ap[index50]) for c, ap in sorted(aps.items())},
            precision=precision,
            recall=recall,
            images=self.images,
            objects=len(true_classes),
        )

    def _name(self, cls: int) -> str:
        return self.names[cls] if 0 <= cls < len(self.names) else str(cls)


def _best_f1_point(correct: np.ndarray, positives: int) -> tuple[float, float]:
    if not len(correct) or not positives:
        return 0.0, 0.0
    tp = np.cumsum(correct)
    fp = np.cumsum(~correct)
    precision = tp / (tp + fp)
    recall = tp / positives
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    best = int(np.argmax(f1))
    return float(precision[best]), float(recall[best])
