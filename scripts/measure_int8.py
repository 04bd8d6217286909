#!/usr/bin/env python3
"""Measure INT8 against fp32: accuracy on the demo model, forward latency on YOLOv5s.

  python scripts/measure_int8.py accuracy --img_size 320 640      # mAP@0.5 and agreement
  python scripts/measure_int8.py latency --img_size 640 --repeats 30

accuracy: the bundled demo checkpoint, calibrated on 40 synthetic scenes of seed 101
(30 calibrate, 10 held back for the self-check), scored on 100 scenes of seed 202 (neither
seed was trained on) with `predictor.evaluate`, fp32 and INT8 through the same Detector;
the agreement is also measured on those 100 scenes, at the self-check's settings.
Extra recipes to compare: `--recipe entropy:decode+head_convs` (method:float groups).

latency: an untrained YOLOv5s (80 classes) saved as train.py does, exported and quantised
the same way (its accuracy means nothing; only its speed does); one ONNX Runtime thread per
session, fp32 and INT8 forward passes (each --recipe too) alternating, median and best of
`--repeats` each.
Data and caches go to --work (default /tmp/int8-measure), never into the repository.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(HERE.parent))

from predictor.agreement import Agreement, compare_detections  # noqa: E402
from predictor.backends.cpu_features import int8_instructions  # noqa: E402
from predictor.backends.int8 import SELF_CHECK_SETTINGS, Recipe, obtain_int8  # noqa: E402
from predictor.backends.onnxruntime_backend import OnnxRuntimeBackend, obtain_onnx  # noqa: E402
from predictor.calibration import find_calibration_set  # noqa: E402
from predictor.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from predictor.detector import Detector  # noqa: E402
from predictor.evaluate import evaluate_folder, labelled_images  # noqa: E402
from predictor.runtime.architecture import build_model, yolov5_spec  # noqa: E402
from predictor.synthetic import write_labelled_folder  # noqa: E402

DEMO = HERE.parent / "model_store" / "yolov5n-shapes.pt"
CALIBRATION_SEED, VALIDATION_SEED = 101, 202


def data(work: Path) -> tuple[Path, Path]:
    calibration, validation = work / "calibration", work / "validation"
    if not calibration.is_dir():
        write_labelled_folder(calibration, CALIBRATION_SEED, 40)
    if not validation.is_dir():
        write_labelled_folder(validation, VALIDATION_SEED, 100)
    return calibration / "images", validation


def accuracy(work: Path, sizes: list[int], recipes: list[Recipe]) -> None:
    calibration_dir, validation = data(work)
    model = load_checkpoint(DEMO, "cpu")
    calibration = find_calibration_set(DEMO, calibration_dir)
    for size in sizes:
        fp32 = Detector(model, size, backend="onnxruntime", cache_dir=work / "cache")
        print(f"{size}: fp32 {evaluate_folder(fp32, validation).summary()}", flush=True)
        for recipe in recipes:
            int8 = obtain_int8(model, (size, size), calibration, work / "cache", recipe)
            detector = Detector(model, size, backend=OnnxRuntimeBackend(int8.onnx))
            result = evaluate_folder(detector, validation)
            images = [item.image for item in labelled_images(validation)]
            agreement = compare_detections(
                fp32.detect(images, SELF_CHECK_SETTINGS),
                detector.detect(images, SELF_CHECK_SETTINGS),
            )
            print(
                f"{size}: int8 {recipe.method} float={'+'.join(recipe.keep_float) or 'none'}: "
                f"{result.summary()}\n    self-check {Agreement(**int8.report['self_check'])}"
                f"\n    on the validation images: {agreement}",
                flush=True,
            )


def latency(work: Path, size: int, repeats: int, recipes: list[Recipe]) -> None:
    calibration_dir, _ = data(work)
    checkpoint = work / "yolov5s-untrained.pt"
    if not checkpoint.is_file():
        save_checkpoint(checkpoint, build_model(yolov5_spec("s", 80)).eval())
    model = load_checkpoint(checkpoint, "cpu")
    calibration = find_calibration_set(checkpoint, calibration_dir)
    fp32 = obtain_onnx(model, (size, size), work / "cache")
    engines = {"fp32": OnnxRuntimeBackend(fp32).engine(threads=1)}
    for recipe in recipes:
        int8 = obtain_int8(model, (size, size), calibration, work / "cache", recipe).onnx
        name = f"int8 float={'+'.join(recipe.keep_float) or 'none'}"
        engines[name] = OnnxRuntimeBackend(int8).engine(threads=1)
    batch = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
    times: dict[str, list[float]] = {name: [] for name in engines}
    for engine in engines.values():
        engine(batch)  # warm-up
    for _ in range(repeats):
        for name, engine in engines.items():
            started = time.perf_counter()
            engine(batch)
            times[name].append((time.perf_counter() - started) * 1000)
    print(f"CPU int8 instructions: {int8_instructions() or 'none'}")
    for name, samples in times.items():
        print(
            f"yolov5s {size} {name}, 1 thread: median {statistics.median(samples):.1f} ms, "
            f"best {min(samples):.1f} ms ({repeats} runs)"
        )
    for name, samples in times.items():
        if name != "fp32":
            ratio = statistics.median(times["fp32"]) / statistics.median(samples)
            best = min(times["fp32"]) / min(samples)
            print(f"fp32 / {name}: {ratio:.2f}x by median, {best:.2f}x by best")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("what", choices=("accuracy", "latency"))
    parser.add_argument("--img_size", type=int, nargs="+", default=[320, 640])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--recipe", action="append", default=[], help="method:group+group")
    parser.add_argument("--work", type=Path, default=Path("/tmp/int8-measure"))
    args = parser.parse_args(argv)
    recipes = [Recipe()]
    for text in args.recipe:
        method, _, groups = text.partition(":")
        recipes.append(Recipe(method, tuple(g for g in groups.split("+") if g)))
    if args.what == "accuracy":
        accuracy(args.work, args.img_size, recipes)
    else:
        for size in args.img_size:
            latency(args.work, size, args.repeats, recipes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
