"""Inference backends: PyTorch (the reference) and ONNX Runtime (exported at load time).

backend = create_backend(loaded_model, "auto", input_shape=(640, 640))
engine = backend.engine(threads=1)     # one per concurrent stream
raw = engine(batch)                    # N x 3 x H x W float32 -> (N, anchors, 5 + nc)

`auto` rule: ONNX Runtime on the CPU (YOLOv5s at 640 on one thread: 75 ms against PyTorch's
141 ms), PyTorch on CUDA (fp16; the CPU-only onnxruntime package has no GPU support).
Whatever is chosen other than torch is judged against PyTorch at load by its detections
(`verify`); `auto` falls back to torch with a WARNING naming the first differing detection
when the export fails or its detections differ, an explicit `onnxruntime` refuses to start.
Every backend returned carries `name` and `reason` (why it serves).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..checkpoint import LoadedModel
from .base import Backend, BackendError, Engine, Staging
from .cpus import Parallelism, available_cpus, cgroup_cpu_limit, plan_parallelism
from .torch_backend import TorchBackend
from .verify import DEFAULT_THRESHOLDS, Thresholds, Verdict, judge, probes

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnxruntime")

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendError",
    "Engine",
    "Parallelism",
    "Staging",
    "Thresholds",
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
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
) -> Backend:
    """The backend `kind` (see BACKENDS) for `model`, judged against PyTorch by its
    detections at `thresholds` (the server's). The result's `reason` says why it serves."""
    if kind not in BACKENDS:
        raise BackendError(f"unknown backend {kind!r}; choose one of {', '.join(BACKENDS)}")
    reference = TorchBackend(model.network, _device_of(model))
    if kind == "torch":
        reference.reason = "--backend torch"
        return reference
    if reference.device.type != "cpu":
        if kind == "auto":
            reference.reason = f"auto on {reference.device}: onnxruntime here runs on the CPU only"
            return reference
        raise BackendError(
            f"--backend {kind} runs on the CPU; the model is on {reference.device} "
            "(use --device cpu, or --backend torch on a GPU)"
        )
    try:
        backend = _onnxruntime(
            model, reference, input_shape, rect, resolve_cache_dir(cache_dir), thresholds
        )
    except BackendError as error:
        if kind != "auto":
            raise BackendError(f"--backend {kind}: {error}") from error
        reference.reason = f"onnxruntime rejected: {error}"
        logger.warning("onnxruntime rejected for this model (%s); using PyTorch", error)
        return reference
    logger.info("backend: %s; %s", backend.description, backend.reason)
    return backend


def _onnxruntime(
    model: LoadedModel,
    reference: TorchBackend,
    input_shape: tuple[int, int],
    rect: bool,
    cache_dir: Path | None,
    thresholds: Thresholds,
) -> Backend:
    """The accepted ONNX Runtime backend; BackendError (naming why) when rejected.

    A verdict is cached beside the export it judged, so a restart does not judge again;
    a cached export that cannot be loaded or run is exported again once.
    """
    from .onnxruntime_backend import (
        OnnxModel,
        OnnxRuntimeBackend,
        cached_verdict,
        obtain_onnx,
        save_verdict,
    )

    everything = probes(input_shape, model.stride, rect)

    def judged(onnx: OnnxModel) -> Verdict:
        engine = OnnxRuntimeBackend(onnx).engine(available_cpus())
        return judge(reference.engine(), engine, everything, thresholds)

    onnx = obtain_onnx(model, input_shape, cache_dir)
    conditions = (input_shape, rect, thresholds)
    verdict = cached_verdict(onnx, conditions)
    if verdict is None:
        try:
            verdict = judged(onnx)
        except BackendError as error:
            if onnx.path is None or not onnx.origin.startswith("cache hit"):
                raise
            logger.warning("cached export %s failed (%s); exporting again", onnx.path, error)
            onnx = obtain_onnx(model, input_shape, cache_dir, refresh=True)
            verdict = judged(onnx)
        save_verdict(onnx, conditions, verdict)
    if not verdict.accepted:
        raise BackendError(verdict.reason)
    backend = OnnxRuntimeBackend(onnx)
    backend.reason = verdict.reason
    return backend


def _device_of(model: LoadedModel) -> torch.device:
    parameter = next(model.network.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")
