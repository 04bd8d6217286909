"""INT8 for ONNX Runtime on the CPU: static QDQ quantisation of the fp32 export, calibrated
on the user's images and checked against fp32 before it may serve.

int8 = obtain_int8(model, (320, 320), calibration_set, cache_dir)   # cached by its inputs
require_agreement(int8, min_agreement=0.95)                          # Int8Refused below it
backend = OnnxRuntimeBackend(int8.onnx)

The fp32 export (`obtain_onnx`) is quantised with per-channel int8 weights and uint8
activations, calibrated on the server's own letterbox of the calibration images. The
Detect layer stays in float: its output concatenates pixel-scale boxes with 0-1 scores,
which one int8 scale cannot hold (quantised, the demo model's mAP@0.5 is 0.0). The
held-back images then compare INT8 detections with fp32's (`predictor.agreement`).

A model is looked up, in order: beside the checkpoint (`python -m predictor.quantize`
writes it there, so replicas skip calibration), in the cache directory, else it is built
and cached. Each model has a JSON report beside it: its key and its self-check.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from ..agreement import Agreement, compare_detections
from ..calibration import (
    CalibrationError,
    CalibrationSet,
    default_calibration_dir,
    find_calibration_set,
)
from ..checkpoint import LoadedModel
from ..detector import Detections, DetectionSettings, Detector
from ..imaging import decode_image
from .base import BackendError
from .cpu_features import int8_warning
from .onnxruntime_backend import (
    EXPORT_FORMAT,
    INPUT_NAME,
    OPSET,
    OnnxModel,
    OnnxRuntimeBackend,
    file_digest,
    obtain_onnx,
)

logger = logging.getLogger(__name__)

QUANTIZER_VERSION = 2  # bump when the recipe's meaning changes: old cache entries die
CACHE_SUBDIR = "int8"
DEFAULT_MIN_AGREEMENT = 0.95
SELF_CHECK_SETTINGS = DetectionSettings()  # the server's defaults: conf 0.25, IoU 0.45
FLOAT_GROUPS = ("decode", "head_convs", "first_conv")


@dataclass(frozen=True)
class Recipe:
    """How the export is quantised. `keep_float` names node groups left in float:
    "decode" (the Detect layer after its convolutions), "head_convs" (the Detect layer's
    1x1 convolutions), "first_conv" (layer 0, the stem convolution and its activation)."""

    method: str = "minmax"  # onnxruntime CalibrationMethod: minmax, entropy, percentile
    keep_float: tuple[str, ...] = ("decode", "head_convs")

    def __post_init__(self) -> None:
        if self.method not in _METHODS:
            raise ValueError(f"unknown calibration method {self.method!r}: {', '.join(_METHODS)}")
        unknown = set(self.keep_float) - set(FLOAT_GROUPS)
        if unknown:
            raise ValueError(f"unknown float groups {sorted(unknown)}: {', '.join(FLOAT_GROUPS)}")


_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}


class Int8Refused(BackendError):
    """The quantised model disagrees with fp32 more than allowed."""


@dataclass
class Int8Model:
    onnx: OnnxModel
    report: dict[str, Any]  # "key" (see int8_key), "self_check" (an Agreement as a dict), ...

    @property
    def agreement(self) -> float:
        return float(self.report["self_check"]["agreement"])


def int8_key(
    model: LoadedModel,
    input_shape: tuple[int, int],
    calibration_digest: str | None,
    recipe: Recipe,
) -> dict[str, Any]:
    """Everything the quantised model depends on."""
    import onnxruntime

    return {
        "checkpoint_sha256": file_digest(model.source),
        "calibration_sha256": calibration_digest,
        "input_shape": list(input_shape),
        "opset": OPSET,
        "export_format": EXPORT_FORMAT,
        "torch": torch.__version__.split("+")[0],
        "onnxruntime": onnxruntime.__version__,
        "quantizer": QUANTIZER_VERSION,
        "recipe": asdict(recipe) | {"keep_float": list(recipe.keep_float)},
    }


def key_digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def prebuilt_path(checkpoint: Path, input_shape: tuple[int, int]) -> Path:
    """Where `python -m predictor.quantize` writes the model for `checkpoint`."""
    return checkpoint.with_name(f"{checkpoint.stem}.int8-{input_shape[0]}x{input_shape[1]}.onnx")


def report_path(model_path: Path) -> Path:
    return model_path.with_suffix(".json")


def obtain_int8(
    model: LoadedModel,
    input_shape: tuple[int, int],
    calibration: CalibrationSet | None,
    cache_dir: Path | None,
    recipe: Recipe = Recipe(),
) -> Int8Model:
    """The INT8 model of `model`: prebuilt beside the checkpoint, cached, or built now.

    A prebuilt model is accepted when its key matches; without calibration images its
    calibration hash cannot be checked and is trusted. Building needs `calibration`.
    """
    key = int8_key(model, input_shape, calibration.digest if calibration else None, recipe)
    prebuilt = _load_matching(prebuilt_path(model.source, input_shape), key, "prebuilt")
    if prebuilt is not None:
        return prebuilt
    if calibration is None:
        raise CalibrationError(
            "INT8 needs calibration images: pass --calibration_dir DIR, or put a "
            f"'calibration/' folder of images beside {model.source.name}, or build the model "
            f"ahead of time with `python -m predictor.quantize {model.source.name} "
            "--calibration_dir DIR`"
        )
    cached = cache_dir / CACHE_SUBDIR / f"{key_digest(key)[:40]}.onnx" if cache_dir else None
    if cached is not None:
        hit = _load_matching(cached, key, "cache hit")
        if hit is not None:
            return hit
    int8 = build_int8(model, input_shape, calibration, cache_dir, recipe, key)
    if cached is not None:
        try:
            save_int8(int8, cached)
        except OSError as error:
            logger.warning("cannot cache the INT8 model in %s (%s)", cache_dir, error)
    return int8


def require_agreement(int8: Int8Model, min_agreement: float) -> None:
    check = int8.report["self_check"]
    if int8.agreement < min_agreement:
        raise Int8Refused(
            f"INT8 refused: agreement with fp32 {int8.agreement:.4f} is below "
            f"--int8_min_agreement {min_agreement} (precision {check['precision']:.4f}, recall "
            f"{check['recall']:.4f}, mean score shift {check['mean_score_shift']:+.4f} on "
            f"{check['images']} held-back images); add calibration images like those served, "
            "or serve --precision fp32"
        )


def build_int8(
    model: LoadedModel,
    input_shape: tuple[int, int],
    calibration: CalibrationSet,
    cache_dir: Path | None,
    recipe: Recipe,
    key: dict[str, Any],
) -> Int8Model:
    """Quantise the fp32 export on the calibration images, then self-check on the rest."""
    fp32 = obtain_onnx(model, input_shape, cache_dir)
    fp32_detector = Detector(model, input_shape[0], backend=OnnxRuntimeBackend(fp32))
    started = time.perf_counter()
    data = quantize(fp32, fp32_detector, calibration.calibration, recipe)
    took = time.perf_counter() - started
    int8 = OnnxModel(data, None, f"calibrated on {len(calibration.calibration)} images")
    int8_detector = Detector(model, input_shape[0], backend=OnnxRuntimeBackend(int8))
    check = self_check(fp32_detector, int8_detector, calibration.held_back)
    logger.info("INT8 built in %.1fs; self-check: %s", took, check)
    report = {
        "key": key,
        "self_check": check.as_dict(),
        "self_check_settings": asdict(SELF_CHECK_SETTINGS),
        "calibration_images": len(calibration.calibration),
        "held_back_images": len(calibration.held_back),
        "quantize_seconds": round(took, 1),
    }
    return Int8Model(int8, report)


def quantize(fp32: OnnxModel, detector: Detector, images: Sequence[Path], recipe: Recipe) -> bytes:
    """The QDQ INT8 model, as bytes, calibrated on `images` letterboxed by `detector`."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    graph = onnx.load(fp32.source) if fp32.path else onnx.load_from_string(fp32.data)
    materialise_identity_constants(graph)
    excluded = float_nodes(graph, _head_index(detector.model), recipe.keep_float)
    advice = _DropPreprocessingAdvice()
    logging.getLogger().addFilter(advice)
    with tempfile.TemporaryDirectory() as scratch:
        output = Path(scratch) / "int8.onnx"
        try:
            quantize_static(
                graph,
                output,
                _CalibrationReader(detector, images),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=excluded,
                calibrate_method=getattr(CalibrationMethod, _METHODS[recipe.method]),
                # No CalibMaxIntermediateOutputs: onnxruntime 1.31's MinMaxCalibrater drops
                # each full chunk without computing its ranges (collect_data calls
                # clear_collected_data, not compute_data), so only the last partial chunk
                # calibrated, and a multiple of the chunk size failed ("No data is
                # collected"). Its augmented model keeps per-tensor minima and maxima, not
                # the tensors, so collecting every image costs little memory.
            )
        except CalibrationError:
            raise
        except Exception as error:
            message = f"INT8 quantisation failed: {type(error).__name__}: {error}"
            raise BackendError(message) from error
        finally:
            logging.getLogger().removeFilter(advice)
        return output.read_bytes()


