"""The V2 (Open Inference Protocol) and V1 contract of the YOLOv5 service, as plain Python:
numpy arrays and dicts in, our errors (`errors`) out. No kserve here (its adapter is
`model`), so every input form, parameter and limit is unit-tested in-process.

Input `image`: BYTES [N] of encoded images (raw bytes over gRPC and the REST binary
extension, base64 text in REST JSON), or UINT8 [N,H,W,3] / [H,W,3] RGB pixels.
Outputs: num_detections INT32 [N], boxes FP32 [N,K,4] (x1,y1,x2,y2 in image pixels),
scores FP32 [N,K], classes INT32 [N,K], labels BYTES [N,K]; K is the largest count in the
batch and padding is score 0, class -1, label "".
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from .. import protowire
from ..detector import Detections, DetectionSettings
from ..imaging import ImageDecodeError, decode_image
from ..nms import MAX_CANDIDATES
from .errors import InvalidRequest
from .limits import Limits, encoded_image_size

INPUT_NAME = "image"
OUTPUTS: dict[str, tuple[str, list[int]]] = {
    "num_detections": ("INT32", [-1]),
    "boxes": ("FP32", [-1, -1, 4]),
    "scores": ("FP32", [-1, -1]),
    "classes": ("INT32", [-1, -1]),
    "labels": ("BYTES", [-1, -1]),
}

MAX_LABEL_BYTES = 256
RESPONSE_OVERHEAD_BYTES = 64 * 1024

# An image as it arrives: encoded bytes, or an HxWx3 RGB uint8 array.
ImageInput = bytes | np.ndarray


@dataclass(frozen=True)
class Tensor:
    """An input tensor as the protocol layer decoded it."""

    datatype: str
    shape: list[int]
    array: np.ndarray


def input_metadata() -> list[dict[str, Any]]:
    return [{"name": INPUT_NAME, "datatype": "BYTES", "shape": [-1]}]


def output_metadata() -> list[dict[str, Any]]:
    return [{"name": n, "datatype": t, "shape": s} for n, (t, s) in OUTPUTS.items()]


def model_metadata(
    name: str, versions: Sequence[str], parameters: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The V2 model metadata; `parameters` (REST only: gRPC's ModelMetadataResponse has no
    such field) say which backend and precision serve the version asked about."""
    metadata = {
        "name": name,
        "versions": list(versions),
        "platform": "",
        "inputs": input_metadata(),
        "outputs": output_metadata(),
    }
    if parameters is not None:
        metadata["parameters"] = dict(parameters)
    return metadata


def largest_response_bytes(max_images: int) -> int:
    """An upper bound on one response's size: every image with NMS's most candidates, each
    with a class name of up to MAX_LABEL_BYTES (the gRPC send limit)."""
    per_detection = 4 * 4 + 4 + 4 + 4 + MAX_LABEL_BYTES  # box, score, class, label length+text
    return max_images * (4 + MAX_CANDIDATES * per_detection) + RESPONSE_OVERHEAD_BYTES


# -- requests -----------------------------------------------------------------------------


def images_from_v2(inputs: Mapping[str, Tensor]) -> list[ImageInput]:
    """The images of a V2 request's inputs (by name)."""
    tensor = inputs.get(INPUT_NAME)
    if tensor is None:
        raise InvalidRequest(f"input '{INPUT_NAME}' is required (got {list(inputs)})")
    array = tensor.array
    if tensor.datatype == "BYTES":
        if array.ndim != 1:
            raise InvalidRequest(
                f"input '{INPUT_NAME}': BYTES must have shape [N], got {tensor.shape}"
            )
        return [_encoded_image(item, index) for index, item in enumerate(array)]
    if tensor.datatype == "UINT8":
        if array.ndim == 3:
            array = array[None]
        if array.ndim != 4 or array.shape[-1] != 3:
            raise InvalidRequest(
                f"input '{INPUT_NAME}': UINT8 pixels must have shape [N,H,W,3] or [H,W,3], "
                f"got {tensor.shape}"
            )
        return list(array)
    raise InvalidRequest(
        f"input '{INPUT_NAME}': datatype must be BYTES (encoded images) or UINT8 (RGB pixels), "
        f"got {tensor.datatype}"
    )


