"""The YOLOv5 detection loss, written from its published description.

Target assignment: a ground-truth box is matched, on every pyramid level, to each anchor
whose width and height are both within a factor `anchor_t` of the box's. A matched box is
the responsibility of the grid cell holding its centre and of the two neighbouring cells
its centre is closest to (one horizontally, one vertically: those less than half a cell
away), since the decoded centre `sigmoid * 2 - 0.5` ranges over (-0.5, 1.5) of a cell.

Loss terms: box = 1 - CIoU between the decoded prediction and the target; objectness =
BCE against the detached, non-negative IoU of that prediction (0 for every unmatched
anchor), weighted per level by `balance`; class = BCE against one-hot class targets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..runtime.detection import Detect

# hyp.scratch-low values of the loss gains, before the scaling described in `LossGains`.
BOX_GAIN, OBJ_GAIN, CLS_GAIN = 0.05, 1.0, 0.5
# Candidate cells: the centre cell and its four neighbours, as (dx, dy) in cells.
_NEIGHBOURS = torch.tensor([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], dtype=torch.float32)


@dataclass(frozen=True)
class LossGains:
    """The weights of the three terms, scaled as YOLOv5 scales them for the model and data:
    box by 3 / levels, class by classes / 80 * 3 / levels, objectness by
    (img_size / 640)^2 * 3 / levels."""

    box: float
    obj: float
    cls: float

    @classmethod
    def scaled(
        cls,
        levels: int,
        num_classes: int,
        img_size: int,
        box: float = BOX_GAIN,
        obj: float = OBJ_GAIN,
        cls_: float = CLS_GAIN,
    ) -> LossGains:
        per_level = 3.0 / levels
        return cls(
            box=box * per_level,
            obj=obj * (img_size / 640) ** 2 * per_level,
            cls=cls_ * num_classes / 80 * per_level,
        )


def bbox_ciou(box1: torch.Tensor, box2: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Complete IoU of matching rows of two (n, 4) tensors of centre x, y, width, height.

    CIoU = IoU - d^2 / c^2 - alpha * v, with d the distance between the centres, c the
    diagonal of the smallest box enclosing both, v = 4 / pi^2 * (atan(w2 / h2) - atan(w1 /
    h1))^2 the aspect-ratio discrepancy and alpha = v / (v - IoU + 1) its weight (treated
    as a constant in the gradient, as in the CIoU paper).
    """
    (x1, y1, w1, h1), (x2, y2, w2, h2) = box1.unbind(-1), box2.unbind(-1)
    h1, h2 = h1 + eps, h2 + eps
    left1, right1, top1, bottom1 = x1 - w1 / 2, x1 + w1 / 2, y1 - h1 / 2, y1 + h1 / 2
    left2, right2, top2, bottom2 = x2 - w2 / 2, x2 + w2 / 2, y2 - h2 / 2, y2 + h2 / 2
    inter_w = (torch.minimum(right1, right2) - torch.maximum(left1, left2)).clamp(min=0)
    inter_h = (torch.minimum(bottom1, bottom2) - torch.maximum(top1, top2)).clamp(min=0)
    inter = inter_w * inter_h
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    enclose_w = torch.maximum(right1, right2) - torch.minimum(left1, left2)
    enclose_h = torch.maximum(bottom1, bottom2) - torch.minimum(top1, top2)
    diagonal2 = enclose_w**2 + enclose_h**2 + eps
    distance2 = (x2 - x1) ** 2 + (y2 - y1) ** 2
    v = (4 / math.pi**2) * (torch.atan(w2 / h2) - torch.atan(w1 / h1)) ** 2
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return iou - (distance2 / diagonal2 + v * alpha)


@dataclass
class LevelTargets:
    """The predictions responsible for targets on one pyramid level."""

    image: torch.Tensor  # (m,) long: image index in the batch
    anchor: torch.Tensor  # (m,) long: anchor index
    cell_y: torch.Tensor  # (m,) long
    cell_x: torch.Tensor  # (m,) long
    box: torch.Tensor  # (m, 4): x, y relative to the cell's corner, w, h, in grid units
    anchor_wh: torch.Tensor  # (m, 2): the matched anchor, grid units
    cls: torch.Tensor  # (m,) long