class _DropPreprocessingAdvice(logging.Filter):
    """onnxruntime's quantiser advises, on the root logger, running its pre-processing
    (shape inference, graph optimisation) first. It is not run: the recipe's accuracy and
    speed were measured without it, and a server's log should not ask the user for it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


def materialise_identity_constants(graph: onnx.ModelProto) -> None:
    """Replace `Identity(initializer)` nodes by copies of the initializer, in place.

    The exporter writes a tensor equal to an earlier one (e.g. zero biases) as an Identity
    of it; the quantiser only quantises biases that are initializers, and a convolution
    with a float bias stays in float, with quantise/dequantise pairs around it.
    """
    initializers = {tensor.name: tensor for tensor in graph.graph.initializer}
    outputs = {output.name for output in graph.graph.output}
    for node in list(graph.graph.node):
        if (
            node.op_type == "Identity"
            and node.input[0] in initializers
            and node.output[0] not in outputs
        ):
            copy = onnx.TensorProto()
            copy.CopyFrom(initializers[node.input[0]])
            copy.name = node.output[0]
            graph.graph.initializer.append(copy)
            graph.graph.node.remove(node)


def float_nodes(graph: onnx.ModelProto, head_index: int, groups: Sequence[str]) -> list[str]:
    """Names of the nodes in `groups` (see Recipe), found by the exporter's module scopes:
    `/model.<i>/...` for layer i; the Detect layer's convolutions are `/model.<i>/m.<k>/`."""
    head = f"/model.{head_index}/"
    names = []
    for node in graph.graph.node:
        in_head = node.name.startswith(head)
        is_head_conv = in_head and node.name.startswith(f"{head}m.") and node.op_type == "Conv"
        if (
            ("decode" in groups and in_head and not is_head_conv)
            or ("head_convs" in groups and is_head_conv)
            or ("first_conv" in groups and node.name.startswith("/model.0/"))
        ):
            names.append(node.name)
    if "decode" in groups and not names:
        raise BackendError(f"no Detect layer nodes ({head}...) in the export")
    return names


