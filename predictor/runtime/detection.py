"""The YOLOv5 detection network and its anchor-based head (the `models.yolo` types)."""

from __future__ import annotations

import torch
from torch import nn

from .layers import Conv


class Detect(nn.Module):
    """Anchor-based head: one 1x1 convolution per pyramid level, decoded to pixel boxes.

    Pickled attributes used: `m` (the convolutions), `na`, `no`, `nl`, `anchors`
    (per-level anchors in grid units) and `stride`. Grids are always rebuilt here:
    checkpoints may carry stale cached `grid`/`anchor_grid` values.
    """

    def __init__(self, nc: int, anchors: list[list[float]], ch: list[int]) -> None:
        super().__init__()
        self.nc = nc
        self.no = nc + 5
        self.nl = len(anchors)
        self.na = len(anchors[0]) // 2
        self.grid = [torch.empty(0) for _ in range(self.nl)]
        self.anchor_grid = [torch.empty(0) for _ in range(self.nl)]
        self.register_buffer("anchors", torch.tensor(anchors).float().view(self.nl, -1, 2))
        self.m = nn.ModuleList(nn.Conv2d(c, self.no * self.na, 1) for c in ch)
        self.inplace = True
        self.stride = torch.ones(self.nl)

    def raw_outputs(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per level (bs, na, ny, nx, no) logits, the form the training loss consumes."""
        outputs = []
        for conv, x in zip(self.m, features, strict=True):
            x = conv(x)
            bs, _, ny, nx = x.shape
            outputs.append(x.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous())
        return outputs

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        levels = self.raw_outputs(features)
        if self.training:
            return levels
        decoded = []
        for i, x in enumerate(levels):
            bs, _, ny, nx, _ = x.shape
            grid, anchor_grid = self._grids(i, nx, ny, x.dtype, x.device)
            y = x.sigmoid()
            xy = (y[..., 0:2] * 2 + grid) * self.stride[i]
            wh = (y[..., 2:4] * 2) ** 2 * anchor_grid
            decoded.append(torch.cat((xy, wh, y[..., 4:]), -1).view(bs, -1, self.no))
        return torch.cat(decoded, 1)

    def _grids(
        self, i: int, nx: int, ny: int, dtype: torch.dtype, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ys = torch.arange(ny, device=device, dtype=dtype)
        xs = torch.arange(nx, device=device, dtype=dtype)
        yv, xv = torch.meshgrid(ys, xs, indexing="ij")
        grid = torch.stack((xv, yv), 2).view(1, 1, ny, nx, 2) - 0.5
        anchors = self.anchors[i].to(device=device, dtype=dtype) * self.stride[i]
        anchor_grid = anchors.view(1, self.na, 1, 1, 2)
        return grid, anchor_grid


class DetectionModel(nn.Module):
    """A sequence of layers wired by each layer's `f` (input indices, -1 = previous output).

    Pickled attributes used: `model` (nn.Sequential whose layers carry `i` and `f`),
    `save` (indices whose outputs later layers read), `names`, `stride`.
    """

    def __init__(self, layers: nn.Sequential, save: list[int], names: list[str]) -> None:
        super().__init__()
        self.model = layers
        self.save = sorted(save)
        self.names = names
        self.nc = len(names)
        self.stride = torch.ones(1)

    @property
    def head(self) -> Detect:
        head = self.model[-1]
        if not isinstance(head, Detect):
            raise TypeError(f"the last layer is {type(head).__name__}, not a Detect head")
        return head

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        outputs: list[torch.Tensor | None] = []
        for layer in self.model:
            if layer.f != -1:
                if isinstance(layer.f, int):
                    x = outputs[layer.f]
                else:
                    x = [x if j == -1 else outputs[j] for j in layer.f]
            x = layer(x)
            outputs.append(x if layer.i in self.save else None)
        return x


def fuse_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every Conv's BatchNorm into its convolution (in float32), in place."""
    for module in model.modules():
        if isinstance(module, Conv) and "bn" in module._modules:
            module.conv = _fused_conv(module.conv, module.bn)
            del module.bn
    return model


def _fused_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=True,
    )
    with torch.no_grad():
        weight = conv.weight.float()
        scale = bn.weight.float() / torch.sqrt(bn.running_var.float() + bn.eps)
        fused.weight.copy_(weight * scale.view(-1, 1, 1, 1))
        conv_bias = conv.bias.float() if conv.bias is not None else torch.zeros_like(scale)
        fused.bias.copy_(bn.bias.float() + (conv_bias - bn.running_mean.float()) * scale)
    return fused.requires_grad_(False)
