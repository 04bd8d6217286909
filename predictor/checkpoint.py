"""Read and write YOLOv5 checkpoints without ever executing code from the file.

A YOLOv5 `.pt` is a pickle of whole modules referenced by class path
(`models.yolo.DetectionModel`, `models.common.C3`, ...). We load it with torch's
weights-only unpickler, which refuses every global outside an allow-list, and map the
upstream class paths onto our own runtime classes. TorchScript exports from YOLOv5's
`export.py` are loaded with `torch.jit.load` (TorchScript is not Python: it cannot
import modules or call arbitrary functions).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import json
import pathlib
import pickle
import re
import sys
import types
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .runtime import layers
from .runtime.detection import Detect, DetectionModel, fuse_batchnorm

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".torchscript")

# Where YOLOv5 code lived when a checkpoint was written: the repository (`models.*`)
# or the `yolov5` pip package (`yolov5.models.*`).
_PACKAGE_PREFIXES = ("models", "yolov5.models")
_YOLO_CLASSES: dict[str, type[nn.Module]] = {
    "DetectionModel": DetectionModel,  # v6.2+
    "Model": DetectionModel,  # v1.1-v6.1
    "Detect": Detect,
}
_TORCH_MODULES: tuple[type[nn.Module], ...] = (
    nn.Sequential,
    nn.ModuleList,
    nn.Conv2d,
    nn.BatchNorm2d,
    nn.MaxPool2d,
    nn.Upsample,
    nn.Identity,
    nn.SiLU,
    nn.Hardswish,
    nn.LeakyReLU,
    nn.ReLU,
    nn.ReLU6,
    nn.Sigmoid,
)
_ACTIVATIONS = (nn.SiLU, nn.Hardswish, nn.LeakyReLU, nn.ReLU, nn.ReLU6)
_NUMPY_CORE = ("numpy.core", "numpy._core")  # numpy 1.x and 2.x pickle paths


def _allowed_globals() -> list[Any]:
    allowed: list[Any] = list(_TORCH_MODULES)
    for prefix in _PACKAGE_PREFIXES:
        allowed += [(cls, f"{prefix}.yolo.{name}") for name, cls in _YOLO_CLASSES.items()]
        allowed += [(cls, f"{prefix}.common.{cls.__name__}") for cls in layers.LAYER_TYPES]
    for core in _NUMPY_CORE:
        allowed += [
            (np._core.multiarray._reconstruct, f"{core}.multiarray._reconstruct"),
            (np._core.multiarray.scalar, f"{core}.multiarray.scalar"),
        ]
    allowed += [np.ndarray, np.dtype, *_numpy_dtype_classes()]
    # Training metadata (`opt`) may hold paths and namespaces; both are inert values.
    allowed += [
        pathlib.PosixPath,
        (pathlib.PureWindowsPath, "pathlib.WindowsPath"),
        pathlib.PurePosixPath,
        pathlib.PureWindowsPath,
        argparse.Namespace,
    ]
    return allowed


def _numpy_dtype_classes() -> list[type]:
    return [type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDGSUV"]


class CheckpointError(ValueError):
    """The file is not a YOLOv5 detection checkpoint we can load safely."""


@dataclass
class LoadedModel:
    """A network ready for inference and what is known about it."""

    network: nn.Module
    names: list[str]
    stride: int
    source: Path
    fixed_input_shape: tuple[int, int] | None = None  # (height, width) of a TorchScript export


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> LoadedModel:
    """Load a YOLOv5 `.pt` checkpoint or `.torchscript` export for inference on `device`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    device = torch.device(device)
    if _is_torchscript(path):
        return _load_torchscript(path, device)
    return _load_pickled(path, device)


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.split("/", 1)[-1].startswith("code/") for name in archive.namelist())


def _load_pickled(path: Path, device: torch.device) -> LoadedModel:
    checkpoint = _unpickle(path)
    if isinstance(checkpoint, dict):
        network = checkpoint.get("ema") or checkpoint.get("model")
    else:
        network = checkpoint
    if network is None:
        keys = sorted(map(str, checkpoint)) if isinstance(checkpoint, dict) else []
        raise CheckpointError(
            f"{path}: no 'model' or 'ema' entry (keys: {keys}); not a YOLOv5 checkpoint"
        )
    if not isinstance(network, DetectionModel):
        raise CheckpointError(
            f"{path}: holds a {type(network).__module__}.{type(network).__name__}, "
            "not a YOLOv5 DetectionModel"
        )
    head = network.model[-1] if len(network.model) else None
    if not isinstance(head, Detect) or "m" not in head._modules:
        raise CheckpointError(
            f"{path}: the model does not end in a YOLOv5 Detect head; "
            "supported: YOLOv5 v3.0-v7.0 detection checkpoints"
        )
    _upgrade_legacy_modules(network)
    network = fuse_batchnorm(network.float()).eval().requires_grad_(False)
    if device.type == "cuda":
        network = network.half()
    names = _class_names(getattr(network, "names", None), head.nc, path)
    stride = int(max(head.stride.max().item(), 32))
    return LoadedModel(network.to(device), names, stride, path)


def _unpickle(path: Path) -> Any:
    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(_explain_refusal(path, str(error))) from None
    except Exception as error:  # corrupt, truncated or not a torch file at all
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint ({type(error).__name__}: "
            f"{_first_line(error)}); expected a YOLOv5 .pt from train.py or a .torchscript export"
        ) from None


