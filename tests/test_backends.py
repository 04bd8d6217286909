"""Backends: ONNX Runtime equals PyTorch, the export cache, CPU quota sizing, staging."""

from __future__ import annotations

import copy
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from predictor import DetectionSettings, Detector
from predictor.backends import (
    BackendError,
    Parallelism,
    Staging,
    TorchBackend,
    available_cpus,
    cgroup_cpu_limit,
    create_backend,
    plan_parallelism,
    verify,
)
from predictor.backends import onnxruntime_backend as ortb
from predictor.backends.torch_backend import set_thread_count
from predictor.backends.verify import Thresholds, compare_image_detections, compare_raw
from predictor.checkpoint import LoadedModel, load_checkpoint, save_checkpoint
from predictor.runtime.architecture import build_model, yolov5_spec
from predictor.runtime.detection import DetectionModel
from predictor.training.trainer import TrainConfig, make_optimizer
from tests.support import random_image, save_responsive_checkpoint

IMG_SIZE = 128


def save_stable_checkpoint(path: Path, seed: int = 0) -> Path:
    save_responsive_checkpoint(path, names=["cat", "dog", "bird"], seed=seed)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_stable_checkpoint(tmp_path_factory.mktemp("model") / "stable.pt")


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    return [random_image(150, 200, 1), random_image(240, 120, 2), random_image(100, 100, 3)]


def assert_same_detections(expected, actual) -> None:
    assert [len(r) for r in actual] == [len(r) for r in expected]
    for want, got in zip(expected, actual, strict=True):
        np.testing.assert_allclose(got.boxes, want.boxes, atol=1.0)  # 1 px
        np.testing.assert_allclose(got.scores, want.scores, atol=1e-4)
        assert got.class_ids.tolist() == want.class_ids.tolist()
        assert got.labels == want.labels


# -- onnxruntime against the PyTorch reference ------------------------------------------------


@pytest.mark.parametrize("letterbox", ["square", "rect"])
def test_onnxruntime_detections_equal_torch(checkpoint, images, tmp_path, letterbox) -> None:
    reference = Detector.load(checkpoint, "cpu", IMG_SIZE, letterbox)
    fast = Detector.load(
        checkpoint, "cpu", IMG_SIZE, letterbox, backend="onnxruntime", cache_dir=tmp_path
    )
    assert fast.backend.name == "onnxruntime"
    expected = reference.detect(images, DetectionSettings())
    assert sum(len(r) for r in expected) >= 10, "the test model must detect something"
    assert_same_detections(expected, fast.detect(images, DetectionSettings()))
    # and image by image (batch 1), with request settings applied after the forward pass
    strict = DetectionSettings(conf_threshold=0.5, classes=(1,), max_det=5)
    assert_same_detections(
        [reference.detect([image], strict)[0] for image in images],
        [fast.detect([image], strict)[0] for image in images],
    )


def test_raw_outputs_match_torch_on_dynamic_batch_and_shape(checkpoint, tmp_path) -> None:
    fast = Detector.load(checkpoint, "cpu", IMG_SIZE, "rect", backend="onnxruntime", cache_dir="")
    reference = Detector.load(checkpoint, "cpu", IMG_SIZE, "rect")
    batch = np.random.default_rng(0).random((3, 3, 96, 128), dtype=np.float32)
    difference = compare_raw(reference.forward(batch), fast.forward(batch))
    assert difference.boxes < 1e-4 and difference.scores < 1e-4, difference


def test_auto_is_onnxruntime_on_cpu(checkpoint, tmp_path) -> None:
    detector = Detector.load(checkpoint, "cpu", IMG_SIZE, backend="auto", cache_dir=tmp_path)
    assert detector.backend.name == "onnxruntime"
    assert Detector.load(checkpoint, "cpu", IMG_SIZE).backend.name == "torch"  # library default


