"""What every inference backend provides: engines that turn input batches into head output."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import numpy as np
import torch


class BackendError(ValueError):
    """A backend cannot serve this model (not installed, export failed, outputs differ)."""


class Engine(ABC):
    """Runs the network on N x 3 x H x W float32 batches with a fixed number of CPU threads.

    An engine is used by one thread at a time; the scheduler gives each stream its own.
    """

    threads: int | None

    @abstractmethod
    def __call__(self, batch: np.ndarray) -> torch.Tensor:
        """-> raw head output (N, anchors, 5 + nc); on the backend's device."""


class Backend(ABC):
    name: str
    device: torch.device
    description: str = ""  # for logs: where the model came from (cache hit, export, ...)
    reason: str = ""  # why this backend serves: the verdict against PyTorch, or the rule
    precision: str = "fp32"  # what the network computes in: fp32, fp16 or int8
    int8_report: dict[str, Any] | None = None  # int8: its key and self-check (backends.int8)

    @abstractmethod
    def engine(self, threads: int | None = None, *, spin: bool = True) -> Engine:
        """A new engine on `threads` CPU threads (None: the runtime's default).

        `spin=False` asks worker threads to stop spin-waiting for work as soon as a run
        ends, which matters when several engines share the CPUs.
        """


class Staging:
    """A reusable host buffer that batches are copied into before going to the device.

    On CUDA the buffer is page-locked (pinned), which makes the host-to-device copy
    asynchronous (`non_blocking`); `wait` is called before the buffer is overwritten so
    that a copy still in flight never sees the next batch. On the CPU nothing is staged.
    """

    def __init__(
        self,
        allocate: Callable[[int], torch.Tensor] | None = None,
        record: Callable[[], Callable[[], None]] | None = None,
    ) -> None:
        self._allocate = allocate
        self._record = record
        self._buffer: torch.Tensor | None = None
        self._pending: Callable[[], None] | None = None

    @classmethod
    def for_device(cls, device: torch.device) -> Staging:
        if device.type != "cuda":
            return cls()

        def pinned(numel: int) -> torch.Tensor:
            return torch.empty(numel, dtype=torch.float32, pin_memory=True)

        def record() -> Callable[[], None]:
            event = torch.cuda.Event()
            event.record()
            return event.synchronize

        return cls(pinned, record)

    def upload(self, batch: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        host = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        if self._allocate is None:
            return host.to(device, dtype)
        if self._pending is not None:
            self._pending()  # the previous copy out of the buffer has finished
            self._pending = None
        if self._buffer is None or self._buffer.numel() < host.numel():
            self._buffer = self._allocate(host.numel())
        staged = self._buffer[: host.numel()].view(host.shape)
        staged.copy_(host)
        uploaded = staged.to(device, dtype, non_blocking=True)
        if self._record is not None:
            self._pending = self._record()
        return uploaded
