"""Fixes for gaps in kserve 0.21's V2 REST decoding, applied once at server start.

Each fix is small and self-contained so it can be proposed upstream:

1. A V2 body without the `Inference-Header-Content-Length` header is all JSON (that is
   what the binary-data extension specifies). kserve 0.21 rejects such a body with 400
   whenever its Content-Type is not `application/json`: tritonclient's JSON requests and
   `curl -d` (form Content-Type) both hit this.
2. BYTES inputs sent with the binary-data extension are opaque bytes. kserve 0.21 decodes
   them as UTF-8 text, so any JPEG or PNG fails with a 500.
3. A malformed binary-extension request is the client's error (400), not the server's.
4. Repository load and unload errors keep their meaning: kserve turned every load error
   into 503. Here an unknown model is 404 / NOT_FOUND, and a model that cannot be served
   (what would stop the server at start: a bad checkpoint or config.yaml, too many models)
   is 400 / INVALID_ARGUMENT, with the reason.
5. gRPC repository load and unload work with tritonclient. kserve's proto has
   `model_name = 1` where Triton's has `repository_name = 1, model_name = 2`, so kserve read
   tritonclient's model as ''; and its servicer read a result the extension never returns,
   so every gRPC load and unload failed.
6. `ModelNotReady` has no `reason`, which kserve's gRPC error interceptor reads: clients got
   UNKNOWN ("'ModelNotReady' object has no attribute 'reason'") instead of UNAVAILABLE.
"""

from __future__ import annotations

from typing import Any

from kserve.errors import InvalidInput, ModelNotFound, ModelNotReady
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc.servicer import InferenceServicer
from kserve.protocol.infer_type import InferInput, InferRequest, RequestedOutput
from kserve.protocol.model_repository_extension import ModelRepositoryExtension

from .. import protowire
from .contract import parse_json

INFERENCE_HEADER = "inference-header-content-length"


def decode_inference_request(
    self: DataPlane, body: Any, headers: dict[str, str], model_name: str
) -> InferRequest:
    if not isinstance(body, bytes):
        return InferRequest.from_inference_request(body, model_name)
    json_length = headers.get(INFERENCE_HEADER)
    if json_length is None:
        return infer_request_from_bytes(body, len(body), model_name)
    try:
        length = int(json_length)
    except ValueError:
        raise InvalidInput(f"{INFERENCE_HEADER} must be an integer, got {json_length!r}") from None
    if not 0 <= length <= len(body):
        raise InvalidInput(f"{INFERENCE_HEADER}={length} but the body has {len(body)} bytes")
    return infer_request_from_bytes(body, length, model_name)


def infer_request_from_bytes(body: bytes, json_length: int, model_name: str) -> InferRequest:
    """A V2 REST request: a JSON header, optionally followed by binary tensor data."""
    header = parse_json(body[:json_length])
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        raise InvalidInput("request must be a JSON object with an 'inputs' list")
    offset = json_length
    inputs = []
    for spec in header["inputs"]:
        try:
            infer_input = InferInput(
                name=spec["name"],
                shape=spec["shape"],
                datatype=spec["datatype"],
                parameters=spec.get("parameters"),
            )
        except (KeyError, TypeError):
            raise InvalidInput("each input needs 'name', 'shape' and 'datatype'") from None
        size = (spec.get("parameters") or {}).get("binary_data_size")
        if spec.get("data") is not None:
            infer_input.data = spec["data"]
        elif isinstance(size, int) and size >= 0 and offset + size <= len(body):
            infer_input._raw_data = body[offset : offset + size]
            offset += size
        elif size is not None:
            raise InvalidInput(
                f"input '{infer_input.name}': binary_data_size={size} overruns the body"
            )
        else:
            raise InvalidInput(f"input '{infer_input.name}' has neither 'data' nor binary data")
        inputs.append(infer_input)
    outputs = header.get("outputs")
    requested = None
    if isinstance(outputs, list):
        requested = [
            RequestedOutput(name=o.get("name"), parameters=o.get("parameters"))
            for o in outputs
            if isinstance(o, dict)
        ]
    return InferRequest(
        model_name=model_name,
        request_id=header.get("id"),
        parameters=header.get("parameters"),
        infer_inputs=inputs,
        request_outputs=requested,
    )


async def load_model(self: ModelRepositoryExtension, model_name: str) -> None:
    try:
        await self._model_registry.load(model_name)
    except (ModelNotFound, InvalidInput):
        raise
    except ValueError as error:  # a bad checkpoint or config.yaml, --max_loaded_models
        raise InvalidInput(f"cannot load model {model_name!r}: {error}") from None
    except Exception as error:
        raise ModelNotReady(model_name, f"{type(error).__name__}: {error}") from None
    if not await self._model_registry.is_model_ready(model_name):
        raise ModelNotReady(model_name)


async def unload_model(self: ModelRepositoryExtension, model_name: str) -> None:
    try:
        self._model_registry.unload(model_name)
    except KeyError:
        raise ModelNotFound(model_name) from None


def repository_model_name(request: Any) -> str:
    """The model a gRPC repository request names, in either proto: Triton's `model_name`
    (field 2, unknown to kserve's message, which keeps it) or else kserve's (field 1)."""
    triton = [
        value for number, value in protowire.fields(request.SerializeToString()) if number == 2
    ]
    return triton[-1].decode(errors="replace") if triton else request.model_name


async def grpc_repository_load(self: InferenceServicer, request: Any, context: Any) -> Any:
    name = repository_model_name(request)
    await self._mode_repository_extension.load(name)
    return pb.RepositoryModelLoadResponse(model_name=name, isLoaded=True)


async def grpc_repository_unload(self: InferenceServicer, request: Any, context: Any) -> Any:
    name = repository_model_name(request)
    await self._mode_repository_extension.unload(name)
    return pb.RepositoryModelUnloadResponse(model_name=name, isUnloaded=True)


def apply() -> None:
    """Install the fixes (idempotent)."""
    DataPlane.decode_inference_request = decode_inference_request  # type: ignore[method-assign]
    ModelRepositoryExtension.load = load_model  # type: ignore[method-assign]
    ModelRepositoryExtension.unload = unload_model  # type: ignore[method-assign]
    InferenceServicer.RepositoryModelLoad = grpc_repository_load  # type: ignore[method-assign]
    InferenceServicer.RepositoryModelUnload = grpc_repository_unload  # type: ignore[method-assign]
    ModelNotReady.reason = property(str)  # type: ignore[attr-defined]
