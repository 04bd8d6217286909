"""ONNX Runtime backend: the loaded checkpoint exported to ONNX at load time, cached by hash.

No user step: the network the checkpoint loader built (fused conv+bn, fp32) is exported
with torch's exporter, the file is cached under the checkpoint's SHA-256 in a writable
cache directory (in memory when there is none), and the runtime's detections are judged
against PyTorch's before the backend is used (`verify`); the verdict is cached beside the
export, so a restart does not judge again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import LoadedModel
from .base import Backend, BackendError, Engine
from .cpus import available_cpus
from .verify import JUDGEMENT_FORMAT, Verdict

logger = logging.getLogger(__name__)

OPSET = 17
EXPORT_FORMAT = 1  # bump when the export (names, axes, options) changes: old cache entries die
INPUT_NAME = "images"
OUTPUT_NAME = "output"
CACHE_SUBDIR = "onnx"


@dataclass
class OnnxModel:
    """An exported model: a cached file, or bytes when nothing could be written."""

    data: bytes | None
    path: Path | None
    origin: str  # "cache hit", "exported, cached", "exported in memory"

    @property
    def source(self) -> bytes | str:
        if self.path is not None:
            return str(self.path)
        assert self.data is not None
        return self.data


def default_cache_dir() -> Path | None:
    """`$XDG_CACHE_HOME/yolov5-kserve`, else `~/.cache/yolov5-kserve` (None: no home)."""
    base = os.environ.get("XDG_CACHE_HOME")
    if not base:
        try:
            base = str(Path.home() / ".cache")
        except RuntimeError:
            return None
    return Path(base) / "yolov5-kserve"


def file_digest(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def cache_name(model: LoadedModel) -> str:
    """File name of the export of `model`: checkpoint hash + everything the export depends on."""
    torch_version = torch.__version__.split("+")[0]
    axes = "fixed" if model.fixed_input_shape is not None else "dynamic"
    return (
        f"{file_digest(model.source)[:40]}-opset{OPSET}-torch{torch_version}"
        f"-{axes}-f{EXPORT_FORMAT}.onnx"
    )


def export_onnx(model: LoadedModel, input_shape: tuple[int, int]) -> bytes:
    """The network as ONNX: dynamic batch, and dynamic height/width unless the input is fixed."""
    parameter = next(model.network.parameters(), None)
    if parameter is not None and (
        parameter.device.type != "cpu" or parameter.dtype != torch.float32
    ):
        raise BackendError("the ONNX export needs the fp32 network on the CPU (--device cpu)")
    axes = {0: "batch"} if model.fixed_input_shape is not None else {0: "batch", 2: "h", 3: "w"}
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer and deprecation chatter
            torch.onnx.export(
                model.network,
                (torch.zeros(1, 3, *input_shape),),
                buffer,
                dynamo=False,
                opset_version=OPSET,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: {0: "batch", 1: "anchors"}},
            )
    except Exception as error:
        raise BackendError(f"ONNX export failed: {type(error).__name__}: {error}") from error
    return buffer.getvalue()


def obtain_onnx(
    model: LoadedModel,
    input_shape: tuple[int, int],
    cache_dir: Path | None,
    refresh: bool = False,
) -> OnnxModel:
    """The cached export of `model`, exporting (and caching when possible) on a miss."""
    path = cache_dir / CACHE_SUBDIR / cache_name(model) if cache_dir is not None else None
    if path is not None and not refresh and path.is_file():
        return OnnxModel(None, path, f"cache hit {path}")
    started = time.perf_counter()
    data = export_onnx(model, input_shape)
    took = f"exported in {time.perf_counter() - started:.1f}s"
    if path is None:
        return OnnxModel(data, None, f"{took}, in memory (no cache directory)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as temp:
            temp.write(data)
        os.chmod(temp.name, 0o644)  # like any cache file (mkstemp makes it owner-only)
        os.replace(temp.name, path)  # atomic: concurrent loaders never see half a file
    except OSError as error:
        logger.warning(
            "cache directory %s is not writable (%s); keeping the ONNX export in memory",
            cache_dir,
            error,
        )
        return OnnxModel(data, None, f"{took}, in memory ({cache_dir} not writable)")
    return OnnxModel(data, path, f"{took}, cached at {path}")


def _verdict_path(onnx: OnnxModel, conditions: object) -> Path | None:
    """Beside the export: one verdict per runtime version and judging conditions."""
    if onnx.path is None:
        return None
    try:
        from onnxruntime import __version__ as runtime
    except ImportError:
        return None
    key = hashlib.sha256(repr((JUDGEMENT_FORMAT, runtime, conditions)).encode()).hexdigest()
    return onnx.path.with_name(f"{onnx.path.name}.{key[:16]}.verdict.json")


def cached_verdict(onnx: OnnxModel, conditions: object) -> Verdict | None:
    """The verdict on exactly this export file under `conditions`, if one was cached."""
    path = _verdict_path(onnx, conditions)
    if path is None or onnx.path is None or not path.is_file():
        return None
    try:
        verdict = Verdict.from_json(path.read_text())
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if verdict.export_sha256 != file_digest(onnx.path):
        return None  # the export was replaced since
    return dataclasses.replace(verdict, reason=f"{verdict.reason} (verdict cached with the export)")


def save_verdict(onnx: OnnxModel, conditions: object, verdict: Verdict) -> None:
    path = _verdict_path(onnx, conditions)
    if path is None or onnx.path is None:
        return
    record = dataclasses.replace(verdict, export_sha256=file_digest(onnx.path))
    try:
        with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as temp:
            temp.write(record.to_json())
        os.chmod(temp.name, 0o644)
        os.replace(temp.name, path)
    except OSError as error:
        logger.warning("cannot cache the verdict at %s (%s)", path, error)


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    device = torch.device("cpu")

    def __init__(self, onnx: OnnxModel) -> None:
        try:
            import onnxruntime
        except ImportError as error:
            raise BackendError("onnxruntime is not installed") from error
        self.onnx = onnx
        self.runtime = onnxruntime
        self.description = f"ONNX Runtime {onnxruntime.__version__} on cpu ({onnx.origin})"

    def engine(self, threads: int | None = None, *, spin: bool = True) -> OnnxRuntimeEngine:
        # onnxruntime's own default is the host's core count, not the container's quota.
        return OnnxRuntimeEngine(self, threads or available_cpus(), spin)


class OnnxRuntimeEngine(Engine):
    """One InferenceSession with its own intra-op thread count (sessions are independent)."""

    def __init__(self, backend: OnnxRuntimeBackend, threads: int, spin: bool) -> None:
        ort = backend.runtime
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        # Worker threads spin-wait between the parallel sections of a run (waking sleeping
        # threads ~200 times per forward pass costs milliseconds); without `spin` they stop
        # as soon as the run ends instead of spinning on, taking CPU from other streams.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1")
        if not spin:
            options.add_session_config_entry("session.force_spinning_stop", "1")
        try:
            self.session = ort.InferenceSession(
                backend.onnx.source, options, providers=["CPUExecutionProvider"]
            )
        except Exception as error:
            raise BackendError(f"onnxruntime cannot load the export: {error}") from error
        self.threads = threads

    def __call__(self, batch: np.ndarray) -> torch.Tensor:
        inputs = np.ascontiguousarray(batch, dtype=np.float32)
        [output] = self.session.run([OUTPUT_NAME], {INPUT_NAME: inputs})
        return torch.from_numpy(output)
