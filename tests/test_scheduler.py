"""The scheduler: micro-batches from concurrent requests, per-image results, streams, solo
lane, warm-up, errors and cancellation, and that the event loop never waits on inference."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from predictor import DetectionSettings, Detector
from predictor.backends import Backend, Engine, Parallelism
from predictor.detector import stack_batch
from predictor.server.options import PerformanceOptions
from predictor.server.scheduler import Scheduler
from tests.serving import REPO
from tests.support import random_image
from tests.test_backends import assert_same_detections, save_stable_checkpoint

IMG_SIZE = 128


class Recording(Backend):
    """Wraps a real backend; records each forward (engine, batch size, input shape) and can
    hold an engine's calls at a gate."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.name = f"recording {inner.name}"
        self.device = inner.device
        self.description = self.name
        self.calls: list[tuple[Engine, int, tuple[int, int]]] = []
        self.lock = threading.Lock()

    def engine(self, threads: int | None = None, *, spin: bool = True) -> RecordingEngine:
        return RecordingEngine(self, self.inner.engine(threads, spin=spin), threads)

    def batches(self, since: int = 0) -> list[int]:
        return [n for _, n, _ in self.calls[since:]]


class RecordingEngine(Engine):
    def __init__(self, backend: Recording, inner: Engine, threads: int | None) -> None:
        self.backend, self.inner, self.threads = backend, inner, threads
        self.entered = threading.Event()
        self.gate: threading.Event | None = None
        self.fail_on: int | None = None  # batch size that raises
        self.thread_names: set[str] = set()

    def __call__(self, batch: np.ndarray):
        with self.backend.lock:
            self.backend.calls.append((self, len(batch), tuple(batch.shape[2:])))
            self.thread_names.add(threading.current_thread().name)
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(30)
        if self.fail_on == len(batch):
            raise RuntimeError("engine failure")
        return self.inner(batch)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_stable_checkpoint(tmp_path_factory.mktemp("model") / "stable.pt")


@pytest.fixture(scope="module")
def reference(checkpoint: Path) -> Detector:
    return Detector.load(checkpoint, "cpu", IMG_SIZE)


def recording_detector(checkpoint: Path, letterbox: str = "square") -> Detector:
    plain = Detector.load(checkpoint, "cpu", IMG_SIZE, letterbox)
    return Detector(plain.model, IMG_SIZE, letterbox, backend=Recording(plain.backend))


def started(detector: Detector, parallelism: Parallelism, batch: int, delay_ms: float):
    scheduler = Scheduler(detector, parallelism, batch, delay_ms)
    scheduler.start()
    for engine in [*scheduler.engines, scheduler.solo_engine]:
        if isinstance(engine, RecordingEngine):
            engine.entered.clear()  # warm-up calls do not count
    return scheduler


IMAGES = [random_image(150, 200, 1), random_image(240, 120, 2), random_image(100, 100, 3)]


# -- micro-batching ----------------------------------------------------------------------------


def test_concurrent_requests_share_one_forward_and_get_their_own_results(
    checkpoint, reference
) -> None:
    detector = recording_detector(checkpoint)
    backend = detector.backend
    scheduler = started(detector, Parallelism(1, 1, 1), batch=4, delay_ms=10_000)
    warmed = len(backend.calls)
    requests = [
        (IMAGES[0], DetectionSettings()),
        (IMAGES[1], DetectionSettings(conf_threshold=0.6)),
        (IMAGES[2], DetectionSettings(classes=(0, 2))),
        (IMAGES[0], DetectionSettings(max_det=3, agnostic=True)),
    ]

    async def clients():
        return await asyncio.gather(
            *(scheduler.detect([detector.prepare(image)], s) for image, s in requests)
        )

    try:
        began = time.monotonic()
        results = asyncio.run(clients())
        assert time.monotonic() - began < 10, "a full batch must not wait for the delay"
    finally:
        scheduler.close()
    assert backend.batches(warmed) == [4], "four concurrent requests, one forward pass"
    for (image, settings), [result] in zip(requests, results, strict=True):
        assert_same_detections(reference.detect([image], settings), [result])
    assert sum(len(r) for [r] in results) > 0


