"""Routes the V2 protocol lacks: the class names a model detects."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kserve import model_server
from kserve.errors import ModelNotFound

if TYPE_CHECKING:
    from .model import YoloV5Model


def register(model: YoloV5Model) -> None:
    """`GET /v2/models/<name>/labels` -> {"name": ..., "labels": [class names by id]}."""

    async def labels(model_name: str) -> dict[str, object]:
        if model_name != model.name:
            raise ModelNotFound(model_name)
        return {"name": model.name, "labels": model.names}

    model_server.app.add_api_route("/v2/models/{model_name}/labels", labels, methods=["GET"])
