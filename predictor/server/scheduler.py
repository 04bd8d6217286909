"""Parallel inference streams fed by a micro-batcher, off the event loop.

Images from concurrent requests go into one queue. Each stream is a thread with its own
engine; the stream whose turn it is gathers the oldest image and every queued image of the
same input shape, up to `max_batch_size`, waiting at most `max_batch_delay_ms` (counted
from the oldest image's arrival) for more, then runs one forward pass and each image's own
NMS with its own request's settings. NMS is per image, so a detection never depends on
which images shared its batch.

A stream that is the only one busy when it starts a batch (a lone request) runs it on the
solo engine, which has every CPU; under load the streams run single-threaded side by side.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Literal, Protocol

from ..backends import (
    Engine,
    Parallelism,
    available_cpus,
    plan_parallelism,
)
from ..detector import Detections, DetectionSettings, Detector, PreparedImage, stack_batch
from .options import CPU_BATCHING, CUDA_BATCHING, PerformanceOptions

logger = logging.getLogger(__name__)


class Observer(Protocol):
    """Where the streams report what they did (the serving metrics)."""

    def batch(self, images: int) -> None: ...

    def stage(self, stage: Stage, seconds: float) -> None: ...


Stage = Literal["queue_wait", "forward", "nms"]


@dataclass
class _Item:
    image: PreparedImage
    settings: DetectionSettings
    future: Future[Detections]
    enqueued: float


class Scheduler:
    """Streams x micro-batcher for one detector. `start()` warms up, then serves."""

    def __init__(
        self,
        detector: Detector,
        parallelism: Parallelism,
        max_batch_size: int = 1,
        max_batch_delay_ms: float = 0.0,
        observer: Observer | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if max_batch_delay_ms < 0:
            raise ValueError(f"max_batch_delay_ms must be >= 0, got {max_batch_delay_ms}")
        self.detector = detector
        self.parallelism = parallelism
        self.max_batch_size = max_batch_size
        self.max_batch_delay = max_batch_delay_ms / 1000
        self._observer = observer
        backend = detector.backend
        alone = parallelism.streams == 1
        self.engines: list[Engine] = [
            backend.engine(parallelism.threads_per_stream, spin=alone)
            for _ in range(parallelism.streams)
        ]
        self.solo_engine: Engine | None = (
            backend.engine(parallelism.solo_threads, spin=False)
            if parallelism.has_solo_lane
            else None
        )
        self._queue: deque[_Item] = deque()
        self._ready = threading.Condition()
        self._gathering = threading.Lock()  # one stream gathers a batch at a time
        self._busy = 0
        self._closed = False
        self._threads: list[threading.Thread] = []
        self._starting = 0  # streams still warming up
        self._startup_errors: list[BaseException] = []
        self._solo_warmup = threading.Lock()

    @classmethod
    def create(
        cls,
        detector: Detector,
        options: PerformanceOptions,
        cpus: int | None = None,
        observer: Observer | None = None,
    ) -> Scheduler:
        """Parallelism and batching from `options`, defaults from the device and CPU quota."""
        device_type = detector.device.type
        parallelism = plan_parallelism(
            cpus or available_cpus(),
            device_type,
            options.streams,
            options.threads_per_stream,
            options.solo_threads,
        )
        batch, delay = CUDA_BATCHING if device_type == "cuda" else CPU_BATCHING
        return cls(
            detector,
            parallelism,
            options.max_batch_size or batch,
            delay if options.max_batch_delay_ms is None else options.max_batch_delay_ms,
            observer,
        )

    @property
    def capacity(self) -> int:
        """Images the streams can work on at once."""
        return self.parallelism.streams * self.max_batch_size

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Start the streams; returns once each has warmed up (see `_warm`)."""
        if self._threads:
            return
        self._starting = len(self.engines)
        for index, engine in enumerate(self.engines):
            thread = threading.Thread(
                target=self._serve, args=(engine,), name=f"inference-{index}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        with self._ready:
            self._ready.wait_for(lambda: self._starting == 0)
        if self._startup_errors:
            self.close()
            raise self._startup_errors[0]
        logger.info(
            "inference: %s, %d streams x %d threads (solo: %d), batches up to %d within %g ms",
            self.detector.backend.description,
            self.parallelism.streams,
            self.parallelism.threads_per_stream,
            self.parallelism.solo_threads if self.solo_engine else 0,
            self.max_batch_size,
            self.max_batch_delay * 1000,
        )

    def _warm(self, engine: Engine) -> None:
        """Run the stream's engine, and the solo engine it may use, once per batch size at
        the full input shape, in the stream's own thread: thread pools, per-thread thread
        counts and CUDA streams are set up here, not by the first request."""
        sizes = range(1, self.max_batch_size + 1)
        self.detector.warmup(sizes, engine)
        if self.solo_engine is not None:
            with self._solo_warmup:
                self.detector.warmup(sizes, self.solo_engine)

    def close(self, timeout: float | None = 30) -> None:
        """Finish what is queued, then stop the streams."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()
        for thread in self._threads:
            thread.join(timeout)
        self._threads.clear()

    # -- submitting ----------------------------------------------------------------------

    def submit(
        self, images: Sequence[PreparedImage], settings: DetectionSettings
    ) -> list[Future[Detections]]:
        """Queue images; each future resolves to that image's detections."""
        now = time.monotonic()
        items = [_Item(image, settings, Future(), now) for image in images]
        with self._ready:
            if self._closed:
                raise RuntimeError("the scheduler is closed")
            self._queue.extend(items)
            self._ready.notify_all()
        return [item.future for item in items]

    async def detect(
        self, images: Sequence[PreparedImage], settings: DetectionSettings
    ) -> list[Detections]:
        """Detections for `images`, in order, without blocking the event loop."""
        futures = [asyncio.wrap_future(f) for f in self.submit(images, settings)]
        try:
            return list(await asyncio.gather(*futures))
        except BaseException:
            for future in futures:  # a failed or cancelled request leaves no work queued
                future.cancel()
            raise

    def detect_sync(
        self, images: Sequence[PreparedImage], settings: DetectionSettings
    ) -> list[Detections]:
        return [future.result() for future in self.submit(images, settings)]

    # -- the streams ---------------------------------------------------------------------

    def _serve(self, engine: Engine) -> None:
        try:
            self._warm(engine)
        except BaseException as error:
            self._startup_errors.append(error)
        finally:
            with self._ready:
                self._starting -= 1
                self._ready.notify_all()
        if self._startup_errors:
            return
        while True:
            taken = self._next_batch()
            if taken is None:
                return
            items, solo = taken
            try:
                self._run(self.solo_engine if solo and self.solo_engine else engine, items)
            finally:
                with self._ready:
                    self._busy -= 1

    def _next_batch(self) -> tuple[list[_Item], bool] | None:
        """The next batch (oldest image first, same input shape) and whether it runs solo."""
        with self._gathering, self._ready:
            batch: list[_Item] = []
            while not batch:
                while not self._queue:
                    if self._closed:
                        return None
                    self._ready.wait()
                self._take(batch, self._queue[0].image.plan.shape)
            deadline = batch[0].enqueued + self.max_batch_delay
            shape = batch[0].image.plan.shape
            while len(batch) < self.max_batch_size and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._ready.wait(remaining)
                self._take(batch, shape)
            self._busy += 1
            solo = self._busy == 1 and not self._queue
            return batch, solo

    def _take(self, batch: list[_Item], shape: tuple[int, int]) -> None:
        """Move queued items of input `shape` into `batch` (up to the limit), keeping the
        others in order; items whose request was cancelled are dropped."""
        kept: deque[_Item] = deque()
        while self._queue:
            item = self._queue.popleft()
            if len(batch) < self.max_batch_size and item.image.plan.shape == shape:
                if item.future.set_running_or_notify_cancel():
                    batch.append(item)
            else:
                kept.append(item)
        self._queue = kept

    def _run(self, engine: Engine, items: list[_Item]) -> None:
        started = time.monotonic()
        try:
            batch = stack_batch([item.image for item in items])
            raw = self.detector.forward(batch, engine)
        except BaseException as error:
            for item in items:
                _resolve(item.future, error=error)
            logger.exception("inference failed on a batch of %d", len(items))
            return
        forwarded = time.monotonic()
        nms_seconds = []
        for index, item in enumerate(items):
            begun = time.monotonic()
            try:
                [result] = self.detector.nms(raw[index : index + 1], [item.image], item.settings)
            except BaseException as error:
                _resolve(item.future, error=error)
            else:
                _resolve(item.future, result=result)
            nms_seconds.append(time.monotonic() - begun)
        if self._observer is not None:
            self._observer.batch(len(items))
            self._observer.stage("forward", forwarded - started)
            for item, seconds in zip(items, nms_seconds, strict=True):
                self._observer.stage("queue_wait", started - item.enqueued)
                self._observer.stage("nms", seconds)


def _resolve(
    future: Future[Detections],
    result: Detections | None = None,
    error: BaseException | None = None,
) -> None:
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]
    except InvalidStateError:  # cancelled meanwhile
        pass
