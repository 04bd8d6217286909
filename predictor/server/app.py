"""What we add to KServe's FastAPI app and gRPC servicer: middleware, error handlers, class
names, and model versions (kserve 0.21 answers the REST version routes with 501, and its
gRPC ModelReady and ModelMetadata ignore the version asked for)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import ORJSONResponse
from kserve import model_server
from kserve.errors import InvalidInput, ModelNotFound, ModelNotReady
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc.servicer import InferenceServicer
from kserve.protocol.rest.v2_datamodels import InferenceRequest
from kserve.protocol.rest.v2_endpoints import V2Endpoints

from . import contract, grpc_services
from .limits import LimitExceeded, Limits
from .model import YoloV5Model
from .observability import RequestMiddleware
from .repository import YoloRepository

if TYPE_CHECKING:
    from kserve import ModelServer
    from kserve.protocol.dataplane import DataPlane


def extend(server: ModelServer, repository: YoloRepository, limits: Limits) -> None:
    app = model_server.app
    app.add_middleware(RequestMiddleware, max_body_bytes=limits.max_request_bytes)
    app.add_exception_handler(LimitExceeded, _limit_exceeded)
    app.add_exception_handler(RequestValidationError, _invalid_body)

    def model(name: str) -> YoloV5Model:
        found = repository.get_model(name)
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

    async def grpc_model_ready(_: InferenceServicer, request: Any, context: Any) -> Any:
        served = model(request.name)
        served.version(request.version)
        return pb.ModelReadyResponse(ready=served.ready)

    async def grpc_model_metadata(_: InferenceServicer, request: Any, context: Any) -> Any:
        return pb.ModelMetadataResponse(**await metadata(request.name, request.version))

    InferenceServicer.ModelReady = grpc_model_ready  # type: ignore[method-assign]
    InferenceServicer.ModelMetadata = grpc_model_metadata  # type: ignore[method-assign]

    async def repository_index(request: Request) -> list[dict[str, str]]:
        """Triton's repository index (kserve 0.21 has none): body `{"ready": true}` or none."""
        body = await request.body()
        options = contract.parse_json(body) if body.strip() else {}
        if not isinstance(options, dict):
            raise InvalidInput('expected a JSON object such as {"ready": true}, or no body')
        return repository.index(ready_only=options.get("ready") is True)

    app.add_api_route("/v2/repository/index", repository_index, methods=["POST"])
    grpc_services.add_repository_index(lambda ready: repository.index(ready_only=ready))


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
