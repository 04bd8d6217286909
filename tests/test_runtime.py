"""The YOLOv5-compatible runtime: head decoding, layer semantics, architectures."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from predictor.runtime import Detect, DetectionModel, fuse_batchnorm, layers
from predictor.runtime.architecture import ANCHORS_P5, ANCHORS_P6, build_model, yolov5_spec
from tests.support import responsive_model


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def constant_head(anchors_px: list[list[float]], stride: float, logits: list[float]) -> Detect:
    """A one-level Detect (nc=1) whose 1x1 conv ignores its input and emits `logits`."""
    head = Detect(nc=1, anchors=anchors_px, ch=[4])
    head.stride = torch.tensor([stride])
    head.anchors /= stride  # YOLOv5 keeps anchors in grid units of their level
    conv = head.m[0]
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.copy_(torch.tensor(logits * head.na))
    return head.eval()


def test_detect_decodes_every_cell_as_hand_computed() -> None:
    anchors = [[10.0, 13.0, 16.0, 30.0]]  # two anchors, pixels
    probs = {"x": 0.75, "y": 0.25, "w": 0.5, "h": 0.75, "obj": 0.9, "cls": 0.6}
    head = constant_head(anchors, 8.0, [logit(p) for p in probs.values()])
    ny, nx = 2, 3  # not square, so swapped x/y would show
    with torch.no_grad():
        out = head([torch.randn(1, 4, ny, nx)])
    assert out.shape == (1, 2 * ny * nx, 6)
    for a, (anchor_w, anchor_h) in enumerate([(10.0, 13.0), (16.0, 30.0)]):
        for gy in range(ny):
            for gx in range(nx):
                row = out[0, a * ny * nx + gy * nx + gx]
                expected = [
                    (2 * 0.75 + gx - 0.5) * 8,  # x = (2 sx + gx - 0.5) * stride
                    (2 * 0.25 + gy - 0.5) * 8,
                    (2 * 0.5) ** 2 * anchor_w,  # w = (2 sw)^2 * anchor (pixels)
                    (2 * 0.75) ** 2 * anchor_h,
                    0.9,
                    0.6,
                ]
                torch.testing.assert_close(row, torch.tensor(expected), atol=1e-5, rtol=1e-5)


def test_detect_training_mode_returns_raw_logits_per_level() -> None:
    logits = [0.1, -0.2, 0.3, -0.4, 0.5, -0.6]
    head = constant_head([[10.0, 13.0, 16.0, 30.0, 33.0, 23.0]], 16.0, logits).train()
    levels = head([torch.randn(2, 4, 3, 5)])
    assert isinstance(levels, list) and len(levels) == 1
    assert levels[0].shape == (2, 3, 3, 5, 6)  # (bs, na, ny, nx, 5 + nc)
    torch.testing.assert_close(levels[0][1, 2, 2, 4], torch.tensor(logits))


def test_detect_concatenates_levels_in_order_with_their_strides() -> None:
    torch.manual_seed(0)
    head = Detect(nc=2, anchors=[[10, 13], [30, 61]], ch=[4, 4])
    head.stride = torch.tensor([8.0, 16.0])
    head.anchors /= head.stride.view(-1, 1, 1)
    for conv in head.m:
        nn.init.zeros_(conv.weight)
        nn.init.zeros_(conv.bias)  # every sigmoid 0.5: x = (gx + 0.5) * stride, w = anchor
    with torch.no_grad():
        out = head.eval()([torch.randn(1, 4, 4, 4), torch.randn(1, 4, 2, 2)])
    assert out.shape == (1, 16 + 4, 7)
    level0, level1 = out[0, :16], out[0, 16:]
    torch.testing.assert_close(level0[5, :4], torch.tensor([12.0, 12.0, 10.0, 13.0]))  # (1, 1)
    torch.testing.assert_close(level1[3, :4], torch.tensor([24.0, 24.0, 30.0, 61.0]))  # (1, 1)


def test_detect_ignores_stale_cached_grids() -> None:
    model = responsive_model()
    x = torch.rand(1, 3, 96, 128)
    with torch.no_grad():
        expected = model(x)
        head = model.head
        head.grid = [torch.full((1, 3, 2, 2, 2), 1e4) for _ in range(head.nl)]
        head.anchor_grid = [torch.full((1, 3, 2, 2, 2), -7.0) for _ in range(head.nl)]
        actual = model(x)
    torch.testing.assert_close(actual, expected)


def test_focus_stacks_pixel_phases_in_yolov5_order() -> None:
    focus = layers.Focus(1, 4, k=1, act=False).eval()
    with torch.no_grad():
        focus.conv.conv.weight.copy_(torch.eye(4).view(4, 4, 1, 1))
    focus.conv.bn.eps = 0.0
    image = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # a b / c d
    with torch.no_grad():
        out = focus(image)
    # channels: (even row, even col), (odd row, even col), (even row, odd col), (odd, odd)
    torch.testing.assert_close(out.view(-1), torch.tensor([1.0, 3.0, 2.0, 4.0]))


def test_sppf_equals_spp_with_kernels_5_9_13() -> None:
    torch.manual_seed(0)
    sppf = layers.SPPF(16, 8, 5).eval()
    spp = layers.SPP(16, 8, (5, 9, 13)).eval()
    spp.load_state_dict(sppf.state_dict())
    x = torch.randn(2, 16, 20, 20)
    with torch.no_grad():
        torch.testing.assert_close(sppf(x), spp(x))


@pytest.mark.parametrize(
    ("c1", "c2", "shortcut", "adds"),
    [(8, 8, True, True), (8, 8, False, False), (8, 16, True, False)],
)
def test_bottleneck_residual_only_when_shapes_match(c1, c2, shortcut, adds) -> None:
    block = layers.Bottleneck(c1, c2, shortcut).eval()
    assert block.add is adds
    nn.init.zeros_(block.cv2.conv.weight)  # the branch then yields SiLU(0) = 0
    x = torch.randn(1, c1, 6, 6)
    with torch.no_grad():
        out = block(x)
    torch.testing.assert_close(out, x if adds else torch.zeros(1, c2, 6, 6))


def test_dwconv_groups_are_gcd_of_channels() -> None:
    assert layers.DWConv(12, 18, 3).conv.groups == 6
    assert layers.DWConv(16, 16, 3).conv.groups == 16


@pytest.mark.parametrize("layout", ["v6", "v3"])
def test_fuse_batchnorm_keeps_outputs_and_removes_conv_bn(layout: str) -> None:
    model = responsive_model(layout=layout)  # non-trivial BatchNorm statistics
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        expected = model(x)
        fused = fuse_batchnorm(copy.deepcopy(model))
        actual = fused(x)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)
    convs = [m for m in fused.modules() if isinstance(m, layers.Conv)]
    assert convs and all("bn" not in m._modules and m.conv.bias is not None for m in convs)


@pytest.mark.parametrize(
    ("layout", "strides", "anchors", "typical"),
    [
        ("v6", [8, 16, 32], ANCHORS_P5, {"Conv", "C3", "SPPF", "Concat"}),
        ("v5", [8, 16, 32], ANCHORS_P5, {"Focus", "C3", "SPP"}),
        ("v3", [8, 16, 32], ANCHORS_P5, {"Focus", "BottleneckCSP", "SPP"}),
        ("v6-p6", [8, 16, 32, 64], ANCHORS_P6, {"Conv", "C3", "SPPF"}),
    ],
)
def test_built_architectures(layout, strides, anchors, typical) -> None:
    model = build_model(yolov5_spec("n", 4, layout, width_multiple=0.125))
    head = model.head
    assert head.stride.tolist() == strides
    assert model.stride.tolist() == strides
    # anchors are stored in grid units of their level, as YOLOv5 stores them
    pixels = (head.anchors * head.stride.view(-1, 1, 1)).view(len(strides), -1)
    torch.testing.assert_close(pixels, torch.tensor(anchors, dtype=torch.float32))
    types = {m.type for m in model.model}
    assert {f"models.common.{name}" for name in typical} <= types
    assert "models.yolo.Detect" in types
    if layout == "v3":
        assert "models.common.C3" not in types
    if layout == "v6":
        assert not {"models.common.Focus", "models.common.SPP"} & types
        stem = model.model[0].conv
        assert (stem.kernel_size, stem.stride, stem.padding) == ((6, 6), (2, 2), (2, 2))
    assert [m.i for m in model.model] == list(range(len(model.model)))
    model.eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 128, 128))
    cells = sum((128 // s) ** 2 for s in strides)
    assert out.shape == (1, 3 * cells, 5 + 4)


def test_v6_layer_wiring_matches_yolov5s() -> None:
    model = build_model(yolov5_spec("n", 80, "v6", width_multiple=0.125))
    assert model.save == [4, 6, 10, 14, 17, 20, 23]
    assert model.model[-1].f == [17, 20, 23]
    assert isinstance(model, DetectionModel) and len(model.model) == 25


@pytest.mark.parametrize(
    ("size", "layout", "expected"),
    [
        ("n", "v6", "1872157"),  # YOLOv5n summary (v6.0+ yaml, nc=80)
        ("s", "v6", "7235389"),  # YOLOv5s summary (v6.0+)
        ("s", "v5", "7276605"),  # yolov5s.yaml of v4.0/v5.0 (Focus + SPP)
        ("s", "v3", "7.46816e+06"),  # yolov5s.yaml of v2.0/v3.0 (BottleneckCSP)
    ],
)
def test_parameter_counts_match_upstream_model_summaries(size, layout, expected) -> None:
    model = build_model(yolov5_spec(size, 80, layout))
    count = sum(p.numel() for p in model.parameters())
    assert (f"{count:g}" if "e" in expected else str(count)) == expected


def test_build_model_rejects_wrong_number_of_names() -> None:
    with pytest.raises(ValueError, match="names"):
        build_model(yolov5_spec("n", 3, "v6", width_multiple=0.125), ["a", "b"])
