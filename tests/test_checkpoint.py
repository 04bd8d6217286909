"""Loading YOLOv5 checkpoints: every era's pickle layout, safety, corrupt and foreign files."""

from __future__ import annotations

import argparse
import builtins
import copy
import datetime
import json
import os
import pathlib
import pickle
import re
import shlex
import types
import warnings
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from torch import nn

from predictor.checkpoint import (
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
    upstream_class_paths,
)
from predictor.detector import Detector
from predictor.runtime import layers
from predictor.runtime.detection import Detect, DetectionModel
from tests.support import (
    classes_published_as,
    fp16_reference,
    pickled_globals,
    random_image,
    responsive_model,
    save_responsive_checkpoint,
)

INPUT = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def network_output(network: nn.Module, x: torch.Tensor = INPUT) -> torch.Tensor:
    with torch.no_grad():
        out = network(x)
    return out[0] if isinstance(out, tuple | list) else out


def assert_same_network(loaded: nn.Module, model: nn.Module) -> None:
    """The loaded network computes what the fp16-rounded original computes."""
    torch.testing.assert_close(
        network_output(loaded), network_output(fp16_reference(model)), rtol=1e-3, atol=1e-3
    )


def assert_clear_refusal(error: CheckpointError, path: Path) -> None:
    message = str(error)
    assert path.name in message
    # torch's own text advises re-running with weights_only=False: never pass that on
    assert "weights_only" not in message
    assert "Weights only load failed" not in message


def save_raw(path: Path, checkpoint: object, model_class: str = "DetectionModel", **kw) -> None:
    """torch.save with our classes published under YOLOv5's class paths."""
    with upstream_class_paths(model_class):
        torch.save(checkpoint, path, **kw)


def half_frozen(model: DetectionModel) -> DetectionModel:
    copied = copy.deepcopy(model).half()
    for parameter in copied.parameters():
        parameter.requires_grad = False
    return copied


# --- architectures and eras ------------------------------------------------------------

ERA_CLASSES = {
    "v6": ({"Conv", "C3", "Bottleneck", "SPPF", "Concat"}, {"Focus", "SPP", "BottleneckCSP"}),
    "v5": ({"Focus", "Conv", "C3", "SPP", "Concat"}, {"SPPF", "BottleneckCSP"}),
    "v3": ({"Focus", "Conv", "BottleneckCSP", "SPP", "Concat"}, {"C3", "SPPF"}),
    "v6-p6": ({"Conv", "C3", "SPPF", "Concat"}, {"Focus", "SPP", "BottleneckCSP"}),
}


@pytest.mark.parametrize("layout", list(ERA_CLASSES))
def test_round_trip_of_each_architecture(tmp_path: Path, layout: str) -> None:
    path = tmp_path / "best.pt"
    model = save_responsive_checkpoint(path, layout=layout, names=["person", "car", "dog"])

    refs = pickled_globals(path)
    present, absent = ERA_CLASSES[layout]
    assert {"models.yolo.DetectionModel", "models.yolo.Detect"} <= refs
    assert {f"models.common.{name}" for name in present} <= refs
    assert not {f"models.common.{name}" for name in absent} & refs
    assert not [name for name in refs if name.startswith(("predictor", "tests"))]
    assert "torch.HalfStorage" in refs  # weights are stored in fp16, as train.py stores them

    loaded = load_checkpoint(path)
    assert loaded.names == ["person", "car", "dog"]
    assert loaded.stride == (64 if layout == "v6-p6" else 32)
    assert loaded.fixed_input_shape is None
    assert loaded.network.model[-1].nl == (4 if layout == "v6-p6" else 3)
    assert not loaded.network.training
    assert all(p.dtype == torch.float32 for p in loaded.network.parameters())
    convs = [m for m in loaded.network.modules() if isinstance(m, layers.Conv)]
    assert convs and all("bn" not in m._modules for m in convs)  # BatchNorm fused
    assert_same_network(loaded.network, model)


