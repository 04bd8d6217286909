"""Check a backend against the PyTorch reference before it serves anything."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..imaging import round_up_to_stride
from .base import BackendError, Engine

SCORE_TOLERANCE = 1e-4  # objectness and class probabilities, absolute
BOX_TOLERANCE = 1e-4  # box centre/size in input pixels, relative to max(1, |value|)


@dataclass(frozen=True)
class Difference:
    boxes: float  # largest |a - b| / max(1, |b|) over box columns
    scores: float  # largest |a - b| over objectness and class columns

    @property
    def acceptable(self) -> bool:
        return self.boxes <= BOX_TOLERANCE and self.scores <= SCORE_TOLERANCE

    def __str__(self) -> str:
        return f"boxes {self.boxes:.2g} (relative), scores {self.scores:.2g}"


def probe_batches(
    input_shape: tuple[int, int], stride: int, rect: bool, seed: int = 0
) -> list[np.ndarray]:
    """Inputs that exercise a dynamic batch, and in rect mode a second, smaller shape."""
    rng = np.random.default_rng(seed)
    shapes = [(2, *input_shape)]
    if rect:
        narrower = max(stride, round_up_to_stride(input_shape[1] // 2, stride))
        shapes.append((1, input_shape[0], narrower))
    return [rng.random((n, 3, h, w), dtype=np.float32) for n, h, w in shapes]


def compare(reference: torch.Tensor, candidate: torch.Tensor) -> Difference:
    ref = reference.float().cpu().numpy()
    out = candidate.float().cpu().numpy()
    if ref.shape != out.shape:
        raise BackendError(f"output shape {out.shape} differs from PyTorch's {ref.shape}")
    if not np.isfinite(out).all():
        raise BackendError("output holds NaN or infinity")
    box_error = np.abs(out[..., :4] - ref[..., :4]) / np.maximum(1.0, np.abs(ref[..., :4]))
    score_error = np.abs(out[..., 4:] - ref[..., 4:])
    return Difference(float(box_error.max(initial=0)), float(score_error.max(initial=0)))


def verify(reference: Engine, candidate: Engine, probes: list[np.ndarray]) -> Difference:
    """The worst difference over `probes`; BackendError when beyond tolerance."""
    worst = Difference(0.0, 0.0)
    for batch in probes:
        expected = reference(batch)
        try:
            actual = candidate(batch)
        except Exception as error:  # e.g. an export whose shapes are not really dynamic
            raise BackendError(
                f"fails on a {list(batch.shape)} probe: {type(error).__name__}: {error}"
            ) from error
        difference = compare(expected, actual)
        worst = Difference(max(worst.boxes, difference.boxes), max(worst.scores, difference.scores))
        if not difference.acceptable:
            raise BackendError(
                f"output differs from PyTorch's on a {list(batch.shape)} probe: {difference} "
                f"(tolerance: boxes {BOX_TOLERANCE} relative, scores {SCORE_TOLERANCE})"
            )
    return worst
