"""Judge a backend against the PyTorch reference by its detections, before it serves anything.

Two float32 runs of one network by different kernels never agree bit for bit: accumulation
order differs, and deep networks with large activations amplify it. What must agree is what
a user sees: the detections after NMS. A backend is accepted when, on photo-like scenes with
objects (generated here) and on uniform-noise probes, its detections equal PyTorch's: same
classes, boxes within BOX_TOLERANCE_PX input pixels, scores within SCORE_TOLERANCE, at the
server's thresholds and at LOW_CONF (many candidates for a trained model; an untrained
one scores below it everywhere, and is compared at nothing there). Candidates whose score
lies within THRESHOLD_MARGIN of the threshold (or of a max_det / candidate-limit cut) count
on neither side: either run may keep them. Nor does a detection whose anchor predicts the
same on the other side, where NMS kept another of near-equal candidates (see
`compare_image_detections`). The raw output difference is reported as a diagnostic.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..imaging import apply_letterbox, plan_letterbox, round_up_to_stride, to_network_layout
from ..nms import MAX_CANDIDATES, non_max_suppression, xywh_to_xyxy
from ..synthetic import SceneConfig, generate_scene
from .base import BackendError, Engine

BOX_TOLERANCE_PX = 1.0  # input-space pixels, each coordinate
SCORE_TOLERANCE = 1e-3
THRESHOLD_MARGIN = 1e-3
LOW_CONF = 0.001  # YOLOv5's val.py threshold: thousands of candidates for a trained model
SCENE_SEED = 20_231
SCENE_SHAPES = ((810, 1080), (720, 1280), (480, 640), (1080, 810))  # photo-like (h, w)
JUDGEMENT_FORMAT = 1  # bump when what is judged changes: cached verdicts die


@dataclass(frozen=True)
class Thresholds:
    """The detection settings the server applies (and the backend is judged at)."""

    conf: float = 0.25
    iou: float = 0.45
    max_det: int = 1000


DEFAULT_THRESHOLDS = Thresholds()


@dataclass(frozen=True)
class Probe:
    names: tuple[str, ...]  # one per image, for messages
    batch: np.ndarray  # N x 3 x H x W float32


@dataclass(frozen=True)
class Difference:
    """Raw head outputs: the largest difference, scaled to the output's magnitude."""

    boxes: float  # largest |a - b| / max(1, |b|) over box columns
    scores: float  # largest |a - b| over objectness and class columns

    def worst(self, other: Difference) -> Difference:
        return Difference(max(self.boxes, other.boxes), max(self.scores, other.scores))

    def __str__(self) -> str:
        return f"boxes {self.boxes:.2g} (relative), scores {self.scores:.2g}"


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    reason: str  # accepted with what difference, or the first differing detection
    export_sha256: str = ""  # the export judged (cached verdicts of another file are void)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Verdict:
        data = json.loads(text)
        return cls(bool(data["accepted"]), str(data["reason"]), str(data["export_sha256"]))