def test_v1_1_to_v6_1_class_name_model(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    model = save_responsive_checkpoint(path, layout="v5", model_class="Model")
    refs = pickled_globals(path)
    assert "models.yolo.Model" in refs and "models.yolo.DetectionModel" not in refs
    assert_same_network(load_checkpoint(path).network, model)


@pytest.mark.parametrize(
    "names",
    [["a", "b", "c"], {0: "a", 1: "b", 2: "c"}, {2: "c", 0: "a", 1: "b"}],
    ids=["list", "dict", "unordered-dict"],
)
def test_names_as_list_or_dict(tmp_path: Path, names) -> None:
    model = responsive_model()
    model.names = names
    save_checkpoint(tmp_path / "m.pt", model)
    assert load_checkpoint(tmp_path / "m.pt").names == ["a", "b", "c"]


def test_names_that_do_not_fit_the_head_are_refused(tmp_path: Path) -> None:
    model = responsive_model(nc=3)
    model.names = ["only", "two"]
    save_checkpoint(tmp_path / "m.pt", model)
    with pytest.raises(CheckpointError, match="names"):
        load_checkpoint(tmp_path / "m.pt")


def test_ema_is_used_when_present(tmp_path: Path) -> None:
    model, ema = responsive_model(seed=0), responsive_model(seed=1)
    save_checkpoint(tmp_path / "last.pt", model, ema=ema, epoch=12)
    loaded = load_checkpoint(tmp_path / "last.pt").network
    assert_same_network(loaded, ema)
    assert not torch.allclose(network_output(loaded), network_output(fp16_reference(model)))


def test_all_keys_train_py_writes(tmp_path: Path) -> None:
    model = responsive_model()
    parameters = [p for p in model.parameters()][:3]
    optimizer = torch.optim.SGD(parameters, lr=0.01, momentum=0.937, nesterov=True)
    sum(p.sum() for p in parameters).backward()
    optimizer.step()
    extra = {
        "epoch": 299,
        "best_fitness": np.float64(0.6182),
        "updates": 35100,
        "optimizer": optimizer.state_dict(),
        "opt": {
            "weights": "yolov5s.pt",
            "save_dir": pathlib.PosixPath("runs/train/exp3"),
            "imgsz": 640,
            "hyp": {"lr0": 0.01, "anchor_t": 4.0},
            "rect": False,
            "device": "",
            "label_smoothing": 0.0,
        },
        "git": {"remote": "https://github.com/ultralytics/yolov5", "branch": "master"},
        "date": datetime.datetime(2023, 1, 2, 3, 4, 5).isoformat(),
        "results": np.array([0.71, 0.62, 0.68, 0.45], dtype=np.float32),
        "training_results": "0/299 3.2G 0.1 0.05 ...\n",  # v3.0-v5.0 kept the results log
        "wandb_id": None,
    }
    save_checkpoint(tmp_path / "best.pt", model, ema=model, extra=extra)
    refs = pickled_globals(tmp_path / "best.pt")
    assert {"pathlib.PosixPath", "numpy.dtype"} <= refs
    assert_same_network(load_checkpoint(tmp_path / "best.pt").network, model)


def test_older_opt_as_namespace_with_paths(tmp_path: Path) -> None:
    model = responsive_model(layout="v5")
    opt = argparse.Namespace(weights="", cfg="models/yolov5s.yaml", save_dir=Path("runs/exp0"))
    save_checkpoint(tmp_path / "m.pt", model, model_class="Model", extra={"opt": opt})
    assert_same_network(load_checkpoint(tmp_path / "m.pt").network, model)


class _Numpy1Pickler(pickle._Pickler):
    """Writes numpy's reconstructors under the numpy 1.x paths (`numpy.core.multiarray`)."""

    LEGACY: ClassVar[dict[int, bytes]] = {
        id(np._core.multiarray._reconstruct): b"numpy.core.multiarray\n_reconstruct\n",
        id(np._core.multiarray.scalar): b"numpy.core.multiarray\nscalar\n",
    }

    def save_global(self, obj, name=None):
        legacy = self.LEGACY.get(id(obj))
        if legacy is None:
            return super().save_global(obj, name)
        self.write(pickle.GLOBAL + legacy)
        self.memoize(obj)
        return None


def test_numpy_1_pickle_paths_in_metadata(tmp_path: Path) -> None:
    model = responsive_model()
    checkpoint = {
        "epoch": 5,
        "best_fitness": np.float64(0.5),
        "model": half_frozen(model),
        "ema": None,
        "opt": {"hyp": {"lr0": np.float64(0.01)}, "anchors": np.arange(6.0)},
    }
    numpy1 = types.ModuleType("numpy1_pickle")
    numpy1.Pickler, numpy1.Unpickler, numpy1.load = _Numpy1Pickler, pickle.Unpickler, pickle.load
    save_raw(tmp_path / "m.pt", checkpoint, pickle_module=numpy1)
    refs = pickled_globals(tmp_path / "m.pt")
    assert "numpy.core.multiarray._reconstruct" in refs and "numpy.core.multiarray.scalar" in refs
    assert_same_network(load_checkpoint(tmp_path / "m.pt").network, model)


def test_yolov5_pip_package_class_paths(tmp_path: Path) -> None:
    model = responsive_model()
    paths = {
        "yolov5.models.yolo.DetectionModel": DetectionModel,
        "yolov5.models.yolo.Detect": Detect,
    }
    paths.update({f"yolov5.models.common.{c.__name__}": c for c in layers.LAYER_TYPES})
    with classes_published_as(paths):
        torch.save({"model": half_frozen(model), "ema": None}, tmp_path / "m.pt")
    assert "yolov5.models.yolo.DetectionModel" in pickled_globals(tmp_path / "m.pt")
    assert_same_network(load_checkpoint(tmp_path / "m.pt").network, model)


class _WindowsPath:
    """Pickles as `pathlib.WindowsPath`, as `opt` does in checkpoints trained on Windows."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __reduce__(self):
        return (type(self), (self.text,))


def test_opt_from_windows_training(tmp_path: Path) -> None:
    model = responsive_model()
    with classes_published_as({"pathlib.WindowsPath": _WindowsPath}):
        opt = {"save_dir": _WindowsPath("runs\\train\\exp"), "weights": "yolov5s.pt"}
        save_checkpoint(tmp_path / "m.pt", model, extra={"opt": opt})
    assert "pathlib.WindowsPath" in pickled_globals(tmp_path / "m.pt")
    assert_same_network(load_checkpoint(tmp_path / "m.pt").network, model)


# Module attributes that torch added after 1.7 (hook dictionaries); a module pickled by
# torch 1.6-1.13 lacks some of them.
_NEWER_MODULE_ATTRIBUTES = (
    "_is_full_backward_hook",
    "_load_state_dict_post_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_state_dict_pre_hooks",
    "_backward_pre_hooks",
)


def test_modules_pickled_by_torch_1_x(tmp_path: Path) -> None:
    model = responsive_model(layout="v5")
    old = half_frozen(model)
    removed = 0
    for module in old.modules():
        for name in _NEWER_MODULE_ATTRIBUTES:
            removed += module.__dict__.pop(name, None) is not None
    assert removed
    save_raw(tmp_path / "m.pt", {"model": old, "ema": None}, "Model")
    assert_same_network(load_checkpoint(tmp_path / "m.pt").network, model)


def test_genuine_fp16_stride_and_stale_cached_grids(tmp_path: Path) -> None:
    """v6.x-v7.0 pickle `grid`/`anchor_grid` lists cached at the last training size."""
    model = responsive_model()
    stale = copy.deepcopy(model)
    head = stale.head
    head.stride = head.stride.half()  # YOLOv5's Model._apply also casts stride on .half()
    head.grid = [torch.full((1, 3, 80, 80, 2), 123.0) for _ in range(head.nl)]
    head.anchor_grid = [torch.full((1, 3, 80, 80, 2), -9.0) for _ in range(head.nl)]
    save_checkpoint(tmp_path / "m.pt", stale)
    assert_same_network(load_checkpoint(tmp_path / "m.pt").network, model)


def test_v3_to_v5_anchor_grid_buffer_in_pixels(tmp_path: Path) -> None:
    """v3.0-v5.0 register `anchor_grid` as a buffer; its cached value must not matter."""
    model = responsive_model(layout="v5")
    stale = copy.deepcopy(model)
    head = stale.head
    del head.anchor_grid
    head.register_buffer("anchor_grid", torch.full((head.nl, 1, head.na, 1, 1, 2), 5.0))
    head.grid = [torch.zeros(1)] * head.nl
    save_checkpoint(tmp_path / "m.pt", stale, model_class="Model")
    assert_same_network(load_checkpoint(tmp_path / "m.pt").network, model)


def test_upsample_pickled_by_old_torch(tmp_path: Path) -> None:
    model = responsive_model()
    old = copy.deepcopy(model)
    upsamples = [m for m in old.modules() if isinstance(m, nn.Upsample)]
    assert upsamples
    for module in upsamples:
        del module.recompute_scale_factor  # torch < 1.11 did not have it
    save_checkpoint(tmp_path / "m.pt", old)
    assert_same_network(load_checkpoint(tmp_path / "m.pt").network, model)


def test_v3_hardswish_pickled_by_torch_1_6(tmp_path: Path) -> None:
    """YOLOv5 v3.0 used Hardswish; torch 1.6 pickled it without an `inplace` attribute."""
    model = responsive_model(layout="v3")
    for module in model.modules():
        if isinstance(module, layers.Conv):
            module.act = nn.Hardswish()
    old = copy.deepcopy(model)
    for module in old.modules():
        if isinstance(module, nn.Hardswish):
            del module.inplace
    save_checkpoint(tmp_path / "m.pt", old, model_class="Model")
    assert_same_network(load_checkpoint(tmp_path / "m.pt").network, model)


def test_legacy_torch_serialization_loads_or_is_refused_clearly(tmp_path: Path) -> None:
    """torch < 1.6 wrote a non-zip format (YOLOv5 v1.x-v2.0 era)."""
    model = responsive_model(layout="v3")
    path = tmp_path / "legacy.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch cannot record module sources
        checkpoint = {"model": half_frozen(model), "ema": None}
        save_raw(path, checkpoint, "Model", _use_new_zipfile_serialization=False)
    try:
        loaded = load_checkpoint(path)
    except CheckpointError as error:
        assert_clear_refusal(error, path)
    else:
        assert_same_network(loaded.network, model)


def test_bare_pickled_model(tmp_path: Path) -> None:
    model = responsive_model()
    save_raw(tmp_path / "m.pt", half_frozen(model))
    assert_same_network(load_checkpoint(tmp_path / "m.pt").network, model)


# --- safety ------------------------------------------------------------------------------


class ShellPayload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


class OpenPayload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.open, (str(self.marker), "w"))


class TouchPayload:
    """Reaches Path.touch through an allowed class (PosixPath)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.PosixPath(self.marker),))


