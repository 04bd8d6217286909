"""Training batches: scenes scaled to the network size, augmented, as YOLO targets.

A `TrainingSet` keeps each generated scene shrunk so its long side equals the training
size (what the letterbox at inference does), JPEG-encoded to save memory. A batch draws a
random scale and placement on a grey square canvas (so the network sees both letterboxed
and cropped views), random flips and an HSV jitter; boxes come from the exact outlines,
clipped to the canvas.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from ..imaging import PAD_COLOUR, to_network_layout
from ..synthetic import Scene, SceneConfig, generate_scene


@dataclass(frozen=True)
class AugmentConfig:
    scale: float = 0.4  # zoom in [1 - scale, 1 + scale] relative to the letterbox fit
    fliplr: float = 0.5
    flipud: float = 0.5  # the classes are symmetric under vertical flips too
    hsv_h: float = 0.015  # hue gain (fraction of the full circle)
    hsv_s: float = 0.7
    hsv_v: float = 0.4
    min_visible: float = 0.4  # drop an object cut by the canvas to less than this share


@dataclass
class _Stored:
    jpeg: np.ndarray
    classes: np.ndarray
    outlines: list[np.ndarray]


class TrainingSet:
    """`count` scenes of data set `seed`, stored at the training resolution."""

    def __init__(
        self,
        seed: int,
        count: int,
        img_size: int,
        scene_config: SceneConfig | None = None,
        augment: AugmentConfig | None = None,
    ) -> None:
        self.img_size = img_size
        self.augment = augment or AugmentConfig()
        scene_config = scene_config or SceneConfig()
        self.items: list[_Stored] = []
        for index in range(count):
            self.items.append(self._store(generate_scene(seed, index, scene_config)))

    def _store(self, scene: Scene) -> _Stored:
        height, width = scene.image.shape[:2]
        ratio = self.img_size / max(height, width)
        size = (max(1, round(width * ratio)), max(1, round(height * ratio)))
        image = cv2.resize(scene.image, size, interpolation=cv2.INTER_AREA)
        gain = np.array([size[0] / width, size[1] / height])
        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
        assert ok
        return _Stored(jpeg, scene.classes, [poly * gain for poly in scene.outlines])

    def __len__(self) -> int:
        return len(self.items)

    def sample(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """An augmented square image (BGR uint8) and its labels (n, 5): class, x, y, w, h
        normalised to [0, 1]."""
        item = self.items[index]
        image = cv2.imdecode(item.jpeg, cv2.IMREAD_COLOR)
        size = self.img_size
        aug = self.augment
        zoom = rng.uniform(1 - aug.scale, 1 + aug.scale)
        height, width = image.shape[:2]
        new_w, new_h = max(1, round(width * zoom)), max(1, round(height * zoom))
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        # place the picture on the canvas: anywhere if it fits, else crop a random window
        off_x = rng.uniform(0, size - new_w) if new_w <= size else -rng.uniform(0, new_w - size)
        off_y = rng.uniform(0, size - new_h) if new_h <= size else -rng.uniform(0, new_h - size)
        off_x, off_y = round(off_x), round(off_y)
        canvas = np.full((size, size, 3), PAD_COLOUR, np.uint8)
        src_x0, src_y0 = max(0, -off_x), max(0, -off_y)
        dst_x0, dst_y0 = max(0, off_x), max(0, off_y)
        copy_w = min(new_w - src_x0, size - dst_x0)
        copy_h = min(new_h - src_y0, size - dst_y0)
        canvas[dst_y0 : dst_y0 + copy_h, dst_x0 : dst_x0 + copy_w] = image[
            src_y0 : src_y0 + copy_h, src_x0 : src_x0 + copy_w
        ]
        gain = np.array([new_w / width, new_h / height])
        outlines = [poly * gain + (off_x, off_y) for poly in item.outlines]

        flip_x, flip_y = rng.random() < aug.fliplr, rng.random() < aug.flipud
        if flip_x:
            canvas = canvas[:, ::-1]
        if flip_y:
            canvas = canvas[::-1]
        labels = []
        for cls, poly in zip(item.classes, outlines, strict=True):
            clipped = clip_polygon(poly, 0, 0, size, size)
            if len(clipped) < 3 or polygon_area(clipped) < aug.min_visible * polygon_area(poly):
                continue
            x1, y1 = clipped.min(0)
            x2, y2 = clipped.max(0)
            if x2 - x1 < 2 or y2 - y1 < 2:
                continue
            if flip_x:
                x1, x2 = size - x2, size - x1
            if flip_y:
                y1, y2 = size - y2, size - y1
            labels.append([cls, (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1])
        canvas = hsv_jitter(np.ascontiguousarray(canvas), rng, aug.hsv_h, aug.hsv_s, aug.hsv_v)
        array = np.array(labels, dtype=np.float32).reshape(-1, 5)
        array[:, 1:] /= size
        return canvas, array

    def batches(
        self, batch_size: int, rng: np.random.Generator
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch in random order: (N, 3, S, S) RGB float images in [0, 1] and targets
        (M, 6): image index in the batch, class, x, y, w, h (normalised)."""
        order = rng.permutation(len(self))
        for start in range(0, len(order) - batch_size + 1, batch_size):
            images, targets = [], []
            for slot, index in enumerate(order[start : start + batch_size]):
                image, labels = self.sample(int(index), rng)
                images.append(to_network_layout(image))
                targets.append(np.concatenate([np.full((len(labels), 1), slot), labels], 1))
            yield (
                torch.from_numpy(np.stack(images)),
                torch.from_numpy(np.concatenate(targets, 0).astype(np.float32)),
            )

    def batches_per_epoch(self, batch_size: int) -> int:
        return len(self) // batch_size


