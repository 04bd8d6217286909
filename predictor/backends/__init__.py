"""Inference backends: PyTorch (the reference) and ONNX Runtime (exported at load time).

backend = create_backend(loaded_model, "auto", input_shape=(640, 640))
engine = backend.engine(threads=1)     # one per concurrent stream
raw = engine(batch)                    # N x 3 x H x W float32 -> (N, anchors, 5 + nc)

`auto` rule: ONNX Runtime on the CPU (YOLOv5s at 640 on one thread: 75 ms against PyTorch's
141 ms, outputs equal to 1e-7), PyTorch on CUDA (fp16; the CPU-only onnxruntime package has
no GPU support). Whatever is chosen other than torch is checked against PyTorch at load;
`auto` falls back to torch with a warning when the export or the check fails, an explicit
`onnxruntime` refuses to start.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..checkpoint import LoadedModel
from .base import Backend, BackendError, Engine, Staging
from .cpus import Parallelism, available_cpus, cgroup_cpu_limit, plan_parallelism
from .torch_backend import TorchBackend

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnxruntime")

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendError",
    "Engine",
    "Parallelism",
    "Staging",
    "TorchBackend",
    "available_cpus",
    "cgroup_cpu_limit",
    "create_backend",
    "plan_parallelism",
    "resolve_cache_dir",
]


def resolve_cache_dir(cache_dir: str | Path | None) -> Path | None:
    """None: the default cache directory; "": no disk cache (export in memory)."""
    from .onnxruntime_backend import default_cache_dir

    if cache_dir is None:
        return default_cache_dir()
    return Path(cache_dir) if str(cache_dir) else None


def create_backend(
    model: LoadedModel,
    kind: str = "torch",
    *,
    input_shape: tuple[int, int],
    rect: bool = False,
    cache_dir: str | Path | None = None,
) -> Backend:
    """The backend `kind` (see BACKENDS) for `model`, verified against PyTorch."""
    if kind not in BACKENDS:
        raise BackendError(f"unknown backend {kind!r}; choose one of {', '.join(BACKENDS)}")
    reference = TorchBackend(model.network, _device_of(model))
    if kind == "torch" or (kind == "auto" and reference.device.type != "cpu"):
        return reference
    if reference.device.type != "cpu":
        raise BackendError(
            f"--backend {kind} runs on the CPU; the model is on {reference.device} "
            "(use --device cpu, or --backend torch on a GPU)"
        )
    try:
        return _onnxruntime(model, reference, input_shape, rect, resolve_cache_dir(cache_dir))
    except BackendError as error:
        if kind != "auto":
            raise BackendError(f"--backend {kind}: {error}") from error
        logger.warning("onnxruntime unavailable for this model (%s); using PyTorch", error)
        return reference


def _onnxruntime(
    model: LoadedModel,
    reference: TorchBackend,
    input_shape: tuple[int, int],
    rect: bool,
    cache_dir: Path | None,
) -> Backend:
    from .onnxruntime_backend import OnnxRuntimeBackend, obtain_onnx
    from .verify import probe_batches, verify

    probes = probe_batches(input_shape, model.stride, rect)
    threads = available_cpus()
    onnx = obtain_onnx(model, input_shape, cache_dir)
    try:
        backend = OnnxRuntimeBackend(onnx)
        difference = verify(reference.engine(), backend.engine(threads), probes)
    except BackendError as error:
        if onnx.path is None or not onnx.origin.startswith("cache hit"):
            raise
        logger.warning("cached export %s failed its check (%s); exporting again", onnx.path, error)
        onnx = obtain_onnx(model, input_shape, cache_dir, refresh=True)
        backend = OnnxRuntimeBackend(onnx)
        difference = verify(reference.engine(), backend.engine(threads), probes)
    logger.info("backend: %s; matches PyTorch to %s", backend.description, difference)
    return backend


def _device_of(model: LoadedModel) -> torch.device:
    parameter = next(model.network.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")
