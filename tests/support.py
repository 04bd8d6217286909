"""Shared helpers for the predictor tests: small detecting models, checkpoints, pickle probes,
encoded images and V2 request bodies."""

from __future__ import annotations

import base64
import contextlib
import copy
import functools
import math
import os
import pickletools
import struct
import subprocess
import sys
import types
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from predictor.checkpoint import save_checkpoint
from predictor.runtime.architecture import build_model, yolov5_spec
from predictor.runtime.detection import DetectionModel

_MODEL_KEYS = ("nc", "names", "layout", "width", "seed")

# The test models are tiny: one thread runs them fastest, above all on a shared CPU, and
# keeps numerics independent of the machine's core count.
torch.set_num_threads(1)


def detecting_model(
    nc: int = 3,
    names: list[str] | None = None,
    layout: str = "v6",
    width: float = 0.125,
    seed: int = 0,
) -> DetectionModel:
    """A tiny random YOLOv5 (eval mode) whose raised head biases (objectness +6, classes
    + randn*2+2) make it detect plenty at conf 0.25.

    Its scores hardly depend on the image (PyTorch's default initialisation lets the signal
    fade over YOLOv5's depth) and many of them tie; use `responsive_model` where detections
    must depend on the image or survive float noise. Each call returns a fresh copy.
    """
    key = (nc, tuple(names) if names is not None else None, layout, width, seed)
    return copy.deepcopy(_built_detecting_model(*key))


@functools.lru_cache(maxsize=16)
def _built_detecting_model(
    nc: int, names: tuple[str, ...] | None, layout: str, width: float, seed: int
) -> DetectionModel:
    torch.manual_seed(seed)
    spec = yolov5_spec("n", nc, layout, width_multiple=width)
    model = build_model(spec, list(names) if names is not None else None)
    with torch.no_grad():
        for conv in model.head.m:
            bias = conv.bias.view(model.head.na, -1)
            bias[:, 4] += 6.0
            bias[:, 5:] += torch.randn_like(bias[:, 5:]) * 2 + 2
    return model.eval()


def save_detecting_checkpoint(path: str | Path, **kw: Any) -> Path:
    """Save `detecting_model(**model kwargs)` as train.py would; return `path`.

    Keyword arguments named like `detecting_model`'s parameters build the model; the others
    (`ema`, `model_class`, `extra`, `epoch`) go to `save_checkpoint`.
    """
    model_kw = {k: kw.pop(k) for k in _MODEL_KEYS if k in kw}
    save_checkpoint(path, detecting_model(**model_kw), **kw)
    return Path(path)


def responsive_model(
    nc: int = 3,
    names: list[str] | None = None,
    layout: str = "v6",
    width: float = 0.125,
    seed: int = 0,
) -> DetectionModel:
    """A tiny YOLOv5 network (eval mode) whose detections depend on the image and whose
    scores are well separated: about 80-160 detections per 128x128 random image at conf
    0.25 for "v6", the same at batch 1 and batch 4.

    The convolutions get a variance-keeping initialisation, BatchNorm statistics are
    non-trivial (so fusing them is really exercised), and the head is calibrated on two
    random images: its logits spread around set means (x, y: 0 +- 1; w, h: 0 +- 0.5, so
    boxes near anchor size; objectness: -3 +- 2; classes: N(0, 1) +- 2).
    Each call returns a fresh copy (a model is built once per argument set, then cached).
    """
    key = (nc, tuple(names) if names is not None else None, layout, width, seed)
    return copy.deepcopy(_built_responsive_model(*key))


