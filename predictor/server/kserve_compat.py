"""Where kserve ends and our code begins: the only module that reaches into kserve beyond
its documented use (`kserve.Model`, its request/response types, `ModelServer`'s flags).

kserve 0.21's ModelServer is kept as the process around our code: its flags, its
`/v1/models/...:predict`, `/v2/health/*`, `/v2`, `/v2/models`, `/metrics` routes and its
gRPC ModelInfer, ServerLive/Ready/Metadata. What we replace, and why:

- REST: `_RESTServer` (a kserve RESTServer) installs our middleware, our error handlers
  (`errors.TABLE`, logging by outcome; kserve's log every 400 at ERROR with a traceback:
  kserve/errors.py `invalid_input_handler`), and our `routes.router` in place of kserve's
  routes for the same paths (kserve/protocol/rest/v2_endpoints.py: versions answer 501,
  no repository index, every load error is 503), and `torchserve.router` unless
  --no-torchserve_api. The route table is written out in `_RESTServer._register_endpoints`;
  kserve's `:explain` (no explainer here) is not served.
- gRPC: `_GRPCServer` starts kserve's servicer subclassed (`_Servicer`) with our error
  interceptor, message limits from our flags (kserve/protocol/grpc/server.py fixes 8 MiB
  from its module-level args), and Triton's RepositoryIndex, which kserve's proto lacks.
- `YoloModelServer.start` builds both servers (kserve/model_server.py `ModelServer.start`
  builds its own with no hook for either); `stop` drains instead of unloading every model
  at once (which failed in-flight requests and, with one worker, never stopped uvicorn).

kserve's own error types, raised by the code of its we still run, are translated into ours
(`serving_error`) so `errors.TABLE` decides every status code.

No kserve function or class is patched. The private kserve 0.21 names relied on (check
them when SUPPORTED_KSERVE changes): RESTServer `_add_middlewares`, `_register_endpoints`,
`_add_exception_handlers` (overridden) and `_server` (uvicorn, told to exit on SIGTERM);
ModelServer `_register_and_check_atleast_one_model_is_ready` and `_serve`.
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from concurrent import futures
from importlib import metadata
from typing import Any

import grpc
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import FastAPIDeprecationWarning, RequestValidationError
from fastapi.routing import APIRouter
from grpc import aio
from grpc_interceptor import AsyncExceptionToStatusInterceptor
from grpc_interceptor.exceptions import GrpcException
from kserve import ModelServer
from kserve import errors as kserve_errors
from kserve.model_server import FASTAPI_APP_IMPORT_STRING
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.grpc.servicer import InferenceServicer
from kserve.protocol.rest.server import RESTServer, metrics_handler
from kserve.protocol.rest.v1_endpoints import V1Endpoints
from kserve.protocol.rest.v2_datamodels import (
    ListModelsResponse,
    ServerLiveResponse,
    ServerMetadataResponse,
    ServerReadyResponse,
)
from kserve.protocol.rest.v2_endpoints import V2Endpoints

from .. import protowire
from . import contract, errors, observability, routes, torchserve
from .errors import InvalidRequest, NotSupported, ServingError, Unavailable, UnknownModel
from .repository import YoloRepository

logger = logging.getLogger(__name__)

SUPPORTED_KSERVE = "0.21.0"  # the release this module was written against
GRPC_SERVICE = "inference.GRPCInferenceService"
GRPC_MAX_MESSAGE = 2**31 - 1  # gRPC's options are C ints


class IncompatibleKServe(RuntimeError):
    pass


# kserve 0.21's V1 endpoints (kserve/protocol/rest/v1_endpoints.py) answer with FastAPI's
# deprecated ORJSONResponse, which warns on stderr at the first V1 response.
warnings.filterwarnings(
    "ignore", message="ORJSONResponse is deprecated", category=FastAPIDeprecationWarning
)


def check_kserve_version(allow_other: bool = False) -> None:
    """Refuse another kserve than SUPPORTED_KSERVE (kserve 0.21 has no `__version__`)."""
    installed = metadata.version("kserve")
    if installed != SUPPORTED_KSERVE and not allow_other:
        raise IncompatibleKServe(
            f"kserve {installed} is installed, but predictor/server/kserve_compat.py was "
            f"written for kserve {SUPPORTED_KSERVE}; install kserve=={SUPPORTED_KSERVE}, or "
            "pass --kserve_version_check off to try anyway"
        )


# -- errors -------------------------------------------------------------------------------

_KSERVE_ERRORS: tuple[tuple[type[BaseException], type[ServingError]], ...] = (
    (kserve_errors.InvalidInput, InvalidRequest),
    (kserve_errors.ModelNotFound, UnknownModel),
    (kserve_errors.ModelNotReady, Unavailable),
    (kserve_errors.ServerNotReady, Unavailable),
    (kserve_errors.ServerNotLive, Unavailable),
    (kserve_errors.UnsupportedProtocol, NotSupported),
    (NotImplementedError, NotSupported),
)


def serving_error(error: BaseException) -> BaseException:
    """Ours unchanged; kserve's (and FastAPI's body validation) as ours; others unchanged."""
    if isinstance(error, RequestValidationError):
        problems = "; ".join(
            f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg', '')}" for e in error.errors()
        )
        return InvalidRequest(f"invalid request body: {problems}")
    for kind, ours in _KSERVE_ERRORS:
        if isinstance(error, kind):
            return ours(str(error))
    return error


async def _error_response(request: Request, error: Exception) -> Response:
    error = serving_error(error)
    status = errors.status_of(error)
    observability.log_outcome(error, status, f"{request.method} {request.url.path}")
    return routes.json_response({"error": errors.client_message(error)}, status.http)


class ErrorInterceptor(AsyncExceptionToStatusInterceptor):
    """gRPC status codes from `errors.TABLE` (kserve's interceptor logs every
    INVALID_ARGUMENT at ERROR with a traceback, kserve/protocol/grpc/interceptors.py)."""

    async def handle_exception(
        self, ex: Exception, request_or_iterator: Any, context: Any, method_name: str
    ) -> None:
        if isinstance(ex, GrpcException):
            await super().handle_exception(ex, request_or_iterator, context, method_name)
            return
        error = serving_error(ex)
        status = errors.status_of(error)
        message = errors.client_message(error)
        if status.client_fault:
            observability.access_log.info(
                "gRPC %s %s",
                method_name,
                status.grpc.name,
                extra={
                    "fields": {"method": method_name, "status": status.grpc.name, "reason": message}
                },
            )
        else:
            logger.error("gRPC %s failed", method_name, exc_info=ex)
        await context.abort(status.grpc, message)


# -- REST ---------------------------------------------------------------------------------


class _RESTServer(RESTServer):
    def __init__(
        self, *args: Any, max_body_bytes: int, torchserve_api: bool, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.max_body_bytes = max_body_bytes
        self.torchserve_api = torchserve_api

    def _add_middlewares(self, app: FastAPI) -> None:
        super()._add_middlewares(app)
        app.add_middleware(observability.RequestMiddleware, max_body_bytes=self.max_body_bytes)

    def _register_endpoints(self, app: FastAPI) -> None:
        """Every route, written out: kserve's handlers for what we keep, `routes.router` for
        the rest (kserve's register_v1/v2_endpoints would add its own for the same paths)."""
        v1 = V1Endpoints(self.dataplane)
        v2 = V2Endpoints(self.dataplane)
        kept = APIRouter()
        kept.add_api_route("/", self.dataplane.live, methods=["GET"])
        kept.add_api_route("/metrics", metrics_handler, methods=["GET"])
        kept.add_api_route("/v1/models", v1.models, methods=["GET"])
        kept.add_api_route("/v1/models/{model_name}", v1.model_ready, methods=["GET"])
        kept.add_api_route(
            "/v1/models/{model_name}:predict", v1.predict, methods=["POST"], response_model=None
        )
        kept.add_api_route(
            "/v2", v2.metadata, methods=["GET"], response_model=ServerMetadataResponse
        )
        kept.add_api_route(
            "/v2/health/live", v2.live, methods=["GET"], response_model=ServerLiveResponse
        )
        kept.add_api_route(
            "/v2/health/ready", v2.ready, methods=["GET"], response_model=ServerReadyResponse
        )
        kept.add_api_route(
            "/v2/models", v2.models, methods=["GET"], response_model=ListModelsResponse
        )
        app.state.repository = self.dataplane.model_registry
        app.include_router(kept)
        app.include_router(routes.router)
        if self.torchserve_api:  # GET /ping, /predictions/..., GET /models[/...]
            app.include_router(torchserve.router)

    def _add_exception_handlers(self, app: FastAPI) -> None:
        # Any other exception reaches observability.RequestMiddleware: a logged JSON 500.
        for kind in (
            ServingError,
            RequestValidationError,
            *(kind for kind, _ in _KSERVE_ERRORS),
        ):
            app.add_exception_handler(kind, _error_response)

    def begin_shutdown(self) -> None:
        """uvicorn stops accepting connections and finishes the requests in flight."""
        self._server.should_exit = True


# -- gRPC ---------------------------------------------------------------------------------


class _Servicer(InferenceServicer):
    """kserve's servicer, with model versions and tritonclient's repository calls."""

    def __init__(self, server: YoloModelServer) -> None:
        super().__init__(server.dataplane, server.model_repository_extension)
        self.repository = server.repository

    async def ModelReady(self, request: Any, context: Any) -> Any:
        model, _ = self.repository.resolve(request.name, request.version)
        return pb.ModelReadyResponse(ready=model.ready)

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        model, _ = self.repository.resolve(request.name, request.version)
        return pb.ModelMetadataResponse(**contract.model_metadata(request.name, model.versions))

    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        name = _repository_model_name(request)
        await self.repository.load(name)
        return pb.RepositoryModelLoadResponse(model_name=name, isLoaded=True)

    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        name = _repository_model_name(request)
        self.repository.unload(name)
        return pb.RepositoryModelUnloadResponse(model_name=name, isUnloaded=True)


def _repository_model_name(request: Any) -> str:
    """The model a gRPC repository request names. kserve's proto has `model_name = 1` where
    Triton's (tritonclient's) has `repository_name = 1, model_name = 2`: field 2 is kept as
    an unknown field by kserve's message; else kserve's field 1."""
    triton = [
        value for number, value in protowire.fields(request.SerializeToString()) if number == 2
    ]
    return triton[-1].decode(errors="replace") if triton else request.model_name


def _repository_index_handler(repository: YoloRepository) -> grpc.GenericRpcHandler:
    """Triton's RepositoryIndex (tritonclient's `get_model_repository_index`), encoded by hand
    in Triton's numbering: kserve's generated module has no such messages.
    Request: repository_name = 1, ready = 2. Response: repeated ModelIndex models = 1;
    ModelIndex: name = 1, version = 2, state = 3, reason = 4."""
    keys = ("name", "version", "state", "reason")

    async def repository_index(request: bytes, context: Any) -> bytes:
        ready_only = any(
            number == 2 and wire_type == 0 and value
            for number, wire_type, value in protowire.entries(request)
        )
        rows = repository.index(ready_only)
        return b"".join(
            protowire.field(
                1,
                b"".join(
                    protowire.field(n, row[key].encode())
                    for n, key in enumerate(keys, start=1)
                    if row.get(key)
                ),
            )
            for row in rows
        )

    return grpc.method_handlers_generic_handler(
        GRPC_SERVICE, {"RepositoryIndex": grpc.unary_unary_rpc_method_handler(repository_index)}
    )


class _GRPCServer:
    """kserve's gRPC service (our servicer subclass) plus RepositoryIndex, on one port."""

    def __init__(self, server: YoloModelServer, grace_period: int) -> None:
        self.model_server = server
        self.grace_period = grace_period
        self.server: aio.Server | None = None

    async def start(self, max_workers: int) -> None:
        limits = self.model_server.grpc_limits
        self.server = aio.server(
            futures.ThreadPoolExecutor(max_workers=max_workers),
            interceptors=(ErrorInterceptor(),),
            options=[
                ("grpc.max_receive_message_length", min(limits[0], GRPC_MAX_MESSAGE)),
                ("grpc.max_send_message_length", min(limits[1], GRPC_MAX_MESSAGE)),
            ],
        )
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            _Servicer(self.model_server), self.server
        )
        self.server.add_generic_rpc_handlers(
            (_repository_index_handler(self.model_server.repository),)
        )
        self.server.add_insecure_port(f"[::]:{self.model_server.grpc_port}")
        logger.info(
            "gRPC on port %d, messages up to %d bytes in, %d out",
            self.model_server.grpc_port,
            *limits,
        )
        await self.server.start()
        await self.server.wait_for_termination()

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(grace=self.grace_period)