def hsv_jitter(
    image: np.ndarray, rng: np.random.Generator, hue: float, saturation: float, value: float
) -> np.ndarray:
    """Random hue shift and saturation/value gains, applied through lookup tables."""
    if not (hue or saturation or value):
        return image
    gains = rng.uniform(-1, 1, 3) * (hue, saturation, value) + 1
    h, s, v = cv2.split(cv2.cvtColor(image, cv2.COLOR_BGR2HSV))
    levels = np.arange(256, dtype=np.float32)
    lut_h = ((levels * gains[0]) % 180).astype(np.uint8)
    lut_s = np.clip(levels * gains[1], 0, 255).astype(np.uint8)
    lut_v = np.clip(levels * gains[2], 0, 255).astype(np.uint8)
    merged = cv2.merge((cv2.LUT(h, lut_h), cv2.LUT(s, lut_s), cv2.LUT(v, lut_v)))
    return cv2.cvtColor(merged, cv2.COLOR_HSV2BGR)


def clip_polygon(polygon: np.ndarray, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """The part of a convex or simple polygon inside an axis-aligned rectangle
    (Sutherland-Hodgman: clip against each of the four edges in turn)."""
    points = [tuple(p) for p in polygon]
    for axis, bound, keep_below in ((0, x0, False), (0, x1, True), (1, y0, False), (1, y1, True)):
        if not points:
            break

        def inside(p: tuple[float, float], axis: int = axis, bound: float = bound,
                   keep_below: bool = keep_below) -> bool:  # fmt: skip
            return p[axis] <= bound if keep_below else p[axis] >= bound

        result = []
        for i, current in enumerate(points):
            previous = points[i - 1]
            if inside(current):
                if not inside(previous):
                    result.append(_crossing(previous, current, axis, bound))
                result.append(current)
            elif inside(previous):
                result.append(_crossing(previous, current, axis, bound))
        points = result
    return np.array(points, dtype=np.float64).reshape(-1, 2)


def _crossing(
    a: tuple[float, float], b: tuple[float, float], axis: int, bound: float
) -> tuple[float, float]:
    t = (bound - a[axis]) / (b[axis] - a[axis])
    point = [a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1])]
    point[axis] = bound
    return (point[0], point[1])


def polygon_area(polygon: np.ndarray) -> float:
    if len(polygon) < 3:
        return 0.0
    x, y = polygon[:, 0], polygon[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
