"""In-process limits: the detect pipeline (decode, letterbox, forward, NMS) in a loop, no
server, measured as one stream on all threads and as parallel single-threaded streams."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch

from ..backends import Engine
from ..detector import DetectionSettings, Detector, stack_batch
from ..imaging import decode_image


@dataclass
class PipelineResult:
    backend: str
    streams: int
    threads: int
    seconds: float
    images: int
    latencies_ms: list[float] = field(repr=False, default_factory=list)

    @property
    def name(self) -> str:
        return (
            f"{self.backend}: {self.streams} stream{'s' if self.streams > 1 else ''} x "
            f"{self.threads} thread{'s' if self.threads > 1 else ''}"
        )

    @property
    def throughput(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    def summary(self) -> dict[str, object]:
        return {
            "config": self.name,
            "images_per_s": round(self.throughput, 2),
            "p50_ms": round(self.percentile(50), 1),
            "p90_ms": round(self.percentile(90), 1),
        }


def measure_pipeline(
    detector: Detector,
    payloads: Sequence[bytes],
    streams: int,
    threads: int,
    duration: float,
    warmup: float,
    settings: DetectionSettings | None = None,
) -> PipelineResult:
    """`streams` threads each looping decode -> prepare -> forward -> NMS over `payloads`
    with `threads` intra-op threads; images/s and per-image latency over `duration`."""
    settings = settings or DetectionSettings()
    engines = [detector.backend.engine(threads, spin=streams == 1) for _ in range(streams)]
    window: list[float] = []

    def open_window() -> None:  # runs once every stream is primed, before any is released
        now = time.perf_counter()
        window.extend([now + warmup, now + warmup + duration])

    start = threading.Barrier(streams + 1, action=open_window)
    latencies: list[list[float]] = [[] for _ in range(streams)]
    completed = [0] * streams  # images finished inside the window
    failures: list[BaseException] = []

    def stream(index: int) -> None:
        engine = engines[index]
        k = index
        try:
            detect_once(detector, engine, payloads[k % len(payloads)], settings)  # unmeasured
            start.wait()
            window_start, window_end = window
            while True:
                began = time.perf_counter()
                if began >= window_end:
                    return
                detect_once(detector, engine, payloads[k % len(payloads)], settings)
                k += streams
                finished = time.perf_counter()
                if window_start <= finished <= window_end:
                    completed[index] += 1
                    if began >= window_start:
                        latencies[index].append((finished - began) * 1000)
        except BaseException as error:
            failures.append(error)
            start.abort()

    workers = [threading.Thread(target=stream, args=(i,)) for i in range(streams)]
    with cv2_threads(threads if streams == 1 else 1):
        for worker in workers:
            worker.start()
        with contextlib.suppress(threading.BrokenBarrierError):  # a stream failed to start
            start.wait()
        for worker in workers:
            worker.join()
    if failures:
        raise failures[0]
    flat = [value for values in latencies for value in values]
    return PipelineResult(detector.backend.name, streams, threads, duration, sum(completed), flat)


def detect_once(
    detector: Detector, engine: Engine, payload: bytes, settings: DetectionSettings
) -> None:
    """One image through the whole pipeline: decode, letterbox, forward, NMS."""
    image = detector.prepare(decode_image(payload))
    raw = detector.forward(stack_batch([image]), engine)
    detector.nms(raw, [image], settings)


@contextlib.contextmanager
def cv2_threads(count: int) -> Iterator[None]:
    previous = cv2.getNumThreads()
    cv2.setNumThreads(count)
    try:
        yield
    finally:
        cv2.setNumThreads(previous)


def measure_forward(
    detector: Detector, batch_sizes: Sequence[int], threads: int, duration: float
) -> dict[int, float]:
    """Images/s of the forward pass alone at each batch size (the device's ceiling)."""
    engine = detector.backend.engine(threads)
    cuda = detector.device.type == "cuda"
    results: dict[int, float] = {}
    for batch_size in batch_sizes:
        batch = np.random.default_rng(0).random(
            (batch_size, 3, *detector.input_shape), dtype=np.float32
        )
        for _ in range(2):
            detector.forward(batch, engine)
        if cuda:
            torch.cuda.synchronize()
        runs, began = 0, time.perf_counter()
        while time.perf_counter() - began < duration:
            detector.forward(batch, engine)
            if cuda:
                torch.cuda.synchronize()
            runs += 1
        results[batch_size] = runs * batch_size / (time.perf_counter() - began)
    return results
