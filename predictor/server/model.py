"""The KServe model: V2/V1 requests in, YOLOv5 detections out, never blocking the event loop."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from kserve import Model
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferRequest, InferResponse

from ..detector import Detections, DetectionSettings, Detector, PreparedImage
from ..imaging import ImageDecodeError, LetterboxMode, decode_image
from . import contract

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServingOptions:
    img_size: int = 640
    letterbox: LetterboxMode = "square"
    device: str = "auto"
    defaults: DetectionSettings = field(default_factory=DetectionSettings)
    decode_threads: int = 2


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
        # One inference at a time: torch already spreads one forward over all cores.
        self._inference_pool = ThreadPoolExecutor(1, "inference")

    def load(self) -> bool:
        self.detector = Detector.load(
            self.checkpoint, self.options.device, self.options.img_size, self.options.letterbox
        )
        self.detector.warmup()
        logger.info(
            "loaded %s: %d classes, input %s, letterbox %s, device %s",
            self.checkpoint,
            len(self.detector.names),
            self.detector.input_shape,
            self.detector.letterbox,
            self.detector.device,
        )
        self.ready = True
        return self.ready

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
        settings = contract.detection_settings(params, self.options.defaults, self.names)
        loop = asyncio.get_running_loop()
        prepared = await asyncio.gather(
            *(
                loop.run_in_executor(self._decode_pool, self._prepare, i, img)
                for i, img in enumerate(images)
            )
        )
        return Job(request, list(prepared), settings)

    def _prepare(self, index: int, image: contract.ImageInput) -> PreparedImage:
        if isinstance(image, bytes):
            try:
                bgr = decode_image(image)
            except ImageDecodeError as error:
                raise InvalidInput(f"input '{contract.INPUT_NAME}'[{index}]: {error}") from None
        else:
            if min(image.shape[:2]) < 1:
                raise InvalidInput(f"input '{contract.INPUT_NAME}'[{index}]: empty image")
            bgr = np.ascontiguousarray(image[..., ::-1])
        if bgr.shape[2] != 3:
            bgr = cv2.cvtColor(bgr, cv2.COLOR_GRAY2BGR)
        return self._detector.prepare(bgr)

    async def predict(self, job: Job, headers: dict[str, str] | None = None) -> Job:
        loop = asyncio.get_running_loop()
        job.results = await loop.run_in_executor(
            self._inference_pool, self._detector.detect_prepared, job.images, job.settings
        )
        return job

    async def postprocess(
        self, job: Job, headers: dict[str, str] | None = None
    ) -> InferResponse | dict[str, Any]:
        if job.request is None:
            return contract.v1_response(job.results)
        return contract.v2_response(job.request, job.results, self.name)