def test_batches_never_mix_input_shapes_and_respect_the_size_limit(checkpoint) -> None:
    detector = recording_detector(checkpoint, "rect")
    backend = detector.backend
    scheduler = started(detector, Parallelism(1, 1, 1), batch=2, delay_ms=100)
    warmed = len(backend.calls)
    wide, tall = IMAGES[0], IMAGES[1]  # different rect shapes
    prepared = [detector.prepare(image) for image in (wide, tall, wide, wide, tall)]
    assert prepared[0].plan.shape != prepared[1].plan.shape
    try:
        results = scheduler.detect_sync(prepared, DetectionSettings())
    finally:
        scheduler.close()
    calls = backend.calls[warmed:]
    # oldest first: wide x2 (the limit), then the oldest left is tall: tall x2, then wide
    assert [n for _, n, _ in calls] == [2, 2, 1]
    assert [shape for _, _, shape in calls] == [
        prepared[0].plan.shape,
        prepared[1].plan.shape,
        prepared[0].plan.shape,
    ]
    single = Detector.load(detector.model.source, "cpu", IMG_SIZE, "rect")
    expected = single.detect([wide, tall, wide, wide, tall])
    assert_same_detections(expected, results)


def test_without_delay_a_lone_image_is_not_held_back(checkpoint) -> None:
    detector = recording_detector(checkpoint)
    scheduler = started(detector, Parallelism(1, 1, 1), batch=8, delay_ms=0)
    try:
        began = time.monotonic()
        scheduler.detect_sync([detector.prepare(IMAGES[0])], DetectionSettings())
        assert time.monotonic() - began < 5
    finally:
        scheduler.close()
    assert detector.backend.batches()[-1] == 1


def test_batches_are_built_bit_for_bit_like_single_images(checkpoint) -> None:
    detector = Detector.load(checkpoint, "cpu", IMG_SIZE)
    prepared = [detector.prepare(image) for image in IMAGES]
    assert all(p.pixels.dtype == np.uint8 for p in prepared)  # queued as uint8
    batch = stack_batch(prepared)
    assert batch.dtype == np.float32 and batch.flags.c_contiguous
    assert np.array_equal(batch, np.stack([p.tensor for p in prepared]))


# -- streams and the solo lane -----------------------------------------------------------------


def test_lone_request_runs_solo_and_concurrent_ones_on_stream_engines(checkpoint) -> None:
    detector = recording_detector(checkpoint)
    backend = detector.backend
    scheduler = started(detector, Parallelism(2, 1, 2), batch=1, delay_ms=0)
    solo = scheduler.solo_engine
    assert solo is not None and solo.threads == 2
    assert all(engine.threads == 1 for engine in scheduler.engines)
    warmed = len(backend.calls)
    try:
        solo.gate = threading.Event()
        first = scheduler.submit([detector.prepare(IMAGES[0])], DetectionSettings())
        assert solo.entered.wait(10)
        second = scheduler.submit([detector.prepare(IMAGES[1])], DetectionSettings())
        second[0].result(timeout=30)  # finishes while the solo batch is still held
        assert not first[0].done()
        solo.gate.set()
        first[0].result(timeout=30)
        solo.gate = None
        engines = [engine for engine, _, _ in backend.calls[warmed:]]
        assert engines[0] is solo
        assert engines[1] in scheduler.engines

        # a request of several images spreads over the streams, none of them solo
        before = len(backend.calls)
        scheduler.detect_sync([detector.prepare(i) for i in IMAGES], DetectionSettings())
        assert all(engine is not solo for engine, _, _ in backend.calls[before:])
    finally:
        scheduler.close()


def test_every_engine_is_warmed_on_every_batch_size_before_serving(checkpoint) -> None:
    detector = recording_detector(checkpoint)
    scheduler = Scheduler(detector, Parallelism(2, 1, 2), max_batch_size=3)
    scheduler.start()  # returns only once every stream has warmed up
    calls = list(detector.backend.calls)
    scheduler.close()
    engines = [*scheduler.engines, scheduler.solo_engine]
    seen = {(id(engine), n, shape) for engine, n, shape in calls}
    expected = {(id(e), n, detector.input_shape) for e in engines for n in (1, 2, 3)}
    assert seen == expected
    # each in the thread that will use it: the stream's own, and the solo one in every stream
    assert [e.thread_names for e in scheduler.engines] == [{"inference-0"}, {"inference-1"}]
    assert scheduler.solo_engine.thread_names == {"inference-0", "inference-1"}


def test_a_failing_warmup_fails_start(checkpoint) -> None:
    detector = recording_detector(checkpoint)
    scheduler = Scheduler(detector, Parallelism(2, 1, 1), max_batch_size=2)
    scheduler.engines[1].fail_on = 2
    with pytest.raises(RuntimeError, match="engine failure"):
        scheduler.start()
    with pytest.raises(RuntimeError, match="closed"):
        scheduler.submit([detector.prepare(IMAGES[0])], DetectionSettings())