def self_check(fp32: Detector, int8: Detector, images: Sequence[Path]) -> Agreement:
    reference: list[Detections] = []
    candidate: list[Detections] = []
    for path in images:
        image = _read(path)
        [expected] = fp32.detect([image], SELF_CHECK_SETTINGS)
        [actual] = int8.detect([image], SELF_CHECK_SETTINGS)
        reference.append(expected)
        candidate.append(actual)
    return compare_detections(reference, candidate)


def save_int8(int8: Int8Model, path: Path) -> Int8Model:
    """Write the model and its JSON report (atomically) at `path`; the model now lives there."""
    assert int8.onnx.data is not None or int8.onnx.path is not None
    data = int8.onnx.data if int8.onnx.data is not None else Path(int8.onnx.source).read_bytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomically(path, data)
    _write_atomically(report_path(path), (json.dumps(int8.report, indent=2) + "\n").encode())
    if int8.onnx.path is None:
        int8.onnx = OnnxModel(None, path, f"{int8.onnx.origin}, saved at {path}")
    return int8


def _load_matching(path: Path, key: dict[str, Any], origin: str) -> Int8Model | None:
    report_file = report_path(path)
    if not path.is_file() or not report_file.is_file():
        return None
    try:
        report = json.loads(report_file.read_text())
        stored = dict(report["key"])
        float(report["self_check"]["agreement"])  # a report without it is unusable
    except (OSError, ValueError, KeyError, TypeError) as error:
        logger.warning("ignoring INT8 model %s: unreadable report (%s)", path, error)
        return None
    wanted = dict(key)
    if wanted["calibration_sha256"] is None:  # no images here to check it against
        stored.pop("calibration_sha256", None)
        wanted.pop("calibration_sha256")
    if stored != wanted:
        differing = sorted(
            k for k in wanted.keys() | stored.keys() if stored.get(k) != wanted.get(k)
        )
        logger.warning(
            "INT8 model %s was built for other inputs (%s); not using it", path, differing
        )
        return None
    return Int8Model(OnnxModel(None, path, f"{origin} {path}"), report)


