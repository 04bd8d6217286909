"""TorchServe's inference API and its read-only management "list/describe", on the HTTP port,
so that TorchServe clients keep working unchanged (docs/torchserve.md).

The transport is TorchServe's (pytorch/serve frontend/server/.../http/api/rest/
InferenceRequestHandler.java, ManagementRequestHandler.java, util/ApiUtils.java): paths,
methods, body forms, and its error body `{"code", "type", "message"}` (http/ErrorResponse.java,
util/NettyUtils.java `sendError`: `type` is the exception's simple name). The detections are
V1's (`contract.v1_response`), since every custom handler returned its own format. Status
codes come from `errors.TABLE`, as on every other route.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import ORJSONResponse
from fastapi.routing import APIRoute
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header

from . import errors, observability
from .errors import (
    InvalidRequest,
    ServingError,
    Unavailable,
    UnknownModel,
    UnknownVersion,
)
from .limits import Limits
from .model import ImagesRequest, LoadedVersion, YoloV5Model
from .repository import YoloRepository

PAGE_LIMIT = 100  # TorchServe's default and largest `limit` (ApiUtils.getModelList)
ALL_VERSIONS = "all"

# TorchServe's exception names for our errors (most specific first); others: our own name.
_EXCEPTION_NAMES: tuple[tuple[type[ServingError], str], ...] = (
    (UnknownVersion, "ModelVersionNotFoundException"),
    (UnknownModel, "ModelNotFoundException"),
    (Unavailable, "ServiceUnavailableException"),
    (errors.LimitExceeded, "LimitExceeded"),  # TorchServe has none: netty answers 413 bare
    (InvalidRequest, "BadRequestException"),
)


def error_body(error: ServingError, path_params: dict[str, str]) -> dict[str, Any]:
    """TorchServe's error body; an unknown model or version says so in TorchServe's words."""
    kind = next((name for cls, name in _EXCEPTION_NAMES if isinstance(error, cls)), None)
    model = path_params.get("model_name", "")
    if isinstance(error, UnknownVersion):
        version = path_params.get("model_version", "")
        message = f"Model version: {version} does not exist for model: {model}"
    elif isinstance(error, UnknownModel):
        message = f"Model not found: {model}"
    else:
        message = errors.client_message(error)
    return {
        "code": errors.status_of(error).http,
        "type": kind or type(error).__name__,
        "message": message,
    }


class _TorchServeRoute(APIRoute):
    """Our errors in TorchServe's body on these routes (a fault of ours still reaches the
    request middleware: a logged JSON 500)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except ServingError as error:
                status = errors.status_of(error)
                observability.log_outcome(error, status, f"{request.method} {request.url.path}")
                body = error_body(error, dict(request.path_params))
                return ORJSONResponse(body, status_code=status.http)

        return handle


router = APIRouter(route_class=_TorchServeRoute)


def _repository(request: Request) -> YoloRepository:
    return request.app.state.repository


async def ping(request: Request) -> Response:
    """Healthy once every loaded model is ready (warmed up); 503 while one is not, as when
    the server drains for shutdown (TorchServe answers 500 there)."""
    healthy = all(model.ready for model in _repository(request).models.values())
    return ORJSONResponse(
        {"status": "Healthy" if healthy else "Unhealthy"}, status_code=200 if healthy else 503
    )


async def predictions(
    request: Request, model_name: str, model_version: str | None = None
) -> Response:
    """One image (the raw body) answers its list of detections; a multipart form, one
    image per field, a list per image in field order (one field: that image's list)."""
    model, version = _repository(request).resolve(model_name, model_version)
    if not model.ready:
        raise Unavailable(f"model {model_name!r} is not ready")
    images, multipart = request_images(
        request.headers.get("content-type", ""), await request.body(), version.options.limits
    )
    payload = ImagesRequest(images, dict(request.query_params), version.version)
    answer, _ = await model(payload, dict(request.headers))
    detections = [prediction["detections"] for prediction in answer["predictions"]]
    return ORJSONResponse(detections if multipart and len(detections) > 1 else detections[0])


def request_images(content_type: str, body: bytes, limits: Limits) -> tuple[list[bytes], bool]:
    """The images of a TorchServe request and whether it was a multipart form: the fields
    of `multipart/form-data`, else the body itself, whatever its Content-Type (`curl -T`
    sends none, `--data-binary` a form's)."""
    media_type, options = parse_options_header(content_type)
    if media_type != b"multipart/form-data":
        return [body], False
    boundary = options.get(b"boundary")
    if not boundary:
        raise InvalidRequest("multipart/form-data without a boundary")
    return _form_fields(boundary, body, limits), True


