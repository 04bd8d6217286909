"""The KServe model: V2/V1 requests in, YOLOv5 detections out, never blocking the event loop."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from kserve import Model
from kserve.errors import InvalidInput, ModelNotFound
from kserve.protocol.infer_type import InferRequest, InferResponse

from ..checkpoint import CheckpointError
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
    class_names: tuple[str, ...] | None = None  # overrides the checkpoint's names


@dataclass(frozen=True)
class ModelVersion:
    """One version of a model as the repository describes it (not loaded yet)."""

    version: str
    checkpoint: Path
    options: ServingOptions


class LoadedVersion:
    """A model version ready to serve: its detector and the streams that run it."""

    def __init__(self, model_name: str, spec: ModelVersion) -> None:
        self.version = spec.version
        self.options = spec.options
        performance = spec.options.performance
        self.detector = Detector.load(
            spec.checkpoint,
            spec.options.device,
            spec.options.img_size,
            spec.options.letterbox,
            backend=performance.backend,
            cache_dir=performance.cache_dir,
        )
        if spec.options.class_names is not None:
            if len(spec.options.class_names) != len(self.detector.names):
                raise CheckpointError(
                    f"{spec.checkpoint}: {len(spec.options.class_names)} names configured for "
                    f"a model with {len(self.detector.names)} classes"
                )
            self.detector.names = list(spec.options.class_names)
        self.scheduler = Scheduler.create(
            self.detector,
            performance,
            observe=lambda images, _seconds: BATCH_SIZE.labels(model_name).observe(images),
        )
        self.scheduler.start()  # warms every stream on every batch size before readiness
        logger.info(
            "loaded %s version %s from %s: %d classes, input %s, letterbox %s, device %s",
            model_name,
            self.version,
            spec.checkpoint,
            len(self.detector.names),
            self.detector.input_shape,
            self.detector.letterbox,
            self.detector.device,
        )
        MODEL_INFO.labels(
            model_name,
            self.version,
            ",".join(self.detector.names),
            str(self.detector.device),
            str(self.detector.dtype).removeprefix("torch."),
            "x".join(map(str, self.detector.input_shape)),
            self.detector.letterbox,
        ).set(1)

    @property
    def names(self) -> list[str]:
        return self.detector.names

    def close(self) -> None:
        self.scheduler.close()


@dataclass
class Job:
    """One request on its way through preprocess -> predict -> postprocess."""

    request: InferRequest | None  # None for V1
    version: LoadedVersion
    images: list[PreparedImage]
    settings: DetectionSettings
    results: list[Detections] = field(default_factory=list)


class YoloV5Model(Model):
    """A named model with one or more versions; requests pick one (default: the highest)."""

    def __init__(self, name: str, versions: Sequence[ModelVersion]) -> None:
        super().__init__(name)
        if not versions:
            raise ValueError(f"model {name!r} has no versions")
        self.specs = {spec.version: spec for spec in versions}
        self.default_version = versions[-1].version
        self.versions: dict[str, LoadedVersion] = {}
        threads = max(spec.options.decode_threads for spec in versions)
        self._decode_pool = ThreadPoolExecutor(threads, f"decode-{name}")
        self._admission = asyncio.Semaphore(1)  # sized at load, from the streams

    def load(self) -> bool:
        # Once: kserve's DataPlane.get_model calls load() again, on the event loop, for a
        # model that is not ready, which ours is while it drains for shutdown.
        if self.versions:
            return self.ready
        try:
            for spec in self.specs.values():
                self.versions[spec.version] = LoadedVersion(self.name, spec)
        except BaseException:
            self.stop()
            raise
        # Requests past what the streams can use wait here, before decoding: decoding far
        # ahead of inference only takes CPU and memory from it.
        capacity = sum(v.scheduler.capacity for v in self.versions.values())
        self._admission = asyncio.Semaphore(2 * capacity)
        self.ready = True
        return self.ready

    def stop(self) -> None:
        super().stop()
        for version in self.versions.values():
            version.close()
        self.versions.clear()
        self._decode_pool.shutdown(wait=False)

    def version(self, version: str | None = None) -> LoadedVersion:
        """A loaded version by name (None or "" = the default); unknown: ModelNotFound."""
        wanted = version or self.default_version
        loaded = self.versions.get(wanted)
        if loaded is None:
            raise ModelNotFound(f"{self.name} version {wanted}")
        return loaded

    @property
    def names(self) -> list[str]:
        return self.version().names

    async def __call__(self, body: Any, headers: dict[str, str] | None = None, **kwargs: Any):
        outcome = "error"
        try:
            async with self._admission:
                response = await super().__call__(body, headers=headers, **kwargs)
            outcome = "ok"
            return response
        except InvalidInput:
            outcome = "invalid"
            raise
        finally:
            INFERENCES.labels(self.name, outcome).inc()

    def get_input_types(self) -> list[dict[str, Any]]:
        return contract.input_metadata()

    def get_output_types(self) -> list[dict[str, Any]]:
        return contract.output_metadata()

    async def preprocess(self, payload: Any, headers: dict[str, str] | None = None) -> Job:
        if isinstance(payload, bytes):  # V1 JSON under another Content-Type (curl -d's form)
            payload = contract.parse_json(payload)
        if isinstance(payload, InferRequest):
            version = self.version(payload.model_version)
            request, params = payload, payload.parameters
            images = contract.images_from_v2(payload)
        elif isinstance(payload, dict):
            version = self.version()
            request, params = None, payload.get("parameters")
            images = contract.images_from_v1(payload)
        else:
            raise InvalidInput("expected a V2 inference request or a V1 {'instances': [...]} body")
        if not images:
            raise InvalidInput(f"input '{contract.INPUT_NAME}' holds no images")
        self._check_limits(version.options.limits, images)
        settings = contract.detection_settings(params, version.options.defaults, version.names)
        loop = asyncio.get_running_loop()
        prepared = await asyncio.gather(
            *(
                loop.run_in_executor(self._decode_pool, self._prepare, version, i, img)
                for i, img in enumerate(images)
            )
        )
        return Job(request, version, list(prepared), settings)

    @staticmethod
    def _check_limits(limits: Limits, images: list[contract.ImageInput]) -> None:
        """Reject oversized requests from image headers alone, before decoding anything."""
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

    def _prepare(
        self, version: LoadedVersion, index: int, image: contract.ImageInput
    ) -> PreparedImage:
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
        prepared = version.detector.prepare(bgr)
        STAGE_SECONDS.labels(self.name, "decode").observe(decoded - started)
        STAGE_SECONDS.labels(self.name, "preprocess").observe(time.perf_counter() - decoded)
        return prepared

    async def predict(self, job: Job, headers: dict[str, str] | None = None) -> Job:
        QUEUE_DEPTH.labels(self.name).inc()
        started = time.perf_counter()
        try:
            job.results = await job.version.scheduler.detect(job.images, job.settings)
        finally:
            QUEUE_DEPTH.labels(self.name).dec()
        STAGE_SECONDS.labels(self.name, "inference").observe(time.perf_counter() - started)
        IMAGES.labels(self.name).inc(len(job.images))
        return job

    async def postprocess(
        self, job: Job, headers: dict[str, str] | None = None
    ) -> InferResponse | dict[str, Any]:
        with STAGE_SECONDS.labels(self.name, "postprocess").time():
            if job.request is None:
                return contract.v1_response(job.results)
            return contract.v2_response(job.request, job.results, self.name, job.version.version)