def build_targets(
    targets: torch.Tensor,
    anchors: torch.Tensor,
    grid_shapes: list[tuple[int, int]],
    anchor_t: float = 4.0,
    neighbour_offset: float = 0.5,
) -> list[LevelTargets]:
    """Assign targets (n, 6: image, class, x, y, w, h normalised to [0, 1]) to predictions.

    `anchors` is (levels, anchors, 2) in grid units of each level (`Detect.anchors`);
    `grid_shapes` the (ny, nx) of each level.
    """
    device = targets.device
    neighbours = _NEIGHBOURS.to(device) * neighbour_offset
    levels = []
    for level, (ny, nx) in enumerate(grid_shapes):
        level_anchors = anchors[level].to(device)
        grid_size = torch.tensor([nx, ny, nx, ny], device=device, dtype=targets.dtype)
        boxes = targets[:, 2:6] * grid_size  # (n, 4) in grid units
        # every (anchor, target) pair whose width and height ratios are within anchor_t
        ratio = boxes[None, :, 2:4] / level_anchors[:, None, :]  # (na, n, 2)
        worst = torch.maximum(ratio, 1 / ratio).amax(-1)
        anchor_idx, target_idx = torch.nonzero(worst < anchor_t, as_tuple=True)
        matched = boxes[target_idx]
        centre = matched[:, :2]
        # the neighbours whose side the centre is nearer than `neighbour_offset` to, unless
        # that neighbour would lie outside the grid
        frac = centre % 1
        from_far_edge = grid_size[:2] - centre
        near_low = (frac < neighbour_offset) & (centre > 1)
        near_high = ((from_far_edge % 1) < neighbour_offset) & (from_far_edge > 1)
        use = torch.stack(
            (
                torch.ones_like(near_low[:, 0]),
                near_low[:, 0],  # the cell to the left  (offset +0.5 subtracted below)
                near_low[:, 1],  # the cell above
                near_high[:, 0],  # the cell to the right
                near_high[:, 1],  # the cell below
            )
        )  # (5, m)
        choice, pair = torch.nonzero(use, as_tuple=True)
        shifted = centre[pair] - neighbours[choice]
        cell = shifted.long()
        cell_x = cell[:, 0].clamp(0, nx - 1)
        cell_y = cell[:, 1].clamp(0, ny - 1)
        target_rows = targets[target_idx[pair]]
        a = anchor_idx[pair]
        levels.append(
            LevelTargets(
                image=target_rows[:, 0].long(),
                anchor=a,
                cell_y=cell_y,
                cell_x=cell_x,
                box=torch.cat(
                    (centre[pair] - torch.stack((cell_x, cell_y), 1), matched[pair, 2:4]), 1
                ),
                anchor_wh=level_anchors[a],
                cls=target_rows[:, 1].long(),
            )
        )
    return levels


class YoloLoss:
    """Loss of a YOLOv5 `Detect` head's raw outputs against a batch of targets."""

    def __init__(
        self,
        head: Detect,
        img_size: int,
        gains: LossGains | None = None,
        anchor_t: float = 4.0,
        balance: tuple[float, ...] | None = None,
    ) -> None:
        self.anchors = head.anchors.detach().clone()
        self.nc = head.nc
        self.nl = head.nl
        self.gains = gains or LossGains.scaled(self.nl, self.nc, img_size)
        self.anchor_t = anchor_t
        self.balance = balance or {3: (4.0, 1.0, 0.4)}.get(
            self.nl, (4.0, 1.0, 0.25, 0.06, 0.02)[: self.nl]
        )
        self.bce = nn.BCEWithLogitsLoss()

    def __call__(
        self, outputs: list[torch.Tensor], targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(total loss scaled by the batch size, detached [box, obj, cls] per-image terms)."""
        device = outputs[0].device
        batch = outputs[0].shape[0]
        grid_shapes = [(x.shape[2], x.shape[3]) for x in outputs]
        assigned = build_targets(targets, self.anchors, grid_shapes, self.anchor_t)
        box_loss = torch.zeros((), device=device)
        obj_loss = torch.zeros((), device=device)
        cls_loss = torch.zeros((), device=device)
        for level, (pred, t) in enumerate(zip(outputs, assigned, strict=True)):
            objectness = torch.zeros(pred.shape[:4], dtype=pred.dtype, device=device)
            if len(t.image):
                chosen = pred[t.image, t.anchor, t.cell_y, t.cell_x]  # (m, 5 + nc)
                xy = chosen[:, 0:2].sigmoid() * 2 - 0.5
                wh = (chosen[:, 2:4].sigmoid() * 2) ** 2 * t.anchor_wh
                ciou = bbox_ciou(torch.cat((xy, wh), 1), t.box)
                box_loss = box_loss + (1.0 - ciou).mean()
                objectness[t.image, t.anchor, t.cell_y, t.cell_x] = (
                    ciou.detach().clamp(min=0).to(objectness.dtype)
                )
                if self.nc > 1:
                    one_hot = torch.zeros_like(chosen[:, 5:])
                    one_hot[torch.arange(len(t.cls), device=device), t.cls] = 1.0
                    cls_loss = cls_loss + self.bce(chosen[:, 5:], one_hot)
            obj_loss = obj_loss + self.bce(pred[..., 4], objectness) * self.balance[level]
        box_loss = box_loss * self.gains.box
        obj_loss = obj_loss * self.gains.obj
        cls_loss = cls_loss * self.gains.cls
        total = (box_loss + obj_loss + cls_loss) * batch
        return total, torch.stack((box_loss, obj_loss, cls_loss)).detach()