def _on_meta_device(model: LoadedModel) -> LoadedModel:
    """The model as if it lived on an accelerator (no GPU needed to test the rule)."""
    return LoadedModel(model.network.to("meta"), model.names, model.stride, model.source)


def test_auto_is_torch_off_the_cpu_and_onnxruntime_refuses_there(checkpoint) -> None:
    model = _on_meta_device(load_checkpoint(checkpoint))
    backend = create_backend(model, "auto", input_shape=(IMG_SIZE, IMG_SIZE))
    assert isinstance(backend, TorchBackend)
    assert backend.device.type == "meta"
    with pytest.raises(BackendError, match="CPU"):
        create_backend(model, "onnxruntime", input_shape=(IMG_SIZE, IMG_SIZE))


def test_unknown_backend_is_refused(checkpoint) -> None:
    with pytest.raises(BackendError, match="unknown backend"):
        create_backend(load_checkpoint(checkpoint), "tensorrt", input_shape=(64, 64))


def test_export_that_differs_is_refused_or_falls_back(checkpoint, tmp_path, monkeypatch) -> None:
    other = load_checkpoint(save_stable_checkpoint(tmp_path / "other.pt", seed=7))
    real_export = ortb.export_onnx

    def wrong_export(model, input_shape):
        return real_export(other, input_shape)  # a different network's weights

    monkeypatch.setattr(ortb, "export_onnx", wrong_export)
    model = load_checkpoint(checkpoint)
    with pytest.raises(BackendError, match=r"detections differ from PyTorch's on scene \d"):
        create_backend(model, "onnxruntime", input_shape=(IMG_SIZE, IMG_SIZE), cache_dir="")
    backend = create_backend(model, "auto", input_shape=(IMG_SIZE, IMG_SIZE), cache_dir="")
    assert backend.name == "torch"
    assert backend.reason.startswith("onnxruntime rejected: detections differ")
    assert "detection class" in backend.reason  # names the first differing detection


def test_export_that_fails_to_run_falls_back(checkpoint, monkeypatch) -> None:
    def broken(self, batch):
        raise RuntimeError("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid dimensions")

    monkeypatch.setattr(ortb.OnnxRuntimeEngine, "__call__", broken)
    model = load_checkpoint(checkpoint)
    backend = create_backend(model, "auto", input_shape=(64, 64), cache_dir="")
    assert backend.name == "torch" and "invalid dimensions" in backend.reason
    with pytest.raises(BackendError, match="fails on scene 0"):
        create_backend(model, "onnxruntime", input_shape=(64, 64), cache_dir="")


# -- judged by detections, on genuine-format checkpoints ---------------------------------------

GENUINE_SIZE = 160


def untrained_yolov5s() -> DetectionModel:
    torch.manual_seed(0)
    return build_model(yolov5_spec("s", nc=3), ["circle", "square", "triangle"])


