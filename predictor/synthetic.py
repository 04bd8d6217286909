"""A synthetic detection data set: circles, squares and triangles on textured backgrounds.

Serving uses its scenes to judge a backend (`backends.verify`), training to learn from them;
so it lives beside the detector, inside the image, not under `training/`.

Every scene is a pure function of `(seed, index)`, so a data set is reproducible and any
image of it can be regenerated alone. Each object is kept as its exact outline (a polygon;
circles as a 72-gon whose extreme vertices lie on the circle's axis points), so boxes are
exact, also after augmentation crops an object at the border of the picture.

Coordinates are continuous pixel-edge coordinates (pixel `i` covers `[i, i + 1)`), the
convention of YOLOv5 labels; OpenCV draws at pixel centres, hence the `- 0.5` when drawing.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

CLASS_NAMES: tuple[str, ...] = ("circle", "square", "triangle")
CIRCLE, SQUARE, TRIANGLE = range(3)
_CIRCLE_VERTICES = 72  # a multiple of 4: the box of the polygon is the box of the circle
_SHIFT = 4  # sub-pixel bits for OpenCV drawing
_SCALE = 1 << _SHIFT


@dataclass(frozen=True)
class SceneConfig:
    """How scenes are drawn. Sizes are in pixels of the generated image."""

    long_side: tuple[int, int] = (320, 800)
    aspect: tuple[float, float] = (0.5, 2.0)  # width / height, sampled log-uniformly
    objects: tuple[int, int] = (1, 7)  # inclusive range of objects per scene
    empty_fraction: float = 0.03  # scenes with no object at all
    size: tuple[float, float] = (0.07, 0.38)  # object extent / shorter image side, log-uniform
    min_size_at: int = 320  # ... but at least `min_size_px` once the image is scaled to this
    min_size_px: float = 13.0
    max_occlusion: float = 0.3  # share of an earlier object's box a later object may cover
    max_iou: float = 0.35
    distractor_lines: tuple[int, int] = (0, 6)
    noise_sigma: tuple[float, float] = (0.0, 12.0)
    jpeg_quality: tuple[int, int] | None = (60, 95)  # round-trip through JPEG; None: never


@dataclass
class Scene:
    """One generated image and its objects."""

    image: np.ndarray  # H x W x 3 BGR uint8
    classes: np.ndarray  # (n,) int64
    outlines: list[np.ndarray] = field(default_factory=list)  # n polygons, (k, 2) float64 x, y

    @property
    def boxes(self) -> np.ndarray:
        """(n, 4) float32 x1, y1, x2, y2 in pixel-edge coordinates."""
        return outline_boxes(self.outlines)


def outline_boxes(outlines: list[np.ndarray]) -> np.ndarray:
    if not outlines:
        return np.zeros((0, 4), np.float32)
    return np.array([[*poly.min(0), *poly.max(0)] for poly in outlines], dtype=np.float32).reshape(
        -1, 4
    )


def scene_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, index])


def generate_scene(
    seed: int,
    index: int,
    config: SceneConfig = SceneConfig(),
    shape: tuple[int, int] | None = None,
) -> Scene:
    """Scene number `index` of the data set `seed`; `shape` (height, width) fixes the size."""
    rng = scene_rng(seed, index)
    if shape is None:
        long_side = rng.uniform(*config.long_side)
        aspect = math.exp(rng.uniform(math.log(config.aspect[0]), math.log(config.aspect[1])))
        if aspect >= 1:
            width, height = long_side, long_side / aspect
        else:
            width, height = long_side * aspect, long_side
        shape = (round(height), round(width))
    height, width = shape
    image = _background(rng, height, width)
    _draw_distractors(rng, image, config)

    count = 0
    if rng.random() >= config.empty_fraction:
        count = int(rng.integers(config.objects[0], config.objects[1] + 1))
    classes: list[int] = []
    outlines: list[np.ndarray] = []
    short = min(height, width)
    min_extent = config.min_size_px * max(height, width) / config.min_size_at
    for _ in range(count):
        for _attempt in range(40):
            cls = int(rng.integers(len(CLASS_NAMES)))
            extent = short * math.exp(rng.uniform(*np.log(config.size)))
            extent = min(max(extent, min_extent), 0.9 * short)
            outline = _outline(rng, cls, extent)
            low, high = outline.min(0), outline.max(0)
            span = high - low
            if span[0] >= width - 2 or span[1] >= height - 2:
                continue
            # place the box fully inside the image, at least 1 px from the border
            offset = np.array(
                [rng.uniform(1 - low[0], width - 1 - high[0]),
                 rng.uniform(1 - low[1], height - 1 - high[1])]
            )  # fmt: skip
            outline = outline + offset
            if _acceptable(outline, outlines, config):
                _draw_object(rng, image, cls, outline, extent)
                classes.append(cls)
                outlines.append(outline)
                break

    sigma = rng.uniform(*config.noise_sigma)
    if sigma > 0:
        image += rng.normal(0.0, sigma, image.shape).astype(np.float32)
    if rng.random() < 0.3:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.5, 1.2))
    result = np.clip(image, 0, 255).astype(np.uint8)
    if config.jpeg_quality is not None:
        quality = int(rng.integers(config.jpeg_quality[0], config.jpeg_quality[1] + 1))
        ok, encoded = cv2.imencode(".jpg", result, [cv2.IMWRITE_JPEG_QUALITY, quality])
        assert ok
        result = cv2.imdecode(encoded, cv2.IMREAD_COLOR)
    return Scene(result, np.array(classes, dtype=np.int64), outlines)


# -- backgrounds ----------------------------------------------------------------------------


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    base = rng.uniform(0, 255, 3).astype(np.float32)
    cells = rng.integers(2, 9, 2)
    field_ = rng.uniform(-1, 1, (int(cells[0]), int(cells[1]), 3)).astype(np.float32)
    field_ = cv2.resize(field_, (width, height), interpolation=cv2.INTER_CUBIC)
    image = base + field_ * rng.uniform(10, 90)
    kind = rng.random()
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    tint = rng.uniform(0.3, 1.0, 3).astype(np.float32)
    if kind < 0.25:  # stripes at a random angle
        angle = rng.uniform(0, math.pi)
        period = rng.uniform(4, 48)
        phase = (xx * math.cos(angle) + yy * math.sin(angle)) * (2 * math.pi / period)
        image += (np.sin(phase) * rng.uniform(5, 40))[..., None] * tint
    elif kind < 0.45:  # checkerboard
        cell = rng.uniform(8, 64)
        checks = ((xx // cell + yy // cell) % 2) * 2 - 1
        image += (checks * rng.uniform(5, 35))[..., None] * tint
    elif kind < 0.7:  # mid-frequency blotches
        small = rng.normal(0, 1, (max(2, height // 12), max(2, width // 12), 3)).astype(np.float32)
        image += cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR) * rng.uniform(
            5, 30
        )
    return image


def _draw_distractors(rng: np.random.Generator, image: np.ndarray, config: SceneConfig) -> None:
    """Thin lines and arcs: edges that are not objects."""
    height, width = image.shape[:2]
    for _ in range(int(rng.integers(config.distractor_lines[0], config.distractor_lines[1] + 1))):
        colour = tuple(float(c) for c in rng.uniform(0, 255, 3))
        thickness = int(rng.integers(1, 4))
        if rng.random() < 0.7:
            p1 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            p2 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            cv2.line(image, p1, p2, colour, thickness, cv2.LINE_AA)
        else:
            centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            axes = (int(rng.integers(10, width // 2 + 11)), int(rng.integers(10, height // 2 + 11)))
            start = float(rng.uniform(0, 360))
            cv2.ellipse(
                image, centre, axes, float(rng.uniform(0, 180)), start,
                start + float(rng.uniform(20, 120)), colour, thickness, cv2.LINE_AA,
            )  # fmt: skip


# -- objects --------------------------------------------------------------------------------


def _outline(rng: np.random.Generator, cls: int, extent: float) -> np.ndarray:
    """A polygon centred on the origin whose box is about `extent` pixels across."""
    if cls == CIRCLE:
        radius = extent / 2
        angles = np.arange(_CIRCLE_VERTICES) * (2 * math.pi / _CIRCLE_VERTICES)
        return np.stack((np.cos(angles), np.sin(angles)), 1) * radius
    rotation = rng.uniform(0, 2 * math.pi)
    if cls == SQUARE:
        angles = rotation + np.arange(4) * (math.pi / 2)
        radius = extent / 2 * math.sqrt(2) / (abs(math.cos(rotation)) + abs(math.sin(rotation)))
    else:  # equilateral triangle
        angles = rotation + np.arange(3) * (2 * math.pi / 3)
        radius = extent / math.sqrt(3)
    return np.stack((np.cos(angles), np.sin(angles)), 1) * radius


def _acceptable(outline: np.ndarray, earlier: list[np.ndarray], config: SceneConfig) -> bool:
    box = np.array([*outline.min(0), *outline.max(0)])
    area = (box[2] - box[0]) * (box[3] - box[1])
    for other in earlier:
        obox = np.array([*other.min(0), *other.max(0)])
        iw = min(box[2], obox[2]) - max(box[0], obox[0])
        ih = min(box[3], obox[3]) - max(box[1], obox[1])
        if iw <= 0 or ih <= 0:
            continue
        inter = iw * ih
        oarea = (obox[2] - obox[0]) * (obox[3] - obox[1])
        if inter / oarea > config.max_occlusion or inter / (area + oarea - inter) > config.max_iou:
            return False
    return True


def _draw_object(
    rng: np.random.Generator, image: np.ndarray, cls: int, outline: np.ndarray, extent: float
) -> None:
    height, width = image.shape[:2]
    x0, y0 = np.floor(outline.min(0)).astype(int) - 1
    x1, y1 = np.ceil(outline.max(0)).astype(int) + 1
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    roi = image[y0:y1, x0:x1]
    mask = np.zeros(roi.shape[:2], np.uint8)
    local = outline - (x0, y0) - 0.5  # pixel-edge -> OpenCV pixel-centre coordinates
    if cls == CIRCLE:
        centre = np.round(local.mean(0) * _SCALE).astype(int)
        radius = int(np.round(extent / 2 * _SCALE))
        cv2.circle(mask, (int(centre[0]), int(centre[1])), radius, 255, -1, cv2.LINE_AA, _SHIFT)
    else:
        points = np.round(local * _SCALE).astype(np.int32)
        cv2.fillPoly(mask, [points], 255, cv2.LINE_AA, _SHIFT)
    alpha = (mask.astype(np.float32) / 255.0)[..., None]

    background = roi.reshape(-1, 3).mean(0)
    colour = rng.uniform(0, 255, 3)
    for _ in range(30):  # keep the object visibly different from what is behind it
        if np.linalg.norm(colour - background) > 90:
            break
        colour = rng.uniform(0, 255, 3)
    fill = np.broadcast_to(colour.astype(np.float32), roi.shape).copy()
    if rng.random() < 0.5:  # shading: a linear gradient across the object
        yy, xx = np.mgrid[0 : roi.shape[0], 0 : roi.shape[1]].astype(np.float32)
        angle = rng.uniform(0, 2 * math.pi)
        ramp = (xx * math.cos(angle) + yy * math.sin(angle)) / max(extent, 1.0)
        fill *= (1 + (ramp - ramp.mean()) * rng.uniform(0.1, 0.6))[..., None]
    if rng.random() < 0.3:  # texture inside the object
        fill += rng.normal(0, rng.uniform(3, 15), fill.shape).astype(np.float32)
    roi *= 1 - alpha
    roi += fill * alpha


# -- sample images --------------------------------------------------------------------------


def write_samples(
    directory: str | Path,
    seed: int = 2024,
    count: int = 4,
    shape: tuple[int, int] = (480, 640),
) -> list[dict]:
    """Write `sample_N.jpg` images and `labels.json` with their boxes and classes."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = SceneConfig(objects=(3, 5), empty_fraction=0.0, jpeg_quality=None)
    records = []
    for index in range(count):
        scene = generate_scene(seed, index, config, shape=shape)
        name = f"sample_{index + 1}.jpg"
        cv2.imwrite(str(directory / name), scene.image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        records.append(
            {
                "file": name,
                "width": int(scene.image.shape[1]),
                "height": int(scene.image.shape[0]),
                "objects": [
                    {
                        "class_id": int(cls),
                        "label": CLASS_NAMES[int(cls)],
                        "box": [round(float(v), 2) for v in box],
                    }
                    for cls, box in zip(scene.classes, scene.boxes, strict=True)
                ],
            }
        )
    document = {
        "description": "Synthetic sample images and their true boxes "
        "(x1, y1, x2, y2 in pixels, pixel-edge coordinates), "
        "made by predictor.synthetic.write_samples",
        "seed": seed,
        "names": list(CLASS_NAMES),
        "images": records,
    }
    (directory / "labels.json").write_text(json.dumps(document, indent=2) + "\n")
    return records


def write_labelled_folder(
    directory: str | Path, seed: int, count: int, config: SceneConfig = SceneConfig()
) -> Path:
    """Scenes `0..count-1` of data set `seed` in YOLO format: images/N.jpg and labels/N.txt
    (`class cx cy w h` per object, normalised). Without labels, images/ alone serves as
    calibration images."""
    directory = Path(directory)
    (directory / "images").mkdir(parents=True, exist_ok=True)
    (directory / "labels").mkdir(exist_ok=True)
    for index in range(count):
        scene = generate_scene(seed, index, config)
        height, width = scene.image.shape[:2]
        name = f"{seed}_{index:05d}"
        cv2.imwrite(str(directory / "images" / f"{name}.png"), scene.image)
        boxes = scene.boxes / np.array([width, height, width, height], np.float32)
        lines = [
            f"{cls} {(x1 + x2) / 2:.6f} {(y1 + y2) / 2:.6f} {x2 - x1:.6f} {y2 - y1:.6f}"
            for cls, (x1, y1, x2, y2) in zip(scene.classes, boxes, strict=True)
        ]
        (directory / "labels" / f"{name}.txt").write_text("".join(f"{line}\n" for line in lines))
    return directory
