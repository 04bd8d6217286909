"""What we add to KServe's FastAPI app: middleware, error handlers, class names and the
model-version routes that kserve 0.21 answers with 501."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import ORJSONResponse
from kserve import model_server
from kserve.errors import ModelNotFound, ModelNotReady
from kserve.protocol.rest.v2_datamodels import InferenceRequest
from kserve.protocol.rest.v2_endpoints import V2Endpoints

from . import contract
from .limits import LimitExceeded, Limits
from .model import YoloV5Model
from .observability import RequestMiddleware

if TYPE_CHECKING:
    from kserve import ModelServer
    from kserve.protocol.dataplane import DataPlane


def extend(server: ModelServer, limits: Limits) -> None:
    app = model_server.app
    app.add_middleware(RequestMiddleware, max_body_bytes=limits.max_request_bytes)
    app.add_exception_handler(LimitExceeded, _limit_exceeded)
    app.add_exception_handler(RequestValidationError, _invalid_body)

    def model(name: str) -> YoloV5Model:
        found = server.registered_models.get_model(name)
        if not isinstance(found, YoloV5Model):
            raise ModelNotFound(name)
        return found

    async def metadata(model_name: str, model_version: str | None = None) -> dict[str, Any]:
        served = model(model_name)
        served.version(model_version)
        return {
            "name": model_name,
            "versions": list(served.versions),
            "platform": "",
            "inputs": contract.input_metadata(),
            "outputs": contract.output_metadata(),
        }

    async def labels(model_name: str, model_version: str | None = None) -> dict[str, Any]:
        """Class names by id: what `classes`/`labels` outputs and the `classes` parameter use."""
        version = model(model_name).version(model_version)
        return {"name": model_name, "version": version.version, "labels": version.names}

    async def ready(model_name: str, model_version: str | None = None) -> dict[str, Any]:
        served = model(model_name)
        served.version(model_version)
        if not served.ready:
            raise ModelNotReady(model_name)
        return {"name": model_name, "ready": True}

    async def infer(
        raw_request: Request,
        raw_response: Response,
        model_name: str,
        request_body: InferenceRequest | bytes,
        model_version: str | None = None,
    ) -> Any:
        """kserve's V2 infer, with the version from the path or a `model_version` query."""
        dataplane: Any = server.dataplane
        if model_version:
            model(model_name).version(model_version)
            dataplane = _VersionedDataPlane(dataplane, model_version)
        return await V2Endpoints(dataplane).infer(
            raw_request, raw_response, model_name, request_body
        )

    prefix = "/v2/models/{model_name}"
    versioned = prefix + "/versions/{model_version}"
    # Registered before kserve's own routes, so these answer (kserve's give 501 for versions).
    for path in (prefix, versioned):
        app.add_api_route(path, metadata, methods=["GET"])
        app.add_api_route(path + "/labels", labels, methods=["GET"])
        app.add_api_route(path + "/ready", ready, methods=["GET"])
        app.add_api_route(path + "/infer", infer, methods=["POST"], response_model=None)


class _VersionedDataPlane:
    """kserve's DataPlane, but decoded requests ask for one model version."""

    def __init__(self, dataplane: DataPlane, version: str) -> None:
        self._dataplane = dataplane
        self._version = version

    def decode(self, *args: Any, **kwargs: Any) -> Any:
        request, attributes = self._dataplane.decode(*args, **kwargs)
        request.model_version = self._version
        return request, attributes

    def __getattr__(self, name: str) -> Any:
        return getattr(self._dataplane, name)


async def _limit_exceeded(_: Request, error: LimitExceeded) -> ORJSONResponse:
    return ORJSONResponse({"error": error.reason}, status_code=413)


async def _invalid_body(_: Request, error: RequestValidationError) -> ORJSONResponse:
    problems = "; ".join(
        f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg', '')}" for e in error.errors()
    )
    return ORJSONResponse({"error": f"invalid request body: {problems}"}, status_code=400)