# payload -> (class, what the refusal must name); Path.touch pickles as getattr(Path, 'touch')
PAYLOADS = {
    "os.system": (ShellPayload, r"system"),
    "open": (OpenPayload, r"open"),
    "Path.touch": (TouchPayload, r"getattr|pathlib\.Path\b|touch"),
}


@pytest.mark.parametrize("payload", list(PAYLOADS))
def test_payloads_are_live(tmp_path: Path, payload: str) -> None:
    """Control: the crafted payloads do create their file when unpickled by plain pickle."""
    cls, _ = PAYLOADS[payload]
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(cls(marker), protocol=2))
    assert marker.exists()


def _place(where: str, payload: object, model: DetectionModel) -> dict:
    checkpoint = {"epoch": 3, "model": half_frozen(model), "ema": None, "opt": {}}
    if where == "top-level":
        checkpoint["evil"] = payload
    elif where == "opt":
        checkpoint["opt"] = {"weights": "yolov5s.pt", "hyp": {"lr0": payload}}
    else:  # inside a module's attributes, deep in the network
        checkpoint["model"].model[3].cache = [payload]
    return checkpoint


@pytest.mark.parametrize("where", ["top-level", "opt", "module-attribute"])
@pytest.mark.parametrize("payload", list(PAYLOADS))
def test_code_execution_payloads_are_refused(tmp_path: Path, where: str, payload: str) -> None:
    cls, offender = PAYLOADS[payload]
    marker = tmp_path / "pwned"
    path = tmp_path / "best.pt"
    save_raw(path, _place(where, cls(marker), responsive_model()))
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    assert not marker.exists()
    assert_clear_refusal(caught.value, path)
    assert re.search(offender, str(caught.value)), caught.value


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_raw_pickle_payload_is_refused(tmp_path: Path, protocol: int) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "yolov5s.pt"
    path.write_bytes(pickle.dumps({"model": ShellPayload(marker)}, protocol=protocol))
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    assert not marker.exists()
    assert_clear_refusal(caught.value, path)


