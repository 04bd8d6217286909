"""The KServe model: kserve's request types in, through the pure `contract`, YOLOv5
detections out, never blocking the event loop.

One request: parse (version, images, parameters, limits from image headers) -> wait for
admission -> decode and letterbox (thread pool) -> the scheduler's streams (queue wait,
forward, NMS) -> encode. `yolov5_inflight_images` counts its images from parse to answer.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kserve import Model
from kserve.protocol.infer_type import (
    InferInput,
    InferOutput,
    InferRequest,
    InferResponse,
    RequestedOutput,
)

from ..checkpoint import CheckpointError
from ..detector import Detections, DetectionSettings, Detector, PreparedImage
from . import contract
from .errors import InvalidRequest, UnknownVersion
from .observability import (
    BATCH_SIZE,
    IMAGES,
    INFERENCES,
    INFLIGHT_IMAGES,
    INT8_AGREEMENT,
    MODEL_INFO,
    STAGE_SECONDS,
)
from .options import ServingOptions
from .scheduler import Scheduler, Stage

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelVersion:
    """One version of a model as the repository describes it (not loaded yet)."""

    version: str
    checkpoint: Path
    options: ServingOptions


class _StageMetrics:
    """The scheduler's observations, as this model's Prometheus series."""

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name

    def batch(self, images: int) -> None:
        BATCH_SIZE.labels(self.model_name).observe(images)

    def stage(self, stage: Stage, seconds: float) -> None:
        STAGE_SECONDS.labels(self.model_name, stage).observe(seconds)


class LoadedVersion:
    """A model version ready to serve: its detector and the streams that run it."""

    def __init__(self, model_name: str, spec: ModelVersion) -> None:
        self.model_name = model_name
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
            settings=spec.options.defaults,
            precision=spec.options.precision,
            calibration_dir=spec.options.calibration_dir,
            int8_min_agreement=spec.options.int8_min_agreement,
        )
        if spec.options.class_names is not None:
            if len(spec.options.class_names) != len(self.detector.names):
                raise CheckpointError(
                    f"{spec.checkpoint}: {len(spec.options.class_names)} names configured for "
                    f"a model with {len(self.detector.names)} classes"
                )
            self.detector.names = list(spec.options.class_names)
        self.scheduler = Scheduler.create(
            self.detector, performance, observer=_StageMetrics(model_name)
        )
        self.scheduler.start()  # warms every stream on every batch size before readiness
        backend = self.detector.backend
        logger.info(
            "loaded %s version %s from %s: %d classes, input %s, letterbox %s, device %s, "
            "backend %s (%s), precision %s",
            model_name,
            self.version,
            spec.checkpoint,
            len(self.detector.names),
            self.detector.input_shape,
            self.detector.letterbox,
            self.detector.device,
            backend.name,
            backend.reason,
            backend.precision,
        )
        self.describe()

    @property
    def names(self) -> list[str]:
        return self.detector.names

    @property
    def parameters(self) -> dict[str, str | float]:
        """What serves this version, for its V2 metadata's `parameters`."""
        backend = self.detector.backend
        parameters: dict[str, str | float] = {
            "backend": backend.name,
            "backend_reason": backend.reason,
            "precision": backend.precision,
        }
        if self._int8_check is not None:
            parameters |= {
                "int8_agreement": self._int8_check["agreement"],
                "int8_precision": self._int8_check["precision"],
                "int8_recall": self._int8_check["recall"],
                "int8_score_shift": self._int8_check["mean_score_shift"],
            }
        return parameters

    @property
    def _int8_check(self) -> dict[str, float] | None:
        report = self.detector.backend.int8_report
        return report["self_check"] if report is not None else None

    def describe(self) -> None:
        """Set this version's `yolov5_model_info` (and INT8 agreement) series."""
        backend = self.detector.backend
        MODEL_INFO.labels(
            self.model_name,
            self.version,
            ",".join(self.detector.names),
            str(self.detector.device),
            backend.precision,
            backend.name,
            "x".join(map(str, self.detector.input_shape)),
            self.detector.letterbox,
        ).set(1)
        if self._int8_check is not None:
            INT8_AGREEMENT.labels(self.model_name, self.version).set(self._int8_check["agreement"])

    def close(self) -> None:
        self.scheduler.close()


@dataclass(frozen=True)
class ImagesRequest:
    """Encoded images with request parameters, for one version (None: the default),
    answered in V1's shape (TorchServe's inference API)."""

    images: list[bytes]
    parameters: dict[str, Any]
    version: str | None = None


