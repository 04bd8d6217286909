"""Small models that really produce detections, saved in the upstream checkpoint layout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from predictor.checkpoint import save_checkpoint
from predictor.runtime.architecture import build_model, yolov5_spec
from predictor.runtime.detection import DetectionModel


def detecting_model(
    nc: int = 3,
    names: list[str] | None = None,
    layout: str = "v6",
    width: float = 0.125,
    seed: int = 0,
) -> DetectionModel:
    """A tiny random YOLOv5 whose raised head biases make it detect plenty at conf 0.25."""
    torch.manual_seed(seed)
    model = build_model(yolov5_spec("n", nc=nc, layout=layout, width_multiple=width), names)
    with torch.no_grad():
        for conv in model.head.m:
            bias = conv.bias.view(model.head.na, -1)
            bias[:, 4] += 6.0
            bias[:, 5:] += torch.randn_like(bias[:, 5:]) * 2 + 2
    return model.eval()


def save_detecting_checkpoint(path: Path, **kwargs: Any) -> Path:
    save_checkpoint(path, detecting_model(**kwargs))
    return path