@functools.lru_cache(maxsize=32)
def _built_responsive_model(
    nc: int, names: tuple[str, ...] | None, layout: str, width: float, seed: int
) -> DetectionModel:
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    spec = yolov5_spec("n", nc, layout, width_multiple=width)
    model = build_model(spec, list(names) if names is not None else None).eval()
    head = model.head
    head_convs = {id(conv) for conv in head.m}
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d) and id(module) not in head_convs:
                fan_in = module.weight[0].numel()
                module.weight.normal_(0, 1.5 / math.sqrt(fan_in), generator=generator)
            elif isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(0.75 + 0.5 * torch.rand(n, generator=generator))
                module.bias.copy_(0.1 * torch.randn(n, generator=generator))
                module.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
                module.running_var.copy_(0.75 + 0.5 * torch.rand(n, generator=generator))
        features: list[list[torch.Tensor]] = []
        hook = head.register_forward_pre_hook(lambda _, args: features.append(args[0]))
        images = [random_image(128, 128, seed=seed + 1000 + i) for i in range(2)]
        model(torch.from_numpy(np.stack(images).transpose(0, 3, 1, 2) / 255.0).float())
        hook.remove()
        for conv, level in zip(head.m, features[0], strict=True):
            conv.weight.normal_(0, 1, generator=generator)
            conv.bias.zero_()
            logits = conv(level)
            mean, std = logits.mean(dim=(0, 2, 3)), logits.std(dim=(0, 2, 3)).clamp_min(1e-6)
            centre = torch.zeros(head.na, head.no)
            centre[:, 4] = -3.0
            centre[:, 5:] = torch.randn(head.na, nc, generator=generator)
            spread = torch.tensor([1.0, 1.0, 0.5, 0.5] + [2.0] * (1 + nc)).repeat(head.na)
            conv.weight.mul_((spread / std).view(-1, 1, 1, 1))
            conv.bias.copy_(-spread * mean / std + centre.view(-1))
    return model


def save_responsive_checkpoint(path: str | Path, **kw: Any) -> DetectionModel:
    """Save `responsive_model(**model kwargs)` as train.py would; return the model.

    Keyword arguments named like `responsive_model`'s parameters build the model; the others
    (`ema`, `model_class`, `extra`, `epoch`) go to `save_checkpoint`.
    """
    model_kw = {k: kw.pop(k) for k in _MODEL_KEYS if k in kw}
    model = responsive_model(**model_kw)
    save_checkpoint(path, model, **kw)
    return model


def fp16_reference(model: nn.Module) -> nn.Module:
    """What a checkpoint of `model` holds: fp16-rounded weights, computed in fp32, eval mode."""
    return copy.deepcopy(model).half().float().eval()


def pickled_globals(path: str | Path) -> set[str]:
    """Every `module.name` global referenced by the pickle inside a torch zip checkpoint."""
    with zipfile.ZipFile(path) as archive:
        [member] = [name for name in archive.namelist() if name.endswith("/data.pkl")]
        data = archive.read(member)
    found: set[str] = set()
    strings: list[str] = []
    memo: dict[int, Any] = {}
    for opcode, arg, _ in pickletools.genops(data):
        if opcode.name == "GLOBAL":
            found.add(arg.replace(" ", "."))
        elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
            found.add(f"{strings[-2]}.{strings[-1]}")
        elif isinstance(arg, str) and "UNICODE" in opcode.name:
            strings.append(arg)
        elif opcode.name in ("BINPUT", "LONG_BINPUT", "PUT") and strings:
            memo[arg] = strings[-1]
        elif opcode.name in ("BINGET", "LONG_BINGET", "GET") and isinstance(memo.get(arg), str):
            strings.append(memo[arg])
        elif opcode.name == "MEMOIZE" and strings:
            memo[len(memo)] = strings[-1]
    return found


_MISSING = object()


