"""The reference backend: the loaded PyTorch network itself (fused conv+bn, fp16 on CUDA)."""

from __future__ import annotations

import threading

import numpy as np
import torch

from .base import Backend, Engine, Staging

_thread_state = threading.local()


def set_thread_count(threads: int | None) -> None:
    """Use `threads` intra-op threads for torch work done by the calling thread.

    With the OpenMP build `torch.set_num_threads` sets the calling thread's OpenMP team
    size, so each scheduler stream can run its own thread count; the call is skipped when
    this thread already uses `threads`.
    """
    if threads is None or getattr(_thread_state, "threads", None) == threads:
        return
    torch.set_num_threads(threads)
    _thread_state.threads = threads


class TorchBackend(Backend):
    name = "torch"

    def __init__(
        self, network: torch.nn.Module, device: torch.device, *, half: bool | None = None
    ) -> None:
        """`half`: run in fp16 (None: on CUDA, where the checkpoint is loaded in fp16)."""
        half = device.type == "cuda" if half is None else half
        self.network = network.half() if half else network.float()
        self.device = device
        self.dtype = torch.float16 if half else torch.float32
        self.precision = "fp16" if half else "fp32"
        self.description = f"PyTorch on {device} ({str(self.dtype).removeprefix('torch.')})"

    def engine(self, threads: int | None = None, *, spin: bool = True) -> TorchEngine:
        return TorchEngine(self, threads)


class TorchEngine(Engine):
    def __init__(self, backend: TorchBackend, threads: int | None) -> None:
        self.backend = backend
        self.threads = threads
        self.staging = Staging.for_device(backend.device)
        # Each engine (stream) queues its GPU work on its own CUDA stream, so one stream's
        # copies and kernels overlap another's host work.
        self.cuda_stream = (
            torch.cuda.Stream(backend.device) if backend.device.type == "cuda" else None
        )

    @torch.inference_mode()
    def __call__(self, batch: np.ndarray) -> torch.Tensor:
        set_thread_count(self.threads)
        if self.cuda_stream is not None:
            # The current stream is per thread: the caller's postprocessing (NMS, copies
            # back to the host) follows on this stream, in order.
            torch.cuda.set_stream(self.cuda_stream)
        inputs = self.staging.upload(batch, self.backend.device, self.backend.dtype)
        output = self.backend.network(inputs)
        if isinstance(output, list | tuple):  # TorchScript exports return (predictions, ...)
            output = output[0]
        return output