@dataclass
class Job:
    """One parsed request: which version, which images, which settings, which answer."""

    request: InferRequest | None  # None: answered in V1's shape
    version: LoadedVersion
    images: list[contract.ImageInput]
    settings: DetectionSettings
    outputs: list[tuple[str, bool]]  # (name, binary) of each V2 output to return


class YoloV5Model(Model):
    """A named model with one or more versions; requests pick one (default: the highest)."""

    def __init__(self, name: str, versions: Sequence[ModelVersion]) -> None:
        super().__init__(name)
        if not versions:
            raise ValueError(f"model {name!r} has no versions")
        self.specs = {spec.version: spec for spec in versions}
        self.default_version = versions[-1].version
        self.versions: dict[str, LoadedVersion] = {}
        threads = max(spec.options.decode_thread_count for spec in versions)
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
        """A loaded version by name (None or "" = the default); unknown: UnknownVersion."""
        wanted = version or self.default_version
        loaded = self.versions.get(wanted)
        if loaded is None:
            raise UnknownVersion(f"model {self.name!r} has no version {wanted!r}")
        return loaded

    async def __call__(
        self, body: Any, headers: dict[str, str] | None = None, **_: Any
    ) -> tuple[InferResponse | dict[str, Any], dict[str, str]]:
        """kserve's model call (DataPlane.infer): the answer and extra response headers."""
        outcome = "error"
        counted = 0
        try:
            job = self._parse(body)
            counted = len(job.images)
            INFLIGHT_IMAGES.labels(self.name).inc(counted)
            async with self._admission:
                prepared = await self._prepare_all(job)
                results = await job.version.scheduler.detect(prepared, job.settings)
            IMAGES.labels(self.name).inc(len(results))
            started = time.perf_counter()
            response = self._encode(job, results)
            STAGE_SECONDS.labels(self.name, "encode").observe(time.perf_counter() - started)
            outcome = "ok"
            return response, {}
        except InvalidRequest:
            outcome = "invalid"
            raise
        finally:
            INFLIGHT_IMAGES.labels(self.name).dec(counted)
            INFERENCES.labels(self.name, outcome).inc()

    def _parse(self, payload: Any) -> Job:
        if isinstance(payload, bytes):  # V1 JSON under another Content-Type (curl -d's form)
            payload = contract.parse_json(payload)
        if isinstance(payload, InferRequest):
            version = self.version(payload.model_version)
            request, params = payload, payload.parameters
            images = contract.images_from_v2(_tensors(payload))
        elif isinstance(payload, dict):
            version = self.version()
            request, params = None, payload.get("parameters")
            images = contract.images_from_v1(payload)
        elif isinstance(payload, ImagesRequest):
            version = self.version(payload.version)
            request, params, images = None, payload.parameters, list(payload.images)
        else:
            raise InvalidRequest(
                "expected a V2 inference request or a V1 {'instances': [...]} body"
            )
        contract.check_limits(version.options.limits, images)
        settings = contract.detection_settings(params, version.options.defaults, version.names)
        outputs = _requested(request) if request is not None else []
        return Job(request, version, images, settings, outputs)

    async def _prepare_all(self, job: Job) -> list[PreparedImage]:
        loop = asyncio.get_running_loop()
        return list(
            await asyncio.gather(
                *(
                    loop.run_in_executor(self._decode_pool, self._prepare, job.version, i, image)
                    for i, image in enumerate(job.images)
                )
            )
        )

    def _prepare(
        self, version: LoadedVersion, index: int, image: contract.ImageInput
    ) -> PreparedImage:
        started = time.perf_counter()
        bgr = contract.to_bgr(index, image)
        decoded = time.perf_counter()
        prepared = version.detector.prepare(bgr)
        STAGE_SECONDS.labels(self.name, "decode").observe(decoded - started)
        STAGE_SECONDS.labels(self.name, "letterbox").observe(time.perf_counter() - decoded)
        return prepared

    def _encode(self, job: Job, results: Sequence[Detections]) -> InferResponse | dict[str, Any]:
        if job.request is None:
            return contract.v1_response(results)
        return _v2_response(job.request, job.outputs, results, self.name, job.version.version)


INFERENCE_HEADER = "inference-header-content-length"