_KNOWN_FOREIGN = {
    "ultralytics.": "an Ultralytics YOLOv8+ (anchor-free) checkpoint",
    "SegmentationModel": "a YOLOv5 segmentation checkpoint",
    "Segment": "a YOLOv5 segmentation checkpoint",
    "ClassificationModel": "a YOLOv5 classification checkpoint",
}


def _explain_refusal(path: Path, message: str) -> str:
    match = re.search(r"GLOBAL (\S+)", message) or re.search(r"function (\S+)", message)
    if match is None:
        if "persistent_load" in message:
            return (
                f"{path}: written in torch's legacy (pre-1.6) format, as YOLOv5 v1.x-v2.0 did; "
                "supported: YOLOv5 v3.0-v7.0 checkpoints (re-save it with a current torch "
                "in a trusted environment)"
            )
        return (
            f"{path}: not a readable PyTorch checkpoint; expected a YOLOv5 .pt from "
            "train.py or a .torchscript export"
        )
    offender = match.group(1)
    for marker, kind in _KNOWN_FOREIGN.items():
        if marker in offender.split(".")[-1] or offender.startswith(marker):
            return (
                f"{path}: this is {kind} ({offender}); only YOLOv5 detection checkpoints "
                "(v3.0-v7.0 .pt, or .torchscript exports) are supported"
            )
    return (
        f"{path}: refused to load: it references {offender}, which is not part of a YOLOv5 "
        "detection model; loading it could run code from the file"
    )


def _first_line(error: object) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _upgrade_legacy_modules(network: nn.Module) -> None:
    """Attributes that modules pickled by older torch releases lack."""
    for module in network.modules():
        if isinstance(module, nn.Upsample) and not hasattr(module, "recompute_scale_factor"):
            module.recompute_scale_factor = None
        if isinstance(module, _ACTIVATIONS) and not hasattr(module, "inplace"):
            module.inplace = False  # torch 1.6 pickled Hardswish without it


def _class_names(raw: Any, nc: int, path: Path) -> list[str]:
    if isinstance(raw, dict):
        raw = [raw[k] for k in sorted(raw)]
    if not raw:
        return [f"class{i}" for i in range(nc)]
    names = [str(name) for name in raw]
    if len(names) != nc:
        raise CheckpointError(f"{path}: {len(names)} class names for a head with {nc} classes")
    return names


def _load_torchscript(path: Path, device: torch.device) -> LoadedModel:
    extra = {"config.txt": ""}
    try:
        network = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    except Exception as error:
        raise CheckpointError(
            f"{path}: not a loadable TorchScript file ({_first_line(error)})"
        ) from None
    try:
        config = json.loads(extra["config.txt"] or "{}")
    except json.JSONDecodeError:
        config = {}
    if "shape" not in config or "stride" not in config:
        raise CheckpointError(
            f"{path}: TorchScript file without YOLOv5's config.txt (shape, stride, names); "
            "export it with YOLOv5's export.py"
        )
    raw_names = config.get("names")
    if isinstance(raw_names, dict):
        raw_names = {int(k): v for k, v in raw_names.items()}
    names = _class_names(raw_names, len(raw_names or []), path)
    height, width = config["shape"][-2:]
    return LoadedModel(network.eval(), names, int(config["stride"]), path, (height, width))


# ---------------------------------------------------------------------------------------
# Writing checkpoints in the upstream layout (tests and the demo-model trainer use this).


@contextlib.contextmanager
def upstream_class_paths(model_class: str = "DetectionModel") -> Iterator[None]:
    """While active, our classes pickle under YOLOv5's paths (`models.yolo.<model_class>`...)."""
    yolo = types.ModuleType("models.yolo")
    common = types.ModuleType("models.common")
    package = types.ModuleType("models")
    package.yolo, package.common = yolo, common
    renamed: list[tuple[type, str, str, str]] = []

    def publish(module: types.ModuleType, cls: type, name: str) -> None:
        setattr(module, name, cls)
        renamed.append((cls, cls.__module__, cls.__name__, cls.__qualname__))
        cls.__module__, cls.__qualname__ = module.__name__, name

    publish(yolo, DetectionModel, model_class)
    publish(yolo, Detect, "Detect")
    for cls in layers.LAYER_TYPES:
        publish(common, cls, cls.__name__)
    saved = {name: sys.modules.get(name) for name in ("models", "models.yolo", "models.common")}
    sys.modules.update({"models": package, "models.yolo": yolo, "models.common": common})
    try:
        yield
    finally:
        for cls, module, _name, qualname in reversed(renamed):
            cls.__module__, cls.__qualname__ = module, qualname
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous


def save_checkpoint(
    path: str | Path,
    model: DetectionModel,
    *,
    ema: DetectionModel | None = None,
    epoch: int = -1,
    model_class: str = "DetectionModel",
    extra: dict[str, Any] | None = None,
) -> None:
    """Write `model` as YOLOv5's train.py does: fp16 modules under `model` (and `ema`)."""

    def frozen_half(network: DetectionModel) -> DetectionModel:
        copied = copy.deepcopy(network).half()
        for parameter in copied.parameters():
            parameter.requires_grad = False
        return copied

    checkpoint: dict[str, Any] = {
        "epoch": epoch,
        "best_fitness": None,
        "model": frozen_half(model),
        "ema": frozen_half(ema) if ema is not None else None,
        "updates": None,
        "optimizer": None,
        "opt": {},
        "git": None,
        "date": datetime.datetime.now().isoformat(),
    }
    checkpoint.update(extra or {})
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with upstream_class_paths(model_class):
        torch.save(checkpoint, path)
