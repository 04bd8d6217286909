"""How closely one model's detections follow another's: the INT8-against-fp32 self-check.

Per image, the candidate's detections are matched to the reference's greedily, best
candidate score first: a match is the same class with IoU >= 0.5, each reference detection
claimed at most once. Recall and precision are taken over all images together; agreement
is their F1. The score shift is the mean of candidate minus reference score over matches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from .detector import Detections
from .nms import box_iou

MATCH_IOU = 0.5


@dataclass(frozen=True)
class Agreement:
    agreement: float  # F1 of precision and recall
    precision: float  # share of candidate detections that match a reference detection
    recall: float  # share of reference detections that a candidate detection matches
    mean_score_shift: float  # candidate - reference, over matched pairs
    images: int
    reference_detections: int
    candidate_detections: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)

    def __str__(self) -> str:
        return (
            f"agreement {self.agreement:.4f} (precision {self.precision:.4f}, recall "
            f"{self.recall:.4f}, mean score shift {self.mean_score_shift:+.4f}; "
            f"{self.candidate_detections} vs {self.reference_detections} detections "
            f"on {self.images} images)"
        )


def compare_detections(
    reference: Sequence[Detections], candidate: Sequence[Detections]
) -> Agreement:
    matched = 0
    shifts: list[float] = []
    for ref, cand in zip(reference, candidate, strict=True):
        for i, j in _matches(ref, cand):
            matched += 1
            shifts.append(float(cand.scores[j]) - float(ref.scores[i]))
    n_ref = sum(len(r) for r in reference)
    n_cand = sum(len(c) for c in candidate)
    precision = matched / n_cand if n_cand else 1.0
    recall = matched / n_ref if n_ref else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return Agreement(
        agreement=f1,
        precision=precision,
        recall=recall,
        mean_score_shift=float(np.mean(shifts)) if shifts else 0.0,
        images=len(reference),
        reference_detections=n_ref,
        candidate_detections=n_cand,
    )


def _matches(reference: Detections, candidate: Detections) -> list[tuple[int, int]]:
    """(reference index, candidate index) pairs."""
    if not len(reference) or not len(candidate):
        return []
    ious = box_iou(candidate.boxes, reference.boxes)
    ious[candidate.class_ids[:, None] != reference.class_ids[None, :]] = 0.0
    claimed = np.zeros(len(reference), bool)
    pairs = []
    for j in np.argsort(-candidate.scores, kind="stable"):
        overlaps = np.where(claimed, -1.0, ious[j])
        best = int(np.argmax(overlaps))
        if overlaps[best] >= MATCH_IOU:
            claimed[best] = True
            pairs.append((best, int(j)))
    return pairs