def test_refused_payload_also_through_detector(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    save_raw(tmp_path / "m.pt", _place("opt", ShellPayload(marker), responsive_model()))
    with pytest.raises(CheckpointError, match="system"):
        Detector.load(tmp_path / "m.pt", device="cpu")
    assert not marker.exists()


# --- files that are not YOLOv5 detection checkpoints -------------------------------------


@pytest.fixture(scope="module")
def real_checkpoint(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("real") / "best.pt"
    save_responsive_checkpoint(path)
    return path.read_bytes()


def _corrupt(kind: str, real: bytes) -> bytes | object:
    state_dict = responsive_model().state_dict()
    return {
        "empty": b"",
        "random-bytes": np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes(),
        "text": b"model: yolov5s\nnames: [person, car]\n",
        "json": json.dumps({"model": "yolov5s"}).encode(),
        "truncated-half": real[: len(real) // 2],
        "truncated-tail": real[:-100],
        "state-dict": state_dict,
        "dict-without-model": {"epoch": 3, "best_fitness": 0.5},
        "model-and-ema-none": {"model": None, "ema": None},
        "model-is-state-dict": {"model": state_dict, "ema": None},
        "tensor": torch.zeros(3),
    }[kind]


@pytest.mark.parametrize(
    "kind",
    [
        "empty",
        "random-bytes",
        "text",
        "json",
        "truncated-half",
        "truncated-tail",
        "state-dict",
        "dict-without-model",
        "model-and-ema-none",
        "model-is-state-dict",
        "tensor",
    ],
)
def test_corrupt_and_non_checkpoint_files(tmp_path: Path, real_checkpoint: bytes, kind: str):
    path = tmp_path / "weights.pt"
    content = _corrupt(kind, real_checkpoint)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    assert_clear_refusal(caught.value, path)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"nope\.pt"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path)


def _foreign_model(name: str) -> nn.Module:
    cls = type(name, (nn.Module,), {})
    model = cls()
    model.model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 1))
    model.names = {0: "a"}
    return model