def v2_request(body: bytes, headers: dict[str, str], model_name: str) -> InferRequest:
    """A V2 REST request body: JSON, or a JSON header followed by binary tensor data when
    `Inference-Header-Content-Length` says so (Triton's binary-data extension).

    Whatever the Content-Type (tritonclient's JSON and `curl -d` send others; kserve 0.21
    refuses them), and BYTES tensors stay opaque bytes (kserve 0.21 decodes them as UTF-8,
    so a JPEG failed with a 500).
    """
    json_length = headers.get(INFERENCE_HEADER)
    if json_length is None:
        length = len(body)
    elif not json_length.isdigit():
        raise InvalidRequest(f"{INFERENCE_HEADER} must be an integer, got {json_length!r}")
    else:
        length = int(json_length)
    if length > len(body):
        raise InvalidRequest(f"{INFERENCE_HEADER}={length} but the body has {len(body)} bytes")
    header = contract.parse_json(body[:length])
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        raise InvalidRequest("request must be a JSON object with an 'inputs' list")
    offset = length
    inputs, raw = [], []
    for spec in header["inputs"]:
        if not isinstance(spec, dict) or not {"name", "shape", "datatype"} <= spec.keys():
            raise InvalidRequest("each input needs 'name', 'shape' and 'datatype'")
        infer_input = InferInput(
            name=spec["name"],
            shape=spec["shape"],
            datatype=spec["datatype"],
            parameters=spec.get("parameters"),
        )
        parameters = spec.get("parameters")
        size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
        if spec.get("data") is not None:
            infer_input.data = spec["data"]
            raw.append(None)
        elif isinstance(size, int) and 0 <= size <= len(body) - offset:
            raw.append(body[offset : offset + size])
            offset += size
        elif size is not None:
            raise InvalidRequest(
                f"input {spec['name']!r}: binary_data_size={size} overruns the body"
            )
        else:
            raise InvalidRequest(f"input {spec['name']!r} has neither 'data' nor binary data")
        inputs.append(infer_input)
    outputs = header.get("outputs")
    requested = None
    if isinstance(outputs, list):
        requested = [
            RequestedOutput(name=o.get("name"), parameters=o.get("parameters"))
            for o in outputs
            if isinstance(o, dict) and isinstance(o.get("parameters", {}), dict)
        ]
    parameters = header.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise InvalidRequest("'parameters' must be a JSON object")
    return InferRequest(
        model_name=model_name,
        request_id=header.get("id") if isinstance(header.get("id"), str) else None,
        parameters=parameters,
        infer_inputs=inputs,
        raw_inputs=raw if any(r is not None for r in raw) else None,
        request_outputs=requested,
    )


def _tensors(request: InferRequest) -> dict[str, contract.Tensor]:
    """The request's inputs as numpy arrays (kserve decodes the tensor data)."""
    tensors = {}
    for tensor in request.inputs:
        try:
            array = tensor.as_numpy()
        except (ValueError, TypeError, OverflowError, IndexError, struct.error) as error:
            raise InvalidRequest(
                f"input '{tensor.name}': data does not match datatype {tensor.datatype} "
                f"and shape {tensor.shape} ({error})"
            ) from None
        tensors[tensor.name] = contract.Tensor(tensor.datatype, list(tensor.shape), array)
    return tensors


def _requested(request: InferRequest) -> list[tuple[str, bool]]:
    requested = (
        [(r.name, r.binary_data) for r in request.request_outputs]
        if request.request_outputs
        else None
    )
    return contract.requested_outputs(requested, request.parameters)


def _v2_response(
    request: InferRequest,
    wanted: list[tuple[str, bool]],
    results: Sequence[Detections],
    model_name: str,
    model_version: str,
) -> InferResponse:
    arrays = contract.output_arrays(results)
    outputs = []
    for name, _ in wanted:
        datatype = contract.OUTPUTS[name][0]
        output = InferOutput(name=name, shape=list(arrays[name].shape), datatype=datatype)
        if request.from_grpc:  # tritonclient reads gRPC outputs from raw contents only
            output.set_data_from_numpy(arrays[name], binary_data=True)
        else:
            output.data = arrays[name]
        outputs.append(output)
    return InferResponse(
        response_id=request.id or str(uuid.uuid4()),
        model_name=model_name,
        model_version=model_version,
        infer_outputs=outputs,
        use_binary_outputs=request.from_grpc,
        requested_outputs=None
        if request.from_grpc
        else [RequestedOutput(name=n, parameters={"binary_data": b}) for n, b in wanted],
    )
