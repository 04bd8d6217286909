"""What we add to KServe's FastAPI app: middleware, error handlers and the labels route."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import ORJSONResponse
from kserve import model_server
from kserve.errors import ModelNotFound

from .limits import LimitExceeded, Limits
from .observability import RequestMiddleware

if TYPE_CHECKING:
    from .model import YoloV5Model


def extend(model: YoloV5Model, limits: Limits) -> None:
    app = model_server.app
    app.add_middleware(RequestMiddleware, max_body_bytes=limits.max_request_bytes)

    async def limit_exceeded(_: Request, error: LimitExceeded) -> ORJSONResponse:
        return ORJSONResponse({"error": error.reason}, status_code=413)

    app.add_exception_handler(LimitExceeded, limit_exceeded)

    async def invalid_body(_: Request, error: RequestValidationError) -> ORJSONResponse:
        problems = "; ".join(
            f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg', '')}" for e in error.errors()
        )
        return ORJSONResponse({"error": f"invalid request body: {problems}"}, status_code=400)

    app.add_exception_handler(RequestValidationError, invalid_body)

    async def labels(model_name: str) -> dict[str, object]:
        """`GET /v2/models/<name>/labels` -> {"name": ..., "labels": [class names by id]}."""
        if model_name != model.name:
            raise ModelNotFound(model_name)
        return {"name": model.name, "labels": model.names}

    app.add_api_route("/v2/models/{model_name}/labels", labels, methods=["GET"])