@contextlib.contextmanager
def classes_published_as(classes: dict[str, type]) -> Iterator[None]:
    """While active, each class pickles under the given `package.module.Name` path.

    Missing modules are registered as throw-away modules in `sys.modules`; modules already
    there (for example those of `upstream_class_paths`) get the attribute set. Everything
    is restored afterwards. Lets tests write pickles that reference foreign class paths.
    """
    created: list[str] = []
    replaced: list[tuple[types.ModuleType, str, Any]] = []
    renamed: list[tuple[type, str, str]] = []
    try:
        for dotted, cls in classes.items():
            module_name, _, name = dotted.rpartition(".")
            parts = module_name.split(".")
            for depth in range(1, len(parts) + 1):
                prefix = ".".join(parts[:depth])
                if prefix not in sys.modules:
                    sys.modules[prefix] = types.ModuleType(prefix)
                    created.append(prefix)
                    if depth > 1:
                        parent = sys.modules[".".join(parts[: depth - 1])]
                        setattr(parent, parts[depth - 1], sys.modules[prefix])
            module = sys.modules[module_name]
            replaced.append((module, name, getattr(module, name, _MISSING)))
            setattr(module, name, cls)
            renamed.append((cls, cls.__module__, cls.__qualname__))
            cls.__module__, cls.__qualname__ = module_name, name
        yield
    finally:
        for cls, module_name, qualname in reversed(renamed):
            cls.__module__, cls.__qualname__ = module_name, qualname
        for module, name, previous in reversed(replaced):
            if previous is _MISSING:
                delattr(module, name)
            else:
                setattr(module, name, previous)
        for prefix in reversed(created):
            sys.modules.pop(prefix, None)


def random_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A reproducible HxWx3 uint8 BGR image with some structure (blocks of colour and noise)."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(max(height // 16, 1) + 1, max(width // 16, 1) + 1, 3))
    image = np.kron(blocks, np.ones((16, 16, 1)))[:height, :width]
    noise = rng.integers(-20, 21, size=(height, width, 3))
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def jpeg(height: int = 120, width: int = 160, seed: int = 0) -> bytes:
    """A JPEG of random pixels."""
    image = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    return cv2.imencode(".jpg", image)[1].tobytes()


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (a decompression bomb's calling card)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def v2_body(*images: bytes, **extra: Any) -> dict[str, Any]:
    """A V2 JSON request with `images` as base64 BYTES; `extra` adds top-level keys."""
    data = [base64.b64encode(b).decode() for b in images]
    return {
        "inputs": [{"name": "image", "shape": [len(data)], "datatype": "BYTES", "data": data}],
        **extra,
    }


# The `torch-model-archiver` command: its console script runs this module's entry point.
ARCHIVER = [sys.executable, "-m", "model_archiver.model_packaging"]
ARCHIVE_SUFFIXES = {"default": ".mar", "tgz": ".tar.gz", "no-archive": ""}


def loud_handler(path: Path, marker: Path) -> Path:
    """A TorchServe handler file that creates `marker` and fails if it is ever imported."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "import pathlib\n"
        f"pathlib.Path({str(marker)!r}).write_text('imported')\n"
        "raise RuntimeError('this handler must never be imported')\n"
    )
    return path


def make_archive(
    serialized: Path | None,
    handler: Path,
    store: Path,
    archive_format: str = "default",
    name: str = "servemodel",
    version: str = "1.0",
    extra: tuple[str, ...] = (),
) -> Path:
    """Run the real torch-model-archiver as the TorchServe YOLOv5 tutorial does; return the
    archive it wrote into `store`."""
    store.mkdir(parents=True, exist_ok=True)
    command = [*ARCHIVER, "--model-name", name, "--version", version]
    command += ["--handler", str(handler), "--export-path", str(store)]
    command += ["--archive-format", archive_format, *extra]
    if serialized is not None:
        command += ["--serialized-file", str(serialized)]
    scratch = store.parent / "archiver-tmp"  # it stages files in $TMPDIR/<name>
    scratch.mkdir(exist_ok=True)
    subprocess.run(command, check=True, env={**os.environ, "TMPDIR": str(scratch)})
    return store / f"{name}{ARCHIVE_SUFFIXES[archive_format]}"