def _form_fields(boundary: bytes, body: bytes, limits: Limits) -> list[bytes]:
    fields: list[bytearray] = []

    def begin() -> None:
        limits.check_image_count(len(fields) + 1)  # before a form of many tiny fields grows
        fields.append(bytearray())

    def data(chunk: bytes, start: int, end: int) -> None:
        fields[-1] += chunk[start:end]

    try:
        parser = MultipartParser(boundary, {"on_part_begin": begin, "on_part_data": data})
        parser.write(body)
        parser.finalize()
    except FormParserError as error:  # a malformed body, or a boundary over 70 bytes
        raise InvalidRequest(f"malformed multipart/form-data body: {error}") from None
    if parser.state != MultipartState.END:
        raise InvalidRequest("malformed multipart/form-data body: no closing boundary")
    if not fields:
        raise InvalidRequest("multipart/form-data body without fields: one image per field")
    return [bytes(field) for field in fields]


async def list_models(request: Request) -> dict[str, Any]:
    """TorchServe's list: loaded models by name, `limit` (at most 100) from
    `next_page_token`; the token is there whenever the page reached `limit` (as TorchServe)."""
    repository = _repository(request)
    limit = _int_parameter(request, "limit", PAGE_LIMIT)
    limit = limit if 0 <= limit <= PAGE_LIMIT else PAGE_LIMIT
    start = max(_int_parameter(request, "next_page_token", 0), 0)
    names = sorted(repository.models)
    end = start + limit
    page: dict[str, Any] = {}
    if end <= len(names):
        page["nextPageToken"] = str(end)
    page["models"] = [
        {"modelName": name, "modelUrl": _model_url(repository, name)} for name in names[start:end]
    ]
    return page


def _int_parameter(request: Request, key: str, default: int) -> int:
    """TorchServe's NettyUtils.getIntParameter: a missing or non-integer value is the default."""
    try:
        return int(request.query_params.get(key, default))
    except ValueError:
        return default


async def describe(
    request: Request, model_name: str, model_version: str | None = None
) -> list[dict[str, Any]]:
    """TorchServe's describe: one entry for the version (default: the default version), or
    every version for `all`, with what this server knows of each."""
    repository = _repository(request)
    model, _ = repository.resolve(model_name)
    if model_version == ALL_VERSIONS:
        versions = list(model.versions.values())
    else:
        versions = [model.version(model_version)]
    return [_description(repository, model, version) for version in versions]


def _description(
    repository: YoloRepository, model: YoloV5Model, version: LoadedVersion
) -> dict[str, Any]:
    record = repository.loaded.get(model.name)
    archive = record.entry.archives.get(version.version) if record else None
    scheduler = version.scheduler
    device = version.detector.device
    streams = scheduler.parallelism.streams
    started = (
        datetime.datetime.fromtimestamp(record.loaded_at, datetime.UTC).isoformat()
        if record
        else None
    )
    return {
        "modelName": model.name,
        "modelVersion": version.version,
        "modelUrl": _model_url(repository, model.name, version.version),
        "runtime": archive.manifest.runtime if archive else "python",
        "minWorkers": streams,
        "maxWorkers": streams,
        "batchSize": scheduler.max_batch_size,
        "maxBatchDelay": round(scheduler.max_batch_delay * 1000),
        "deviceType": "gpu" if device.type == "cuda" else "cpu",
        "deviceIds": [device.index or 0] if device.type == "cuda" else [],
        "loadedAtStartup": bool(record and record.at_startup),
        "workers": [
            {
                "id": str(stream),
                "startTime": started,
                "status": "READY" if model.ready else "UNLOADING",
                "pid": os.getpid(),
                "gpu": device.type == "cuda",
            }
            for stream in range(streams)
        ],
    }


def _model_url(repository: YoloRepository, name: str, version: str | None = None) -> str:
    """What the model was loaded from: the archive's file name (TorchServe's modelUrl), or
    the checkpoint's path inside --model_dir."""
    record = repository.loaded.get(name)
    if record is None:
        return ""
    entry = record.entry
    version = version or entry.versions[-1].version
    archive = entry.archives.get(version)
    if archive is not None:
        return archive.path.name
    checkpoint = next(spec.checkpoint for spec in entry.versions if spec.version == version)
    root = repository.root
    return checkpoint.name if root.is_file() else str(checkpoint.relative_to(root))


for _path in ("/predictions/{model_name}", "/predictions/{model_name}/{model_version}"):
    router.add_api_route(_path, predictions, methods=["POST", "PUT"], response_model=None)
router.add_api_route("/ping", ping, methods=["GET"], response_model=None)
router.add_api_route("/models", list_models, methods=["GET"])
router.add_api_route("/models/{model_name}", describe, methods=["GET"])
router.add_api_route("/models/{model_name}/{model_version}", describe, methods=["GET"])