class _CalibrationReader:
    """onnxruntime's CalibrationDataReader: one letterboxed image per call, lazily."""

    def __init__(self, detector: Detector, images: Sequence[Path]) -> None:
        self._detector = detector
        self._images: Iterator[Path] = iter(images)

    def get_next(self) -> dict[str, np.ndarray] | None:
        path = next(self._images, None)
        if path is None:
            return None
        prepared = self._detector.prepare(_read(path))
        return {INPUT_NAME: prepared.tensor[None]}


def _read(path: Path) -> np.ndarray:
    try:
        return decode_image(path.read_bytes())
    except (OSError, ValueError) as error:
        raise CalibrationError(f"calibration image {path}: {error}") from error


def _head_index(model: LoadedModel) -> int:
    if isinstance(model.network, torch.jit.ScriptModule):  # no module scopes in its export
        raise BackendError("INT8 needs a .pt checkpoint, not a TorchScript export")
    return int(model.network.model[-1].i)


def _write_atomically(path: Path, data: bytes) -> None:
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as temp:
        temp.write(data)
    os.chmod(temp.name, 0o644)
    os.replace(temp.name, path)


def create_int8_backend(
    model: LoadedModel,
    input_shape: tuple[int, int],
    *,
    calibration_dir: str | Path | None = None,
    cache_dir: Path | None = None,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    recipe: Recipe = Recipe(),
) -> OnnxRuntimeBackend:
    """An ONNX Runtime backend on the INT8 model, refused (Int8Refused, CalibrationError,
    BackendError) rather than served when it cannot be built or disagrees with fp32.

    Calibration images: `calibration_dir`, else `calibration/` beside the checkpoint when
    present; none is needed when a matching prebuilt model lies beside the checkpoint.
    The backend's `int8_report` carries the self-check for metadata and metrics.
    """
    if _device_of(model).type != "cpu":
        raise BackendError("INT8 runs on the CPU with ONNX Runtime only (use --device cpu)")
    warning = int8_warning()
    if warning:
        logger.warning(warning)
    if calibration_dir is not None or default_calibration_dir(model.source).is_dir():
        calibration = find_calibration_set(model.source, calibration_dir)
    else:
        calibration = None
    int8 = obtain_int8(model, input_shape, calibration, cache_dir, recipe)
    logger.info(
        "INT8 model: %s; self-check against fp32: %s",
        int8.onnx.origin,
        Agreement(**int8.report["self_check"]),
    )
    require_agreement(int8, min_agreement)
    backend = OnnxRuntimeBackend(int8.onnx)
    backend.int8_report = int8.report
    return backend


def _device_of(model: LoadedModel) -> torch.device:
    parameter = next(model.network.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")