def probes(input_shape: tuple[int, int], stride: int, rect: bool, seed: int = 0) -> list[Probe]:
    """Photo-like scenes with objects, letterboxed as the server does, then noise batches
    that exercise a dynamic batch and, in rect mode, a second, smaller shape."""
    mode = "rect" if rect else "square"
    config = SceneConfig(objects=(4, 10), empty_fraction=0.0)
    scenes: list[tuple[str, np.ndarray]] = []
    for index, shape in enumerate(SCENE_SHAPES):
        image = generate_scene(SCENE_SEED, index, config, shape).image
        plan = plan_letterbox(shape, input_shape, stride, mode)
        scenes.append((f"scene {index} ({shape[1]}x{shape[0]})", apply_letterbox(image, plan)))
    if rect:
        found = [Probe((name,), to_network_layout(pixels)[None]) for name, pixels in scenes]
    else:
        names = tuple(name for name, _ in scenes)
        found = [Probe(names, np.stack([to_network_layout(p) for _, p in scenes]))]
    rng = np.random.default_rng(seed)
    shapes = [(2, *input_shape)]
    if rect:
        narrower = max(stride, round_up_to_stride(input_shape[1] // 2, stride))
        shapes.append((1, input_shape[0], narrower))
    for n, h, w in shapes:
        names = tuple(f"noise image {i} of {[n, 3, h, w]}" for i in range(n))
        found.append(Probe(names, rng.random((n, 3, h, w), dtype=np.float32)))
    return found


def compare_raw(reference: torch.Tensor, candidate: torch.Tensor) -> Difference:
    ref = reference.float().cpu().numpy()
    out = candidate.float().cpu().numpy()
    if ref.shape != out.shape:
        raise BackendError(f"output shape {out.shape} differs from PyTorch's {ref.shape}")
    if not np.isfinite(out).all():
        raise BackendError("output holds NaN or infinity")
    box_error = np.abs(out[..., :4] - ref[..., :4]) / np.maximum(1.0, np.abs(ref[..., :4]))
    score_error = np.abs(out[..., 4:] - ref[..., 4:])
    return Difference(float(box_error.max(initial=0)), float(score_error.max(initial=0)))


def judge(
    reference: Engine,
    candidate: Engine,
    probe_list: list[Probe],
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
) -> Verdict:
    """Accepted when every image's detections are equal at `thresholds` and at LOW_CONF.

    BackendError when the candidate cannot run a probe or returns something malformed.
    """
    low = Thresholds(LOW_CONF, thresholds.iou, MAX_CANDIDATES)
    raw = Difference(0.0, 0.0)
    compared = {"server": 0, "low": 0}
    reordered = 0
    for probe in probe_list:
        expected = reference(probe.batch)
        try:
            actual = candidate(probe.batch)
        except Exception as error:  # e.g. an export whose shapes are not really dynamic
            raise BackendError(
                f"fails on {probe.names[0]} {list(probe.batch.shape)}: "
                f"{type(error).__name__}: {error}"
            ) from error
        raw = raw.worst(compare_raw(expected, actual))
        for name, want, have in zip(probe.names, expected.float(), actual.float(), strict=True):
            for side, point in (("server", thresholds), ("low", low)):
                comparison = compare_image_detections(want, have, point)
                if comparison.mismatch is not None:
                    return Verdict(
                        False,
                        f"detections differ from PyTorch's on {name} at conf {point.conf:.3g}: "
                        f"{comparison.mismatch} (raw outputs differ by {raw})",
                    )
                compared[side] += comparison.compared
                reordered += comparison.reordered
    images = sum(len(probe.names) for probe in probe_list)
    return Verdict(
        True,
        f"detections equal PyTorch's on {images} images ({compared['server']} detections at "
        f"conf {thresholds.conf:g}, {compared['low']} at conf {LOW_CONF:g}; boxes within "
        f"{BOX_TOLERANCE_PX:g} px, scores within {SCORE_TOLERANCE:g}; NMS kept another of "
        f"equal candidates {reordered} times); raw outputs differ by {raw}",
    )


@dataclass(frozen=True)
class ImageComparison:
    mismatch: str | None  # the first detection without a counterpart
    compared: int  # PyTorch's detections clear of the threshold
    reordered: int  # detections kept by one side only, their predictions equal on both


def compare_image_detections(
    expected: torch.Tensor, actual: torch.Tensor, point: Thresholds
) -> ImageComparison:
    """One image's detections from PyTorch's raw output (`expected`) and the backend's.

    A detection kept by one side only is no difference when the same anchor's prediction
    on the other side agrees (class, box within 1 px, score within 1e-3): NMS kept another
    of candidates whose order or overlap the rounding tipped, as happens among the
    thousands of candidates of a low threshold. A prediction that really differs shows
    up as a detection without such a counterpart.
    """
    [want] = non_max_suppression(expected[None], point.conf, point.iou, point.max_det)
    [have] = non_max_suppression(actual[None], point.conf, point.iou, point.max_det)
    floor = max(
        point.conf,
        _cut(want, point.max_det),
        _cut(have, point.max_det),
        _candidate_cut(expected, point.conf),
    )
    clear = floor + THRESHOLD_MARGIN
    strong_want, strong_have = want[want[:, 4] > clear], have[have[:, 4] > clear]
    sides = (
        (strong_want, have, expected, actual, "PyTorch's", "the backend"),
        (strong_have, want, actual, expected, "the backend's", "PyTorch"),
    )
    reordered = 0
    for rows, others, own_raw, other_raw, owner, other in sides:
        unmatched = rows[~_matched(rows, others)]
        agrees = _same_anchor_agrees(unmatched, own_raw, other_raw)
        if not agrees.all():
            row = unmatched[int(np.argmin(agrees))]
            mismatch = f"{owner} {_describe(row)} {_nearest(row, others, other)}"
            return ImageComparison(mismatch, 0, 0)
        reordered += len(unmatched)
    return ImageComparison(None, len(strong_want), reordered)


def _predictions(raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every anchor's box (x1, y1, x2, y2), score and class, computed as NMS computes them."""
    score, class_id = (raw[:, 5:] * raw[:, 4:5]).max(1)
    return xywh_to_xyxy(raw[:, :4]), score, class_id


def _same_anchor_agrees(
    rows: torch.Tensor, own_raw: torch.Tensor, other_raw: torch.Tensor
) -> np.ndarray:
    """For each detection in `rows` (from `own_raw`), whether the other side predicts its
    class at its anchor with an equal box and score (it may have ranked a near-equal class
    above it there). A detection's anchor is the first whose box and class are its own."""
    if not len(rows):
        return np.ones(0, dtype=bool)
    boxes, _, classes = _predictions(own_raw)
    anchor_keys = torch.cat([boxes, classes[:, None].to(boxes.dtype)], 1).float().numpy()
    anchor_of: dict[bytes, int] = {}
    for anchor, key in enumerate(anchor_keys):
        anchor_of.setdefault(key.tobytes(), anchor)
    row_keys = torch.cat([rows[:, :4], rows[:, 5:6]], 1).float().numpy()
    anchors = np.array([anchor_of.get(key.tobytes(), -1) for key in row_keys])
    found = anchors >= 0
    agrees = np.zeros(len(rows), dtype=bool)
    if not found.any():
        return agrees
    other = other_raw[torch.from_numpy(anchors[found])].float()
    wanted = rows[torch.from_numpy(found)]
    class_ids = wanted[:, 5].long()
    other_box = xywh_to_xyxy(other[:, :4])
    other_score = other[:, 4] * other[torch.arange(len(other)), 5 + class_ids]
    close = ((other_box - wanted[:, :4]).abs().amax(1) <= BOX_TOLERANCE_PX) & (
        (other_score - wanted[:, 4]).abs() <= SCORE_TOLERANCE
    )
    agrees[found] = close.numpy()
    return agrees


def _cut(detections: torch.Tensor, max_det: int) -> float:
    """The score at which max_det cut the list (0 when it did not)."""
    return float(detections[-1, 4]) if len(detections) >= max_det else 0.0


def _candidate_cut(raw: torch.Tensor, conf: float) -> float:
    """The score at which NMS's candidate limit cut (0 when fewer candidates)."""
    candidates = raw[raw[:, 4] > conf]
    if len(candidates) <= MAX_CANDIDATES:
        return 0.0
    scores = (candidates[:, 5:] * candidates[:, 4:5]).max(1).values
    return float(scores.sort(descending=True).values[MAX_CANDIDATES - 1])


def _matched(rows: torch.Tensor, others: torch.Tensor) -> np.ndarray:
    """For each detection in `rows`, whether `others` has one of its class with a box within
    BOX_TOLERANCE_PX and a score within SCORE_TOLERANCE.

    Pairs are only formed inside a window of x1 (sorted per class), so the thousands of
    detections of a low threshold cost a sort and a few array passes, not rows x others.
    """
    mine, theirs = rows.double().cpu().numpy(), others.double().cpu().numpy()
    found = np.zeros(len(mine), dtype=bool)
    if not len(mine) or not len(theirs):
        return found
    order = np.lexsort((theirs[:, 0], theirs[:, 5]))  # by class, then x1
    theirs = theirs[order]
    # One sortable key per detection: class first, x1 within it (x1 spans far less than 1e7).
    span = 1e7
    keys = theirs[:, 5] * span + theirs[:, 0]
    start = np.searchsorted(keys, mine[:, 5] * span + mine[:, 0] - BOX_TOLERANCE_PX, "left")
    stop = np.searchsorted(keys, mine[:, 5] * span + mine[:, 0] + BOX_TOLERANCE_PX, "right")
    counts = stop - start
    if not counts.sum():
        return found
    row_of_pair = np.repeat(np.arange(len(mine)), counts)
    first_of_row = np.repeat(np.cumsum(counts) - counts, counts)
    other_of_pair = np.repeat(start, counts) + np.arange(counts.sum()) - first_of_row
    a, b = mine[row_of_pair], theirs[other_of_pair]
    close = (np.abs(a[:, :4] - b[:, :4]).max(1) <= BOX_TOLERANCE_PX) & (
        np.abs(a[:, 4] - b[:, 4]) <= SCORE_TOLERANCE
    )
    found[row_of_pair[close]] = True
    return found


def _describe(row: torch.Tensor) -> str:
    box = ", ".join(f"{v:.1f}" for v in row[:4].tolist())
    return f"detection class {int(row[5])} score {float(row[4]):.4f} box [{box}]"


def _nearest(row: torch.Tensor, others: torch.Tensor, side: str) -> str:
    same_class = others[others[:, 5] == row[5]]
    if not len(same_class):
        return f"has no counterpart ({side} has no class {int(row[5])} detection)"
    distance = (same_class[:, :4] - row[:4]).abs().amax(1)
    nearest = same_class[int(distance.argmin())]
    return (
        f"has no counterpart (nearest of {side}: box off by {float(distance.min()):.2f} px, "
        f"score {float(nearest[4]):.4f})"
    )