@pytest.fixture(scope="module")
def train_py_last(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained yolov5s as train.py writes `last.pt` mid-training: `model` and `ema`
    (fp16), optimizer state, EMA updates."""
    model = untrained_yolov5s()
    optimizer = make_optimizer(model, TrainConfig())
    path = tmp_path_factory.mktemp("genuine") / "last.pt"
    extra = {"optimizer": optimizer.state_dict(), "updates": 0, "opt": {"img_size": 640}}
    save_checkpoint(path, model.train(), ema=model.eval(), epoch=0, extra=extra)
    return path


def _nudged(model: LoadedModel, logit: float) -> LoadedModel:
    """The network with every head output logit raised by `logit`: what a runtime whose
    kernels round differently does to the raw outputs, made larger and deterministic."""
    network = copy.deepcopy(model.network)
    with torch.no_grad():
        for conv in network.head.m:
            conv.bias += logit
    return LoadedModel(network, model.names, model.stride, model.source)


def test_raw_difference_with_equal_detections_is_served_by_onnxruntime(
    train_py_last, tmp_path, monkeypatch
) -> None:
    real_export = ortb.export_onnx
    monkeypatch.setattr(ortb, "export_onnx", lambda m, shape: real_export(_nudged(m, 2e-3), shape))
    model = load_checkpoint(train_py_last)
    shape = (GENUINE_SIZE, GENUINE_SIZE)
    backend = create_backend(model, "auto", input_shape=shape, cache_dir=tmp_path)
    assert backend.name == "onnxruntime", backend.reason
    # the raw outputs really differ beyond the old 1e-4 tolerance ...
    batch = verify.probes(shape, model.stride, rect=False)[0].batch
    raw = compare_raw(
        TorchBackend(model.network, torch.device("cpu")).engine()(batch), backend.engine(1)(batch)
    )
    assert raw.boxes > 1e-4 or raw.scores > 1e-4, raw
    # ... the detections do not, and real ones were compared at the low threshold
    assert backend.reason.startswith("detections equal PyTorch's on 6 images")
    compared_low = int(backend.reason.split(", ")[1].split(" at conf")[0])
    assert compared_low > 0, backend.reason


def test_detections_that_really_differ_fall_back_with_the_reason(
    train_py_last, tmp_path, monkeypatch, caplog
) -> None:
    real_export = ortb.export_onnx
    monkeypatch.setattr(ortb, "export_onnx", lambda m, shape: real_export(_nudged(m, 0.5), shape))
    model = load_checkpoint(train_py_last)
    shape = (GENUINE_SIZE, GENUINE_SIZE)
    with caplog.at_level("WARNING", logger="predictor.backends"):
        backend = create_backend(model, "auto", input_shape=shape, cache_dir=tmp_path)
    assert backend.name == "torch"
    assert "detections differ from PyTorch's on scene 0" in backend.reason
    assert any(
        r.levelname == "WARNING" and "detections differ" in r.message for r in caplog.records
    )
    with pytest.raises(BackendError, match="--backend onnxruntime: detections differ"):
        create_backend(model, "onnxruntime", input_shape=shape, cache_dir=tmp_path)


def test_the_verdict_is_cached_with_the_export(checkpoint, tmp_path, monkeypatch) -> None:
    judged = []
    real_judge = verify.judge
    monkeypatch.setattr(
        "predictor.backends.judge", lambda *a, **k: judged.append(1) or real_judge(*a, **k)
    )
    first = Detector.load(checkpoint, "cpu", IMG_SIZE, backend="auto", cache_dir=tmp_path)
    again = Detector.load(checkpoint, "cpu", IMG_SIZE, backend="auto", cache_dir=tmp_path)
    assert len(judged) == 1, "a restart does not judge again"
    assert again.backend.name == "onnxruntime"
    assert again.backend.reason == f"{first.backend.reason} (verdict cached with the export)"
    # other thresholds are other conditions: judged again
    strict = DetectionSettings(conf_threshold=0.5)
    Detector.load(checkpoint, "cpu", IMG_SIZE, backend="auto", cache_dir=tmp_path, settings=strict)
    assert len(judged) == 2
    # a replaced export voids its verdicts
    first.backend.onnx.path.write_bytes(b"not an onnx model")
    replaced = Detector.load(checkpoint, "cpu", IMG_SIZE, backend="auto", cache_dir=tmp_path)
    assert replaced.backend.name == "onnxruntime" and len(judged) == 3  # re-exported, judged


def _raw(rows: list[tuple[float, float, float, float, float, int]]) -> torch.Tensor:
    """Head output rows (x, y, w, h, objectness, class) with class probability 1."""
    out = torch.zeros(len(rows), 5 + 3)
    for i, (x, y, w, h, obj, cls) in enumerate(rows):
        out[i, :5] = torch.tensor([x, y, w, h, obj])
        out[i, 5 + cls] = 1.0
    return out


def test_candidates_at_the_threshold_count_on_neither_side() -> None:
    point = Thresholds(0.25, 0.45, 1000)
    reference = _raw([(50, 50, 20, 20, 0.9, 0), (10, 10, 8, 8, 0.2505, 1)])
    below = _raw([(50, 50, 20, 20, 0.9, 0), (10, 10, 8, 8, 0.2495, 1)])  # crosses: ignored
    same = compare_image_detections(reference, below, point)
    assert (same.mismatch, same.compared) == (None, 1)
    clear = _raw([(50, 50, 20, 20, 0.9, 0), (10, 10, 8, 8, 0.26, 1)])
    dropped = _raw([(50, 50, 20, 20, 0.9, 0), (10, 10, 8, 8, 0.2, 1)])
    mismatch = compare_image_detections(clear, dropped, point).mismatch
    assert mismatch is not None and "PyTorch's detection class 1 score 0.2600" in mismatch


def test_tolerances_are_one_pixel_and_a_thousandth() -> None:
    point = Thresholds(0.25, 0.45, 1000)
    reference = _raw([(50, 50, 20, 20, 0.9, 0)])

    def mismatch(row) -> str | None:
        return compare_image_detections(reference, _raw([row]), point).mismatch

    assert mismatch((50.9, 50, 20, 20, 0.9009, 0)) is None
    assert "box off by 1.50 px" in mismatch((51.5, 50, 20, 20, 0.9, 0))
    assert "score 0.9000" in mismatch((50, 50, 20, 20, 0.902, 0))
    assert "no class 0" in mismatch((50, 50, 20, 20, 0.9, 2))


def test_nms_keeping_another_of_equal_candidates_is_no_difference() -> None:
    point = Thresholds(0.25, 0.45, 1000)
    # two overlapping candidates of one class whose order the rounding flips
    reference = _raw([(50, 50, 20, 20, 0.80005, 0), (53, 50, 20, 20, 0.8, 0)])
    flipped = _raw([(50, 50, 20, 20, 0.8, 0), (53, 50, 20, 20, 0.80005, 0)])
    result = compare_image_detections(reference, flipped, point)
    assert (result.mismatch, result.reordered) == (None, 2)
    # ... but not when the survivor's own prediction differs: that is a real difference
    moved = _raw([(50, 50, 20, 20, 0.7, 0), (53, 50, 20, 20, 0.85, 0)])
    assert compare_image_detections(reference, moved, point).mismatch is not None


# -- the export cache --------------------------------------------------------------------------


def test_export_is_cached_by_checkpoint_hash(checkpoint, tmp_path, monkeypatch) -> None:
    exports = []
    real_export = ortb.export_onnx
    monkeypatch.setattr(
        ortb,
        "export_onnx",
        lambda *a: exports.append(1) or real_export(*a),  # count calls
    )
    first = Detector.load(checkpoint, "cpu", IMG_SIZE, backend="onnxruntime", cache_dir=tmp_path)
    assert len(exports) == 1
    cached = first.backend.onnx.path
    assert cached is not None and cached.is_file() and cached.parent.parent == tmp_path
    assert ortb.file_digest(checkpoint)[:40] in cached.name
    assert first.backend.onnx.origin.startswith("exported")

    second = Detector.load(checkpoint, "cpu", IMG_SIZE, backend="onnxruntime", cache_dir=tmp_path)
    assert len(exports) == 1, "the second load must not export again"
    assert second.backend.onnx.origin.startswith("cache hit")
    assert second.backend.onnx.path == cached

    # another checkpoint (other bytes) gets its own entry
    other = save_stable_checkpoint(tmp_path / "other.pt", seed=3)
    third = Detector.load(other, "cpu", IMG_SIZE, backend="onnxruntime", cache_dir=tmp_path)
    assert len(exports) == 2 and third.backend.onnx.path != cached
    assert not list((tmp_path / "onnx").glob("*.tmp")), "no temporary files are left behind"


def test_unwritable_cache_dir_exports_in_memory(checkpoint, images, tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache directory would go")
    cache_dir = blocker / "cache"  # cannot be created, even by root
    detector = Detector.load(
        checkpoint, "cpu", IMG_SIZE, backend="onnxruntime", cache_dir=cache_dir
    )
    assert detector.backend.name == "onnxruntime"
    assert detector.backend.onnx.path is None and detector.backend.onnx.data
    assert "in memory" in detector.backend.onnx.origin
    reference = Detector.load(checkpoint, "cpu", IMG_SIZE)
    assert_same_detections(reference.detect(images), detector.detect(images))


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_cache_dir_exports_in_memory(checkpoint, tmp_path) -> None:
    read_only = tmp_path / "ro"
    read_only.mkdir()
    read_only.chmod(0o555)
    try:
        detector = Detector.load(
            checkpoint, "cpu", IMG_SIZE, backend="onnxruntime", cache_dir=read_only
        )
        assert detector.backend.onnx.path is None
    finally:
        read_only.chmod(0o755)


def test_corrupt_cache_entry_is_replaced(checkpoint, images, tmp_path) -> None:
    first = Detector.load(checkpoint, "cpu", IMG_SIZE, backend="onnxruntime", cache_dir=tmp_path)
    path = first.backend.onnx.path
    path.write_bytes(b"not an onnx model")
    again = Detector.load(checkpoint, "cpu", IMG_SIZE, backend="onnxruntime", cache_dir=tmp_path)
    assert again.backend.name == "onnxruntime"
    assert again.backend.onnx.origin.startswith("exported")
    assert path.read_bytes() != b"not an onnx model"
    assert_same_detections(first.detect(images), again.detect(images))


def test_default_cache_dir_follows_xdg(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert ortb.default_cache_dir() == tmp_path / "yolov5-kserve"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert ortb.default_cache_dir() == tmp_path / "home" / ".cache" / "yolov5-kserve"


# -- CPU quota and parallelism ---------------------------------------------------------------


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_quota(tmp_path) -> None:
    proc = tmp_path / "proc-cgroup"
    _write(proc, "0::/\n")
    _write(tmp_path / "cpu.max", "200000 100000\n")
    assert cgroup_cpu_limit(tmp_path, proc) == 2.0
    _write(tmp_path / "cpu.max", "150000 100000\n")
    assert cgroup_cpu_limit(tmp_path, proc) == 1.5
    _write(tmp_path / "cpu.max", "max 100000\n")
    assert cgroup_cpu_limit(tmp_path, proc) is None


def test_cgroup_v2_quota_of_the_process_own_cgroup(tmp_path) -> None:
    proc = tmp_path / "proc-cgroup"
    _write(proc, "0::/kubepods/pod1/container\n")
    _write(tmp_path / "cpu.max", "max 100000\n")  # the root: unlimited
    _write(tmp_path / "kubepods/pod1/container/cpu.max", "50000 100000\n")
    assert cgroup_cpu_limit(tmp_path, proc) == 0.5


def test_cgroup_v1_quota(tmp_path) -> None:
    proc = tmp_path / "proc-cgroup"
    _write(proc, "4:cpu,cpuacct:/\n")
    _write(tmp_path / "cpu,cpuacct/cpu.cfs_quota_us", "400000\n")
    _write(tmp_path / "cpu,cpuacct/cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_limit(tmp_path, proc) == 4.0
    _write(tmp_path / "cpu,cpuacct/cpu.cfs_quota_us", "-1\n")
    assert cgroup_cpu_limit(tmp_path, proc) is None


def test_no_cgroup_files_means_no_limit(tmp_path) -> None:
    assert cgroup_cpu_limit(tmp_path, tmp_path / "missing") is None


def test_available_cpus_is_the_quota_not_the_core_count(tmp_path) -> None:
    proc = tmp_path / "proc-cgroup"
    _write(proc, "0::/\n")
    cores = len(os.sched_getaffinity(0))
    _write(tmp_path / "cpu.max", "100000 100000\n")
    assert available_cpus(tmp_path, proc) == 1
    _write(tmp_path / "cpu.max", "50000 100000\n")  # half a CPU still runs one thread
    assert available_cpus(tmp_path, proc) == 1
    _write(tmp_path / "cpu.max", f"{(cores + 0.5) * 100000:.0f} 100000\n")  # rounds down
    assert available_cpus(tmp_path, proc) == cores
    _write(tmp_path / "cpu.max", f"{1000 * 100000} 100000\n")  # quota above the cores
    assert available_cpus(tmp_path, proc) == cores


@pytest.mark.parametrize(
    ("cpus", "expected"),
    [
        (1, Parallelism(1, 1, 1)),
        (2, Parallelism(2, 1, 2)),
        (4, Parallelism(4, 1, 4)),
        (8, Parallelism(8, 1, 8)),
        (16, Parallelism(8, 2, 16)),
        (20, Parallelism(6, 3, 20)),
        (64, Parallelism(8, 8, 64)),
    ],
)
def test_stream_count_from_cpus(cpus, expected) -> None:
    assert plan_parallelism(cpus) == expected


def test_stream_overrides() -> None:
    assert plan_parallelism(8, streams=2) == Parallelism(2, 4, 8)
    assert plan_parallelism(8, threads_per_stream=2) == Parallelism(4, 2, 8)
    assert plan_parallelism(8, streams=1) == Parallelism(1, 8, 8)  # no solo lane
    assert plan_parallelism(4, solo_threads=1) == Parallelism(4, 1, 1)
    assert not plan_parallelism(4, solo_threads=1).has_solo_lane
    assert plan_parallelism(4).has_solo_lane
    assert plan_parallelism(16, "cuda") == Parallelism(2, 1, 1)
    assert plan_parallelism(16, "cuda", streams=4) == Parallelism(4, 1, 1)
    with pytest.raises(ValueError, match="streams"):
        Parallelism(0, 1, 1)


# -- torch threads and CUDA staging, tested on the CPU ---------------------------------------


def test_thread_count_is_per_calling_thread() -> None:
    before = torch.get_num_threads()
    seen = {}

    def stream() -> None:
        set_thread_count(1)
        torch.ones(64).sum()
        seen["stream"] = torch.get_num_threads()

    worker = threading.Thread(target=stream)
    worker.start()
    worker.join()
    assert seen["stream"] == 1
    assert torch.get_num_threads() == before


def test_staging_reuses_one_buffer_and_waits_for_the_previous_copy() -> None:
    allocations, waits, events = [], [], []

    def allocate(numel: int) -> torch.Tensor:
        allocations.append(numel)
        return torch.empty(numel)

    def record():
        events.append(len(events))
        return lambda: waits.append(len(waits))

    staging = Staging(allocate, record)
    device, dtype = torch.device("cpu"), torch.float32
    big = np.random.default_rng(0).random((2, 3, 8, 8), dtype=np.float32)
    small = np.random.default_rng(1).random((1, 3, 8, 8), dtype=np.float32)
    first = staging.upload(big, device, dtype).clone()
    second = staging.upload(small, device, dtype).clone()
    third = staging.upload(big, device, dtype)
    np.testing.assert_array_equal(first.numpy(), big)
    np.testing.assert_array_equal(second.numpy(), small)
    np.testing.assert_array_equal(third.numpy(), big)
    assert allocations == [big.size], "one buffer, sized for the largest batch, reused"
    assert waits == [0, 1], "each overwrite waited for the copy before it"
    assert len(events) == 3


def test_cpu_staging_is_a_plain_view() -> None:
    batch = np.zeros((1, 3, 4, 4), np.float32)
    uploaded = Staging.for_device(torch.device("cpu")).upload(
        batch, torch.device("cpu"), torch.float32
    )
    assert uploaded.data_ptr() == torch.from_numpy(batch).data_ptr()  # no copy on the CPU