# -- the server ---------------------------------------------------------------------------


class YoloModelServer(ModelServer):
    """kserve's ModelServer with our REST and gRPC servers and a draining shutdown."""

    def __init__(
        self,
        repository: YoloRepository,
        max_body_bytes: int,
        grpc_limits: tuple[int, int],
        torchserve_api: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(registered_models=repository, workers=1, **kwargs)
        self.repository = repository
        self.max_body_bytes = max_body_bytes
        self.torchserve_api = torchserve_api
        self.grpc_limits = grpc_limits  # (receive, send) bytes
        self._our_rest: _RESTServer | None = None
        self._our_grpc: _GRPCServer | None = None

    def start(self, models: list[Any]) -> None:
        self._register_and_check_atleast_one_model_is_ready(models)
        self._our_rest = _RESTServer(
            FASTAPI_APP_IMPORT_STRING,
            self.dataplane,
            self.model_repository_extension,
            self.http_port,
            access_log_format=self.access_log_format,
            workers=1,
            grace_period=self.grace_period,
            event_loop=self.event_loop,
            timeout_keep_alive=self.timeout_keep_alive,
            ssl_certfile=self.ssl_certfile,
            ssl_keyfile=self.ssl_keyfile,
            max_body_bytes=self.max_body_bytes,
            torchserve_api=self.torchserve_api,
        )
        self.servers.append(self._our_rest.start())
        if self.enable_grpc:
            self._our_grpc = _GRPCServer(self, self.grace_period)
            self.servers.append(self._our_grpc.start(self.max_threads))
        self.setup_event_loop()
        self.register_signal_handler()
        asyncio.run(self._serve())

    def stop(self, sig: int) -> None:
        """On SIGTERM: readiness false, finish what is in flight, then exit 0."""
        logger.info("signal %s: draining (readiness now false)", sig)
        for model in self.registered_models.get_models().values():
            model.ready = False
        asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        if self._our_rest is not None:
            self._our_rest.begin_shutdown()
        if self._our_grpc is not None:
            await self._our_grpc.stop()
        logger.info("in-flight requests drained; exiting")
