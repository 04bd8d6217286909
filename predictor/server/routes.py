"""Our REST routes: V2 model metadata, labels, readiness and inference, each with or without
a version, and the V2 repository extension (index, load, unload). They read the repository
from the application's state; `kserve_compat` puts them in place of kserve's routes for the
same paths (kserve 0.21 answers versions with 501, has no repository index, and turns every
load error into 503).
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request, Response

from . import contract
from .errors import InvalidRequest, Unavailable
from .model import INFERENCE_HEADER, v2_request
from .repository import YoloRepository

MODEL = "/v2/models/{model_name}"
VERSIONED = MODEL + "/versions/{model_version}"
REPOSITORY = "/v2/repository"

router = APIRouter()


def _repository(request: Request) -> YoloRepository:
    return request.app.state.repository


async def model_metadata(
    request: Request, model_name: str, model_version: str | None = None
) -> dict[str, Any]:
    model, version = _repository(request).resolve(model_name, model_version)
    return contract.model_metadata(model_name, list(model.versions), version.parameters)


async def labels(
    request: Request, model_name: str, model_version: str | None = None
) -> dict[str, Any]:
    """Class names by id: what `classes`/`labels` outputs and the `classes` parameter use."""
    _, version = _repository(request).resolve(model_name, model_version)
    return {"name": model_name, "version": version.version, "labels": version.names}


async def model_ready(
    request: Request, model_name: str, model_version: str | None = None
) -> dict[str, Any]:
    model, _ = _repository(request).resolve(model_name, model_version)
    if not model.ready:
        raise Unavailable(f"model {model_name!r} is not ready")
    return {"name": model_name, "ready": True}


async def infer(request: Request, model_name: str, model_version: str | None = None) -> Response:
    """V2 inference; the version comes from the path, else the default."""
    model, version = _repository(request).resolve(model_name, model_version)
    if not model.ready:
        raise Unavailable(f"model {model_name!r} is not ready")
    headers = dict(request.headers)
    infer_request = v2_request(await request.body(), headers, model_name)
    infer_request.model_version = version.version
    response, _ = await model(infer_request, headers)
    body, json_length = response.to_rest()
    if isinstance(body, bytes):  # binary outputs: a JSON header, then the tensors
        return Response(body, headers={INFERENCE_HEADER: str(json_length)})
    return json_response(body)


def json_response(body: Any, status_code: int = 200) -> Response:
    """JSON with orjson (numpy arrays included), as kserve's REST answers."""
    return Response(
        orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY),
        status_code=status_code,
        media_type="application/json",
    )


async def repository_index(request: Request) -> list[dict[str, str]]:
    """Triton's repository index: body `{"ready": true}` or none."""
    body = await request.body()
    options = contract.parse_json(body) if body.strip() else {}
    if not isinstance(options, dict):
        raise InvalidRequest('expected a JSON object such as {"ready": true}, or no body')
    return _repository(request).index(ready_only=options.get("ready") is True)


async def load(request: Request, model_name: str) -> dict[str, Any]:
    await _repository(request).load(model_name)
    return {"name": model_name, "load": True}


async def unload(request: Request, model_name: str) -> dict[str, Any]:
    _repository(request).unload(model_name)
    return {"name": model_name, "unload": True}


for _path in (MODEL, VERSIONED):
    router.add_api_route(_path, model_metadata, methods=["GET"])
    router.add_api_route(_path + "/labels", labels, methods=["GET"])
    router.add_api_route(_path + "/ready", model_ready, methods=["GET"])
    router.add_api_route(_path + "/infer", infer, methods=["POST"], response_model=None)
router.add_api_route(REPOSITORY + "/index", repository_index, methods=["POST"])
router.add_api_route(REPOSITORY + "/models/{model_name}/load", load, methods=["POST"])
router.add_api_route(REPOSITORY + "/models/{model_name}/unload", unload, methods=["POST"])
