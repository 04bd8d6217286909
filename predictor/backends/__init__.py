"""Inference backends: PyTorch (the reference) and ONNX Runtime (exported at load time).

backend = create_backend(loaded_model, "auto", input_shape=(640, 640))
engine = backend.engine(threads=1)     # one per concurrent stream
raw = engine(batch)                    # N x 3 x H x W float32 -> (N, anchors, 5 + nc)

`auto` rule: ONNX Runtime on the CPU (YOLOv5s at 640 on one thread: 75 ms against PyTorch's
141 ms), PyTorch on CUDA (fp16; the CPU-only onnxruntime package has no GPU support).
Whatever is chosen other than torch is judged against PyTorch at load by its detections
(`verify`); `auto` falls back to torch with a WARNING naming the first differing detection
when the export fails or its detections differ, an explicit `onnxruntime` refuses to start.
Every backend returned carries `name`, `reason` (why it serves) and `precision`.

`precision` (PRECISIONS): auto = fp32 on the CPU, fp16 on CUDA; fp16 runs on CUDA only;
int8 runs on the CPU with ONNX Runtime only (`int8`: quantised, calibrated and checked
against fp32) and is refused, never replaced, where it cannot serve.
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
PRECISIONS = ("auto", "fp32", "fp16", "int8")

__all__ = [
    "BACKENDS",
    "PRECISIONS",
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
    precision: str = "auto",
    calibration_dir: str | Path | None = None,
    int8_min_agreement: float | None = None,
) -> Backend:
    """The backend `kind` (see BACKENDS) for `model` at `precision` (see PRECISIONS),
    judged against PyTorch by its detections at `thresholds` (the server's). The result's
    `reason` says why it serves. int8: see `_int8`."""
    if kind not in BACKENDS:
        raise BackendError(f"unknown backend {kind!r}; choose one of {', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise BackendError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    device = _device_of(model)
    if precision == "int8":
        return _int8(model, kind, input_shape, rect, cache_dir, calibration_dir, int8_min_agreement)
    if precision == "fp16" and device.type != "cuda":
        raise BackendError(
            f"--precision fp16 runs on CUDA only; the model is on {device} "
            "(use --precision fp32 or int8 on the CPU)"
        )
    half = None if precision == "auto" else precision == "fp16"
    reference = TorchBackend(model.network, device, half=half)
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


def _int8(
    model: LoadedModel,
    kind: str,
    input_shape: tuple[int, int],
    rect: bool,
    cache_dir: str | Path | None,
    calibration_dir: str | Path | None,
    min_agreement: float | None,
) -> Backend:
    """The INT8 ONNX Runtime backend, or BackendError saying what to change."""
    from ..calibration import CalibrationError
    from .int8 import DEFAULT_MIN_AGREEMENT, create_int8_backend

    device = _device_of(model)
    if device.type != "cpu":
        raise BackendError(
            f"--precision int8 runs on the CPU only; the model is on {device} "
            "(use --device cpu, or --precision fp16 on a GPU)"
        )
    if kind == "torch":
        raise BackendError(
            "--precision int8 runs on ONNX Runtime; --backend torch cannot serve it "
            "(use --backend auto or onnxruntime, or --precision fp32)"
        )
    if rect:
        raise BackendError(
            "--precision int8 needs --letterbox square: the INT8 model has one input shape"
        )
    min_agreement = DEFAULT_MIN_AGREEMENT if min_agreement is None else min_agreement
    try:
        backend = create_int8_backend(
            model,
            input_shape,
            calibration_dir=calibration_dir,
            cache_dir=resolve_cache_dir(cache_dir),
            min_agreement=min_agreement,
        )
    except CalibrationError as error:  # a ValueError, not a BackendError
        raise BackendError(str(error)) from error
    check = backend.int8_report["self_check"]
    backend.precision = "int8"
    backend.reason = (
        f"--precision int8: agreement with fp32 {check['agreement']:.4f} "
        f">= {min_agreement} (precision {check['precision']:.4f}, recall "
        f"{check['recall']:.4f}, mean score shift {check['mean_score_shift']:+.4f})"
    )
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
