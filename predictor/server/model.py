"""The KServe model: V2/V1 requests in, YOLOv5 detections out, never blocking the event loop."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from kserve import Model
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferRequest, InferResponse

from ..detector import Detections, DetectionSettings, Detector, PreparedImage
from ..imaging import ImageDecodeError, LetterboxMode, decode_image
from . import contract
from .limits import Limits, encoded_image_size
from .observability import BATCH_SIZE, IMAGES, INFERENCES, MODEL_INFO, QUEUE_DEPTH, STAGE_SECONDS
from .scheduler import PerformanceOptions, Scheduler

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServingOptions:
    img_size: int = 640
    letterbox: LetterboxMode = "square"
    device: str = "auto"
    defaults: DetectionSettings = field(default_factory=DetectionSettings)
    limits: Limits = field(default_factory=Limits)
    decode_threads: int = 2
    performance: PerformanceOptions = field(default_factory=PerformanceOptions)


@dataclass
class Job:
    """One request on its way through preprocess -> predict -> postprocess."""

    request: InferRequest | None  # None for V1
    images: list[PreparedImage]
    settings: DetectionSettings
    results: list[Detections] = field(default_factory=list)


class YoloV5Model(Model):
    def __init__(self, name: str, checkpoint: Path, options: ServingOptions) -> None:
        super().__init__(name)
        self.checkpoint = checkpoint
        self.options = options
        self.detector: Detector | None = None
        self._decode_pool = ThreadPoolExecutor(options.decode_threads, "decode")
        # Inference streams + micro-batcher (threads of their own, never the event loop).
        self.scheduler: Scheduler | None = None

    def load(self) -> bool:
        performance = self.options.performance
        self.detector = Detector.load(
            self.checkpoint,
            self.options.device,
            self.options.img_size,
            self.options.letterbox,
            backend=performance.backend,
            cache_dir=performance.cache_dir,
        )
        self.scheduler = Scheduler.create(
            self.detector,
            performance,
            observe=lambda images, _seconds: BATCH_SIZE.labels(self.name).observe(images),
        )
        self.scheduler.start()  # warms every stream on every batch size before readiness
        logger.info(
            "loaded %s: %d classes, input %s, letterbox %s, device %s",
            self.checkpoint,
            len(self.detector.names),
            self.detector.input_shape,
            self.detector.letterbox,
            self.detector.device,
        )
        MODEL_INFO.labels(
            self.name,
            ",".join(self.detector.names),
            str(self.detector.device),
            str(self.detector.dtype).removeprefix("torch."),
            "x".join(map(str, self.detector.input_shape)),
            self.detector.letterbox,
        ).set(1)
        self.ready = True
        return self.ready

    async def __call__(self, body: Any, headers: dict[str, str] | None = None, **kwargs: Any):
        outcome = "error"
        try:
            response = await super().__call__(body, headers=headers, **kwargs)
            outcome = "ok"
            return response
        except InvalidInput:
            outcome = "invalid"
            raise
        finally:
            INFERENCES.labels(self.name, outcome).inc()

    @property
    def names(self) -> list[str]:
        return self._detector.names

    @property
    def _detector(self) -> Detector:
        if self.detector is None:
            raise RuntimeError("model is not loaded")
        return self.detector

    def get_input_types(self) -> list[dict[str, Any]]:
        return contract.input_metadata()

    def get_output_types(self) -> list[dict[str, Any]]:
        return contract.output_metadata()

    async def preprocess(self, payload: Any, headers: dict[str, str] | None = None) -> Job:
        if isinstance(payload, InferRequest):
            request, params = payload, payload.parameters
            images = contract.images_from_v2(payload)
        elif isinstance(payload, dict):
            request, params = None, payload.get("parameters")
            images = contract.images_from_v1(payload)
        else:
            raise InvalidInput("expected a V2 inference request or a V1 {'instances': [...]} body")
        if not images:
            raise InvalidInput(f"input '{contract.INPUT_NAME}' holds no images")
        self._check_limits(images)
        settings = contract.detection_settings(params, self.options.defaults, self.names)
        loop = asyncio.get_running_loop()
        prepared = await asyncio.gather(
            *(
                loop.run_in_executor(self._decode_pool, self._prepare, i, img)
                for i, img in enumerate(images)
            )
        )
        return Job(request, list(prepared), settings)

    def _check_limits(self, images: list[contract.ImageInput]) -> None:
        """Reject oversized requests from image headers alone, before decoding anything."""
        limits = self.options.limits
        limits.check_image_count(len(images))
        sizes = []
        for index, image in enumerate(images):
            if isinstance(image, bytes):
                width, height = encoded_image_size(index, image)
            else:
                height, width = image.shape[:2]
            limits.check_pixels(index, width, height)
            sizes.append((width, height))
        limits.check_batch_bytes(sizes)

    def _prepare(self, index: int, image: contract.ImageInput) -> PreparedImage:
        started = time.perf_counter()
        if isinstance(image, bytes):
            try:
                bgr = decode_image(image)
            except ImageDecodeError as error:
                raise InvalidInput(f"input '{contract.INPUT_NAME}'[{index}]: {error}") from None
        else:
            if min(image.shape[:2]) < 1:
                raise InvalidInput(f"input '{contract.INPUT_NAME}'[{index}]: empty image")
            bgr = np.ascontiguousarray(image[..., ::-1])
        decoded = time.perf_counter()
        prepared = self._detector.prepare(bgr)
        STAGE_SECONDS.labels(self.name, "decode").observe(decoded - started)
        STAGE_SECONDS.labels(self.name, "preprocess").observe(time.perf_counter() - decoded)
        return prepared

    async def predict(self, job: Job, headers: dict[str, str] | None = None) -> Job:
        QUEUE_DEPTH.labels(self.name).inc()
        started = time.perf_counter()
        try:
            if self.scheduler is None:
                raise RuntimeError("model is not loaded")
            job.results = await self.scheduler.detect(job.images, job.settings)
        finally:
            QUEUE_DEPTH.labels(self.name).dec()
        STAGE_SECONDS.labels(self.name, "inference").observe(time.perf_counter() - started)
        IMAGES.labels(self.name).inc(len(job.images))
        return job

    def stop(self) -> None:
        super().stop()
        if self.scheduler is not None:
            self.scheduler.close()

    async def postprocess(
        self, job: Job, headers: dict[str, str] | None = None
    ) -> InferResponse | dict[str, Any]:
        with STAGE_SECONDS.labels(self.name, "postprocess").time():
            if job.request is None:
                return contract.v1_response(job.results)
            return contract.v2_response(job.request, job.results, self.name)