def test_scheduler_defaults_from_cpus_and_device(checkpoint) -> None:
    detector = Detector.load(checkpoint, "cpu", IMG_SIZE)
    scheduler = Scheduler.create(detector, PerformanceOptions(), cpus=2)
    assert scheduler.parallelism == Parallelism(2, 1, 2)
    assert (scheduler.max_batch_size, scheduler.max_batch_delay) == (1, 0.0)
    assert len(scheduler.engines) == 2 and scheduler.solo_engine is not None
    options = PerformanceOptions(
        streams=1, threads_per_stream=2, max_batch_size=4, max_batch_delay_ms=5
    )
    scheduler = Scheduler.create(detector, options, cpus=2)
    assert scheduler.parallelism == Parallelism(1, 2, 2)
    assert (scheduler.max_batch_size, scheduler.max_batch_delay) == (4, 0.005)
    assert scheduler.solo_engine is None


def test_onnxruntime_streams_give_torch_results(checkpoint, reference, tmp_path) -> None:
    fast = Detector.load(checkpoint, "cpu", IMG_SIZE, backend="onnxruntime", cache_dir=tmp_path)
    scheduler = started(fast, Parallelism(2, 1, 2), batch=2, delay_ms=50)
    try:
        results = scheduler.detect_sync([fast.prepare(i) for i in IMAGES], DetectionSettings())
    finally:
        scheduler.close()
    assert_same_detections(reference.detect(IMAGES), results)


# -- failures, cancellation, shutdown, the event loop ----------------------------------------


def test_a_failing_batch_fails_its_requests_only(checkpoint) -> None:
    detector = recording_detector(checkpoint)
    scheduler = started(detector, Parallelism(1, 1, 1), batch=2, delay_ms=50)
    scheduler.engines[0].fail_on = 2
    try:
        doomed = scheduler.submit(
            [detector.prepare(IMAGES[0]), detector.prepare(IMAGES[1])], DetectionSettings()
        )
        for future in doomed:
            with pytest.raises(RuntimeError, match="engine failure"):
                future.result(timeout=30)
        scheduler.engines[0].fail_on = None
        [result] = scheduler.detect_sync([detector.prepare(IMAGES[2])], DetectionSettings())
        assert result.boxes.shape == (len(result), 4)  # still serving
    finally:
        scheduler.close()


def test_cancelled_requests_are_not_run(checkpoint) -> None:
    detector = recording_detector(checkpoint)
    backend = detector.backend
    scheduler = started(detector, Parallelism(1, 1, 1), batch=1, delay_ms=0)
    engine = scheduler.engines[0]
    try:
        engine.gate = threading.Event()
        busy = scheduler.submit([detector.prepare(IMAGES[0])], DetectionSettings())
        assert engine.entered.wait(10)
        before = len(backend.calls)
        [abandoned] = scheduler.submit([detector.prepare(IMAGES[1])], DetectionSettings())
        assert abandoned.cancel()
        engine.gate.set()
        busy[0].result(timeout=30)
        scheduler.detect_sync([detector.prepare(IMAGES[2])], DetectionSettings())
        shapes = [shape for _, _, shape in backend.calls[before:]]
        assert len(shapes) == 1, "only the live request after the cancelled one ran"
    finally:
        engine.gate = None
        scheduler.close()


def test_close_finishes_queued_work_then_refuses_more(checkpoint) -> None:
    detector = recording_detector(checkpoint)
    scheduler = started(detector, Parallelism(2, 1, 2), batch=1, delay_ms=0)
    futures = scheduler.submit([detector.prepare(i) for i in IMAGES * 2], DetectionSettings())
    scheduler.close()
    assert all(f.done() and f.exception() is None for f in futures)
    with pytest.raises(RuntimeError, match="closed"):
        scheduler.submit([detector.prepare(IMAGES[0])], DetectionSettings())


def test_inference_never_blocks_the_event_loop(checkpoint) -> None:
    detector = recording_detector(checkpoint)
    scheduler = started(detector, Parallelism(1, 1, 1), batch=1, delay_ms=0)
    engine = scheduler.engines[0]
    engine.gate = threading.Event()

    async def scenario() -> int:
        ticks = 0
        task = asyncio.ensure_future(
            scheduler.detect([detector.prepare(IMAGES[0])], DetectionSettings())
        )
        while not engine.entered.is_set():
            await asyncio.sleep(0.01)
        for _ in range(20):  # the loop keeps running while the forward pass is held
            await asyncio.sleep(0.005)
            ticks += 1
        assert not task.done()
        engine.gate.set()
        await task
        return ticks

    try:
        assert asyncio.run(scenario()) == 20
    finally:
        engine.gate = None
        scheduler.close()


def test_server_cli_offers_the_performance_flags() -> None:
    script = (
        "from predictor.server.cli import build_parser; "
        "print(build_parser().parse_args(['--max_batch_size=2', '--backend=torch']).backend)"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert done.stdout.strip() == "torch", done.stderr