@pytest.mark.parametrize(
    ("class_path", "word"),
    [
        ("models.yolo.SegmentationModel", "segmentation"),
        ("models.yolo.ClassificationModel", "classification"),
        ("ultralytics.nn.tasks.DetectionModel", "ultralytics"),
    ],
)
def test_foreign_model_kinds_are_named(tmp_path: Path, class_path: str, word: str) -> None:
    model = _foreign_model(class_path.rsplit(".", 1)[1])
    with classes_published_as({class_path: type(model)}):
        torch.save({"epoch": -1, "model": model.half(), "ema": None}, tmp_path / "m.pt")
    assert class_path in pickled_globals(tmp_path / "m.pt")
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(tmp_path / "m.pt")
    assert word in str(caught.value).lower()
    assert_clear_refusal(caught.value, tmp_path / "m.pt")


def test_segment_head_is_named(tmp_path: Path) -> None:
    model = half_frozen(responsive_model())
    segment = type("Segment", (nn.Module,), {})()
    detect = model.model[-1]
    segment.m, segment.i, segment.f, segment.nc = detect.m, detect.i, detect.f, detect.nc
    model.model[-1] = segment
    with upstream_class_paths(), classes_published_as({"models.yolo.Segment": type(segment)}):
        torch.save({"model": model, "ema": None}, tmp_path / "seg.pt")
    with pytest.raises(CheckpointError, match=r"(?i)segment"):
        load_checkpoint(tmp_path / "seg.pt")


def test_v1_0_detect_without_convolutions_is_refused(tmp_path: Path) -> None:
    model = responsive_model()
    del model.head._modules["m"]
    save_checkpoint(tmp_path / "v1.pt", model, model_class="Model")
    with pytest.raises(CheckpointError, match="Detect"):
        load_checkpoint(tmp_path / "v1.pt")


# --- TorchScript exports -------------------------------------------------------------------


class _Exported(nn.Module):
    """What export.py traces: the fused model, returning a one-tuple of predictions."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.network(x),)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("export")
    pt = folder / "best.pt"
    save_responsive_checkpoint(pt, names=["person", "car", "dog"])
    network = load_checkpoint(pt).network
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(_Exported(network), torch.zeros(1, 3, 128, 128), strict=False)
    config = {"shape": [1, 3, 128, 128], "stride": 32, "names": {0: "person", 1: "car", 2: "dog"}}
    ts = folder / "best.torchscript"
    torch.jit.save(traced, str(ts), _extra_files={"config.txt": json.dumps(config)})
    bare = folder / "bare.torchscript"
    torch.jit.save(traced, str(bare))
    config["names"] = ["person", "car", "dog"]  # export.py before v7.0 wrote a list
    listed = folder / "listed.torchscript"
    torch.jit.save(traced, str(listed), _extra_files={"config.txt": json.dumps(config)})
    return pt, ts


def test_torchscript_export_gives_the_same_detections(exported) -> None:
    pt, ts = exported
    loaded = load_checkpoint(ts)
    assert loaded.names == ["person", "car", "dog"]
    assert (loaded.stride, loaded.fixed_input_shape) == (32, (128, 128))
    from_pt = Detector.load(pt, device="cpu", img_size=128)
    from_ts = Detector.load(ts, device="cpu", letterbox="rect")
    assert from_ts.input_shape == (128, 128) and from_ts.letterbox == "square"
    images = [random_image(90, 160, seed=3), random_image(128, 100, seed=4)]
    for a, b in zip(from_pt.detect(images), from_ts.detect(images), strict=True):
        assert len(a) > 0 and len(a) == len(b)
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
        assert a.labels == b.labels


def test_torchscript_names_as_list(exported) -> None:
    listed = load_checkpoint(exported[1].with_name("listed.torchscript"))
    assert listed.names == ["person", "car", "dog"]


def test_torchscript_without_config_is_refused(exported) -> None:
    bare = exported[1].with_name("bare.torchscript")
    with pytest.raises(CheckpointError, match=r"config\.txt"):
        load_checkpoint(bare)
