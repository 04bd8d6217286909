"""The detection pipeline: images in, YOLOv5-identical detections out. No server needed.

detector = Detector.load("yolov5s.pt", device="auto", img_size=640)
[result] = detector.detect([cv2.imread("bus.jpg")], DetectionSettings(conf_threshold=0.4))
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .backends import Backend, Engine, Thresholds, create_backend
from .checkpoint import LoadedModel, load_checkpoint
from .cuda_diagnosis import CudaFacts, DeviceError, cuda_problem, gpu_expected
from .imaging import (
    Letterbox,
    LetterboxMode,
    apply_letterbox,
    plan_letterbox,
    round_up_to_stride,
    scale_boxes_to_image,
    to_network_layout,
)
from .nms import non_max_suppression

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DetectionSettings:
    conf_threshold: float = 0.25
    iou_threshold: float = 0.45
    max_det: int = 1000
    classes: tuple[int, ...] | None = None  # keep only these class ids
    agnostic: bool = False  # one NMS across all classes

    def __post_init__(self) -> None:
        if not 0.0 <= self.conf_threshold <= 1.0:
            raise ValueError(f"conf_threshold must be in [0, 1], got {self.conf_threshold}")
        if not 0.0 <= self.iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in [0, 1], got {self.iou_threshold}")
        if self.max_det < 1:
            raise ValueError(f"max_det must be at least 1, got {self.max_det}")


@dataclass
class Detections:
    """One image's detections, best first. Boxes are x1, y1, x2, y2 in original-image pixels."""

    boxes: np.ndarray  # (k, 4) float32
    scores: np.ndarray  # (k,) float32
    class_ids: np.ndarray  # (k,) int32
    labels: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.scores)


@dataclass
class PreparedImage:
    """A letterboxed image, with what is needed to map boxes back.

    Kept as uint8 pixels (a quarter of the float tensor's memory) until its batch is formed:
    a busy server holds many of these in its queue.
    """

    pixels: np.ndarray  # H x W x 3 BGR uint8, letterboxed
    plan: Letterbox
    image_shape: tuple[int, int]

    @property
    def tensor(self) -> np.ndarray:
        """3 x H x W RGB float32 in [0, 1], as the network takes it."""
        return to_network_layout(self.pixels)


def stack_batch(images: Sequence[PreparedImage]) -> np.ndarray:
    """N x 3 x H x W float32 from images of one input shape (each image's `tensor`)."""
    batch = np.empty((len(images), 3, *images[0].pixels.shape[:2]), np.float32)
    for image, out in zip(images, batch, strict=True):
        to_network_layout(image.pixels, out)
    return batch