def _encoded_image(item: Any, index: int) -> bytes:
    if isinstance(item, bytes):  # raw bytes: gRPC and the REST binary extension
        return item
    if isinstance(item, str):  # REST JSON carries base64 text
        try:
            return base64.b64decode(item, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequest(f"input '{INPUT_NAME}'[{index}]: not valid base64") from None
    raise InvalidRequest(f"input '{INPUT_NAME}'[{index}]: expected bytes or base64 text")


def parse_json(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise InvalidRequest(f"request body is not valid JSON: {error}") from None


def images_from_v1(body: Mapping[str, Any]) -> list[bytes]:
    instances = body.get("instances")
    if not isinstance(instances, list) or not instances:
        raise InvalidRequest('V1 body must be {"instances": [{"image": {"b64": "..."}}, ...]}')
    images = []
    for index, instance in enumerate(instances):
        value = instance.get("image", instance) if isinstance(instance, dict) else instance
        if isinstance(value, dict):
            value = value.get("b64")
        if not isinstance(value, str):
            raise InvalidRequest(f'instances[{index}]: expected {{"image": {{"b64": "..."}}}}')
        images.append(_encoded_image(value, index))
    return images


def detection_settings(
    parameters: Mapping[str, Any] | None, defaults: DetectionSettings, names: Sequence[str]
) -> DetectionSettings:
    """Request parameters (numbers, numeric strings or gRPC InferParameters) over defaults."""
    params = {k: _plain(v) for k, v in (parameters or {}).items()}
    changes: dict[str, Any] = {}
    for key in ("conf_threshold", "iou_threshold"):
        if key in params:
            changes[key] = _number(key, params[key], float)
    if "max_det" in params:
        changes["max_det"] = _number("max_det", params["max_det"], int)
    if "agnostic_nms" in params:
        changes["agnostic"] = _boolean("agnostic_nms", params["agnostic_nms"])
    if params.get("classes") not in (None, ""):
        changes["classes"] = _class_ids(params["classes"], names)
    try:
        return dataclasses.replace(defaults, **changes)
    except ValueError as error:
        raise InvalidRequest(f"parameter {error}") from None


def _plain(value: Any) -> Any:
    """A gRPC InferParameter's value; other values unchanged."""
    if hasattr(value, "WhichOneof"):
        field = value.WhichOneof("parameter_choice")
        return getattr(value, field) if field else _triton_only_parameter(value)
    return value


def _triton_only_parameter(parameter: Any) -> float | int | None:
    """Triton's InferParameter adds `double_param = 4` and `uint64_param = 5` (tritonclient
    sends every Python float as a double); kserve's message keeps them as unknown fields."""
    for number, wire_type, value in protowire.entries(parameter.SerializeToString()):
        if number == 4 and wire_type == 1:
            return struct.unpack("<d", value)[0]  # type: ignore[arg-type]
        if number == 5 and wire_type == 0:
            return value
    return None


def _number(key: str, value: Any, kind: type) -> Any:
    if isinstance(value, bool):
        raise InvalidRequest(f"parameter {key} must be a number, got {value!r}")
    try:
        number = kind(float(value)) if kind is int and isinstance(value, str) else kind(value)
    except (TypeError, ValueError):
        raise InvalidRequest(f"parameter {key} must be a number, got {value!r}") from None
    if kind is int and float(value) != number:
        raise InvalidRequest(f"parameter {key} must be an integer, got {value!r}")
    if isinstance(number, float) and number != number:  # NaN
        raise InvalidRequest(f"parameter {key} must be a number, got {value!r}")
    return number


def _boolean(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes"):
        return True
    if text in ("0", "false", "no"):
        return False
    raise InvalidRequest(f"parameter {key} must be true or false, got {value!r}")


def _class_ids(value: Any, names: Sequence[str]) -> tuple[int, ...]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        items = [items]
    ids = []
    for item in items:
        token = str(item).strip()
        if token.lstrip("-").isdigit():
            class_id = int(token)
            if not 0 <= class_id < len(names):
                raise InvalidRequest(
                    f"parameter classes: id {class_id} is not in 0..{len(names) - 1}"
                )
        elif token in names:
            class_id = names.index(token)
        else:
            raise InvalidRequest(
                f"parameter classes: unknown class {token!r}; classes are {list(names)}"
            )
        ids.append(class_id)
    return tuple(ids)


def check_limits(limits: Limits, images: Sequence[ImageInput]) -> None:
    """Reject an empty or oversized request from image headers alone, before decoding."""
    if not images:
        raise InvalidRequest(f"input '{INPUT_NAME}' holds no images")
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


def to_bgr(index: int, image: ImageInput) -> np.ndarray:
    """One image as the HxWx3 BGR uint8 array the detector takes."""
    if isinstance(image, bytes):
        try:
            return decode_image(image)
        except ImageDecodeError as error:
            raise InvalidRequest(f"input '{INPUT_NAME}'[{index}]: {error}") from None
    if min(image.shape[:2]) < 1:
        raise InvalidRequest(f"input '{INPUT_NAME}'[{index}]: empty image")
    return np.ascontiguousarray(image[..., ::-1])


# -- responses ----------------------------------------------------------------------------


def output_arrays(results: Sequence[Detections]) -> dict[str, np.ndarray]:
    n = len(results)
    k = max((len(r) for r in results), default=0)
    arrays = {
        "num_detections": np.array([len(r) for r in results], dtype=np.int32),
        "boxes": np.zeros((n, k, 4), dtype=np.float32),
        "scores": np.zeros((n, k), dtype=np.float32),
        "classes": np.full((n, k), -1, dtype=np.int32),
        "labels": np.full((n, k), b"", dtype=object),
    }
    for i, result in enumerate(results):
        count = len(result)
        arrays["boxes"][i, :count] = result.boxes
        arrays["scores"][i, :count] = result.scores
        arrays["classes"][i, :count] = result.class_ids
        arrays["labels"][i, :count] = [label.encode() for label in result.labels]
    return arrays


def requested_outputs(
    requested: Sequence[tuple[str, Any]] | None, parameters: Mapping[str, Any] | None
) -> list[tuple[str, bool]]:
    """(name, binary) for each output to return; `requested` holds (name, binary_data
    parameter or None) pairs, None for all outputs. Binary applies to REST only."""
    params = {k: _plain(v) for k, v in (parameters or {}).items()}
    default_binary = _boolean("binary_data_output", params.get("binary_data_output", False))
    if not requested:
        return [(name, default_binary) for name in OUTPUTS]
    wanted = []
    for name, binary in requested:
        if name not in OUTPUTS:
            raise InvalidRequest(f"unknown output {name!r}; outputs are {list(OUTPUTS)}")
        wanted.append((name, default_binary if binary is None else bool(_plain(binary))))
    return wanted


def v1_response(results: Sequence[Detections]) -> dict[str, Any]:
    return {
        "predictions": [
            {
                "detections": [
                    {
                        "box": [float(v) for v in box],
                        "score": float(score),
                        "class_id": int(class_id),
                        "label": label,
                    }
                    for box, score, class_id, label in zip(
                        r.boxes, r.scores, r.class_ids, r.labels, strict=True
                    )
                ]
            }
            for r in results
        ]
    }
