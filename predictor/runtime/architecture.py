"""Build fresh YOLOv5 detection networks from an architecture description.

The description has the shape of YOLOv5's model YAML (`depth_multiple`, `width_multiple`,
`anchors`, `backbone`, `head`, each layer `[from, repeats, module, args]`), so a network
built here has the same layers, attribute names and `yaml` as one built by YOLOv5.
Used by the tests (checkpoints of several eras) and by the demo-model trainer.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from . import layers
from .detection import Detect, DetectionModel

Spec = dict[str, Any]

_BLOCKS_WITH_REPEATS = (layers.BottleneckCSP, layers.C3, layers.C3Ghost)
_CHANNEL_MODULES = (
    layers.Conv,
    layers.DWConv,
    layers.Bottleneck,
    layers.BottleneckCSP,
    layers.C3,
    layers.SPP,
    layers.SPPF,
    layers.Focus,
    layers.GhostConv,
    layers.GhostBottleneck,
    layers.C3Ghost,
)

ANCHORS_P5 = [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]]
ANCHORS_P6 = [
    [19, 27, 44, 40, 38, 94],
    [96, 68, 86, 152, 180, 137],
    [140, 301, 303, 264, 238, 542],
    [436, 615, 739, 380, 925, 792],
]

_UP = ["nn.Upsample", [None, 2, "nearest"]]

# YOLOv5 v6.0+ (6x6 stem convolution, SPPF) at P3-P5.
_HEAD_P5 = [
    [-1, 1, "Conv", [512, 1, 1]],
    [-1, 1, *_UP],
    [[-1, 6], 1, "Concat", [1]],
    [-1, 3, "{csp}", [512, False]],
    [-1, 1, "Conv", [256, 1, 1]],
    [-1, 1, *_UP],
    [[-1, 4], 1, "Concat", [1]],
    [-1, 3, "{csp}", [256, False]],
    [-1, 1, "Conv", [256, 3, 2]],
    [[-1, 14], 1, "Concat", [1]],
    [-1, 3, "{csp}", [512, False]],
    [-1, 1, "Conv", [512, 3, 2]],
    [[-1, 10], 1, "Concat", [1]],
    [-1, 3, "{csp}", [1024, False]],
    [[17, 20, 23], 1, "Detect", ["nc", "anchors"]],
]
_BACKBONE_V6 = [
    [-1, 1, "Conv", [64, 6, 2, 2]],
    [-1, 1, "Conv", [128, 3, 2]],
    [-1, 3, "C3", [128]],
    [-1, 1, "Conv", [256, 3, 2]],
    [-1, 6, "C3", [256]],
    [-1, 1, "Conv", [512, 3, 2]],
    [-1, 9, "C3", [512]],
    [-1, 1, "Conv", [1024, 3, 2]],
    [-1, 3, "C3", [1024]],
    [-1, 1, "SPPF", [1024, 5]],
]
# YOLOv5 v1.0-v5.0 (Focus stem, SPP before the last CSP block).
_BACKBONE_FOCUS = [
    [-1, 1, "Focus", [64, 3]],
    [-1, 1, "Conv", [128, 3, 2]],
    [-1, 3, "{csp}", [128]],
    [-1, 1, "Conv", [256, 3, 2]],
    [-1, 9, "{csp}", [256]],
    [-1, 1, "Conv", [512, 3, 2]],
    [-1, 9, "{csp}", [512]],
    [-1, 1, "Conv", [1024, 3, 2]],
    [-1, 1, "SPP", [1024, [5, 9, 13]]],
    [-1, 3, "{csp}", [1024, False]],
]
# YOLOv5 v6.0+ P6 models (*6), four levels at strides 8-64.
_BACKBONE_P6 = [
    [-1, 1, "Conv", [64, 6, 2, 2]],
    [-1, 1, "Conv", [128, 3, 2]],
    [-1, 3, "C3", [128]],
    [-1, 1, "Conv", [256, 3, 2]],
    [-1, 6, "C3", [256]],
    [-1, 1, "Conv", [512, 3, 2]],
    [-1, 9, "C3", [512]],
    [-1, 1, "Conv", [768, 3, 2]],
    [-1, 3, "C3", [768]],
    [-1, 1, "Conv", [1024, 3, 2]],
    [-1, 3, "C3", [1024]],
    [-1, 1, "SPPF", [1024, 5]],
]
_HEAD_P6 = [
    [-1, 1, "Conv", [768, 1, 1]],
    [-1, 1, *_UP],
    [[-1, 8], 1, "Concat", [1]],
    [-1, 3, "C3", [768, False]],
    [-1, 1, "Conv", [512, 1, 1]],
    [-1, 1, *_UP],
    [[-1, 6], 1, "Concat", [1]],
    [-1, 3, "C3", [512, False]],
    [-1, 1, "Conv", [256, 1, 1]],
    [-1, 1, *_UP],
    [[-1, 4], 1, "Concat", [1]],
    [-1, 3, "C3", [256, False]],
    [-1, 1, "Conv", [256, 3, 2]],
    [[-1, 20], 1, "Concat", [1]],
    [-1, 3, "C3", [512, False]],
    [-1, 1, "Conv", [512, 3, 2]],
    [[-1, 16], 1, "Concat", [1]],
    [-1, 3, "C3", [768, False]],
    [-1, 1, "Conv", [768, 3, 2]],
    [[-1, 12], 1, "Concat", [1]],
    [-1, 3, "C3", [1024, False]],
    [[23, 26, 29, 32], 1, "Detect", ["nc", "anchors"]],
]

SIZES = {
    "n": (0.33, 0.25),
    "s": (0.33, 0.50),
    "m": (0.67, 0.75),
    "l": (1.0, 1.0),
    "x": (1.33, 1.25),
}
LAYOUTS = {
    "v6": (_BACKBONE_V6, _HEAD_P5, ANCHORS_P5, "C3"),
    "v6-p6": (_BACKBONE_P6, _HEAD_P6, ANCHORS_P6, "C3"),
    "v5": (_BACKBONE_FOCUS, _HEAD_P5, ANCHORS_P5, "C3"),
    "v3": (_BACKBONE_FOCUS, _HEAD_P5, ANCHORS_P5, "BottleneckCSP"),
}


def yolov5_spec(
    size: str = "s",
    nc: int = 80,
    layout: str = "v6",
    depth_multiple: float | None = None,
    width_multiple: float | None = None,
) -> Spec:
    """The architecture of an official YOLOv5 model (`yolov5{size}` in a release `layout`)."""
    backbone, head, anchors, csp = LAYOUTS[layout]
    depth, width = SIZES[size]

    def expand(rows: list[list[Any]]) -> list[list[Any]]:
        return [[f, n, m.format(csp=csp), copy.deepcopy(a)] for f, n, m, a in rows]

    return {
        "nc": nc,
        "depth_multiple": depth if depth_multiple is None else depth_multiple,
        "width_multiple": width if width_multiple is None else width_multiple,
        "anchors": copy.deepcopy(anchors),
        "backbone": expand(backbone),
        "head": expand(head),
    }


def make_divisible(x: float, divisor: int) -> int:
    return math.ceil(x / divisor) * divisor


def build_model(spec: Spec, names: list[str] | None = None, channels: int = 3) -> DetectionModel:
    """A randomly initialised DetectionModel with strides, anchors and biases set as YOLOv5 does."""
    nc = int(spec["nc"])
    names = names or [str(i) for i in range(nc)]
    if len(names) != nc:
        raise ValueError(f"{len(names)} class names for nc={nc}")
    sequence, save = _build_layers(spec, channels)
    model = DetectionModel(sequence, save, names)
    model.yaml = copy.deepcopy(spec)
    _initialise(model, channels)
    return model


def _module_class(name: str) -> type[nn.Module]:
    if name == "nn.Upsample":
        return nn.Upsample
    if name == "Detect":
        return Detect
    return getattr(layers, name)


def _build_layers(spec: Spec, channels: int) -> tuple[nn.Sequential, list[int]]:
    nc, anchors = spec["nc"], spec["anchors"]
    gd, gw = spec["depth_multiple"], spec["width_multiple"]
    no = (len(anchors[0]) // 2) * (nc + 5)
    ch = [channels]
    modules: list[nn.Module] = []
    save: list[int] = []
    for i, (f, n, name, raw_args) in enumerate(spec["backbone"] + spec["head"]):
        cls = _module_class(name)
        args = [nc if a == "nc" else anchors if a == "anchors" else a for a in raw_args]
        n = max(round(n * gd), 1) if n > 1 else n
        if cls in _CHANNEL_MODULES:
            c1, c2 = ch[f], args[0]
            if c2 != no:
                c2 = make_divisible(c2 * gw, 8)
            args = [c1, c2, *args[1:]]
            if cls in _BLOCKS_WITH_REPEATS:
                args.insert(2, n)
                n = 1
        elif cls is layers.Concat:
            c2 = sum(ch[x] for x in f)
        elif cls is Detect:
            args.append([ch[x] for x in f])
        else:
            c2 = ch[f]
        module = nn.Sequential(*(cls(*args) for _ in range(n))) if n > 1 else cls(*args)
        module.i, module.f, module.type = i, f, _type_name(cls)
        module.np = sum(p.numel() for p in module.parameters())
        save.extend(x % i for x in ([f] if isinstance(f, int) else f) if x != -1)
        modules.append(module)
        if i == 0:
            ch = []
        ch.append(c2)
    return nn.Sequential(*modules), sorted(save)


def _type_name(cls: type[nn.Module]) -> str:
    if cls is nn.Upsample:
        return "torch.nn.modules.upsampling.Upsample"
    module = "models.yolo" if cls is Detect else "models.common"
    return f"{module}.{cls.__name__}"


def _initialise(model: DetectionModel, channels: int) -> None:
    head = model.head
    probe = 256
    model.train()
    with torch.no_grad():
        levels = model(torch.zeros(1, channels, probe, probe))
    head.stride = torch.tensor([probe / x.shape[-3] for x in levels])
    head.anchors /= head.stride.view(-1, 1, 1)
    _fix_anchor_order(head)
    model.stride = head.stride
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eps = 1e-3
            module.momentum = 0.03
        elif isinstance(module, nn.Hardswish | nn.LeakyReLU | nn.ReLU | nn.ReLU6 | nn.SiLU):
            module.inplace = True
    _initialise_head_biases(head)


def _fix_anchor_order(head: Detect) -> None:
    """Anchors must grow with stride; reverse them when a spec lists them the other way."""
    area = head.anchors.prod(-1).mean(-1).view(-1)
    if (
        area[-1] - area[0]
        and (area[-1] - area[0]).sign() != (head.stride[-1] - head.stride[0]).sign()
    ):
        head.anchors[:] = head.anchors.flip(0)


def _initialise_head_biases(head: Detect) -> None:
    """Objectness prior of ~8 objects per 640 image, class prior 0.6/nc."""
    for conv, stride in zip(head.m, head.stride, strict=True):
        bias = conv.bias.view(head.na, -1)
        with torch.no_grad():
            bias[:, 4] += math.log(8 / (640 / float(stride)) ** 2)
            bias[:, 5 : 5 + head.nc] += math.log(0.6 / (head.nc - 0.99))
        conv.bias = nn.Parameter(bias.view(-1), requires_grad=True)