def resolve_device(name: str) -> torch.device:
    """ "auto": CUDA when usable, else the CPU; "cuda[:N]" that cannot run raises DeviceError
    saying why (CPU build, no driver, driver too old, no GPU allocated)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if gpu_expected():
            logger.warning(
                "--device auto: a GPU seems allocated but CUDA is unusable, serving on the CPU: %s",
                cuda_problem("cuda", CudaFacts.read()),
            )
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"--device {name}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        problem = cuda_problem(name, CudaFacts.read())
        if problem is None and not torch.cuda.is_available():
            problem = f"--device {name}: PyTorch reports CUDA unavailable ({torch.__version__})"
        if problem is not None:
            raise DeviceError(problem)
    return device


class Detector:
    """`backend`: "torch" (the reference, default), "onnxruntime" or "auto" (see
    `predictor.backends`); exports are cached in `cache_dir` (None: the default directory)
    and judged by their detections at `settings` (the server's defaults). `precision`:
    auto, fp32, fp16 or int8 (int8: calibrated on `calibration_dir`, refused below
    `int8_min_agreement`; see `predictor.backends`). Which backend serves, and why:
    `detector.backend.name`, `.reason`, `.precision`."""

    def __init__(
        self,
        model: LoadedModel,
        img_size: int = 640,
        letterbox: LetterboxMode = "square",
        backend: str | Backend = "torch",
        cache_dir: str | Path | None = None,
        settings: DetectionSettings | None = None,
        *,
        precision: str = "auto",
        calibration_dir: str | Path | None = None,
        int8_min_agreement: float | None = None,
    ) -> None:
        self.model = model
        self.names = model.names
        self.stride = model.stride
        self.letterbox: LetterboxMode = letterbox
        if model.fixed_input_shape is not None:
            self.input_shape = model.fixed_input_shape
            self.letterbox = "square"  # an export's input shape cannot change
        else:
            size = round_up_to_stride(img_size, self.stride)
            self.input_shape = (size, size)
        if isinstance(backend, str):
            settings = settings or DetectionSettings()
            backend = create_backend(
                model,
                backend,
                input_shape=self.input_shape,
                rect=self.letterbox == "rect",
                cache_dir=cache_dir,
                thresholds=Thresholds(
                    settings.conf_threshold, settings.iou_threshold, settings.max_det
                ),
                precision=precision,
                calibration_dir=calibration_dir,
                int8_min_agreement=int8_min_agreement,
            )
        self.backend = backend
        self.device = backend.device
        self.dtype: torch.dtype = getattr(backend, "dtype", torch.float32)
        self._engine: Engine | None = None

    @classmethod
    def load(
        cls,
        path: str | Path,
        device: str = "auto",
        img_size: int = 640,
        letterbox: LetterboxMode = "square",
        backend: str = "torch",
        cache_dir: str | Path | None = None,
        settings: DetectionSettings | None = None,
        *,
        precision: str = "auto",
        calibration_dir: str | Path | None = None,
        int8_min_agreement: float | None = None,
    ) -> Detector:
        model = load_checkpoint(path, resolve_device(device))
        return cls(
            model,
            img_size,
            letterbox,
            backend,
            cache_dir,
            settings,
            precision=precision,
            calibration_dir=calibration_dir,
            int8_min_agreement=int8_min_agreement,
        )

    @property
    def engine(self) -> Engine:
        """The engine `forward` uses when given none (the runtime's default threads)."""
        if self._engine is None:
            self._engine = self.backend.engine()
        return self._engine

    # -- the three stages, usable separately so a server can schedule them ---------------

    def prepare(self, image_bgr: np.ndarray) -> PreparedImage:
        """Letterbox one HxWx3 BGR uint8 image (CPU only; safe to run in a thread pool)."""
        if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or image_bgr.dtype != np.uint8:
            raise ValueError(
                f"expected an HxWx3 uint8 image, got {image_bgr.dtype} {image_bgr.shape}"
            )
        shape = (image_bgr.shape[0], image_bgr.shape[1])
        plan = plan_letterbox(shape, self.input_shape, self.stride, self.letterbox)
        return PreparedImage(apply_letterbox(image_bgr, plan), plan, shape)

    def forward(self, batch: np.ndarray, engine: Engine | None = None) -> torch.Tensor:
        """N x 3 x H x W float32 -> raw head output (N, anchors, 5 + nc), on `engine`."""
        return (engine or self.engine)(batch)

    def nms(
        self, raw: torch.Tensor, images: Sequence[PreparedImage], settings: DetectionSettings
    ) -> list[Detections]:
        """Non-maximum suppression per image, boxes scaled back to each original image."""
        kept = non_max_suppression(
            raw,
            settings.conf_threshold,
            settings.iou_threshold,
            settings.max_det,
            settings.classes,
            settings.agnostic,
        )
        results = []
        for rows, image in zip(kept, images, strict=True):
            rows = rows.cpu().numpy()
            class_ids = rows[:, 5].astype(np.int32)
            results.append(
                Detections(
                    boxes=scale_boxes_to_image(rows[:, :4], image.plan.shape, image.image_shape),
                    scores=rows[:, 4].astype(np.float32),
                    class_ids=class_ids,
                    labels=[self.names[i] for i in class_ids],
                )
            )
        return results

    # -- convenience ----------------------------------------------------------------------

    def detect(
        self, images_bgr: Sequence[np.ndarray], settings: DetectionSettings | None = None
    ) -> list[Detections]:
        """Detect objects in BGR images (as `cv2.imread` returns them); images of equal
        input shape share a forward pass."""
        settings = settings or DetectionSettings()
        prepared = [self.prepare(image) for image in images_bgr]
        results: list[Detections | None] = [None] * len(prepared)
        for indices in _group_by_shape(prepared):
            group = [prepared[i] for i in indices]
            raw = self.forward(stack_batch(group))
            for i, result in zip(indices, self.nms(raw, group, settings), strict=True):
                results[i] = result
        return [r for r in results if r is not None]

    def warmup(self, batch_sizes: Sequence[int] = (1,), engine: Engine | None = None) -> None:
        """Run the network once per batch size so no request pays for lazy initialisation."""
        for batch_size in batch_sizes:
            self.forward(np.zeros((batch_size, 3, *self.input_shape), dtype=np.float32), engine)


def _group_by_shape(prepared: Sequence[PreparedImage]) -> list[list[int]]:
    groups: dict[tuple[int, int], list[int]] = {}
    for i, image in enumerate(prepared):
        groups.setdefault(image.plan.shape, []).append(i)
    return list(groups.values())
