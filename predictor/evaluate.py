"""mAP@0.5 of a checkpoint, served fp32 or INT8, on a labelled image folder (YOLO format).

  python -m predictor.evaluate model.pt DATA --img_size 320
  python -m predictor.evaluate model.pt DATA --precision int8 --calibration_dir calib/

DATA holds images/ and labels/: for images/NAME.jpg, labels/NAME.txt has one line per
object, `class cx cy w h`, normalised to the image's width and height (an image without a
label file has no objects). Detections come from the same `Detector` the server uses
(letterbox, ONNX Runtime, NMS), scored at conf 0.001 and NMS IoU 0.6 as YOLOv5's val.py.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .backends import BackendError
from .calibration import CalibrationError, image_files
from .checkpoint import CheckpointError
from .detector import DetectionSettings, Detector
from .imaging import ImageDecodeError, decode_image
from .training.metrics import EvaluationResult
from .training.trainer import evaluate_detector

VAL_SETTINGS = DetectionSettings(conf_threshold=0.001, iou_threshold=0.6)


@dataclass
class LabelledFile:
    image: np.ndarray  # H x W x 3 BGR uint8
    boxes: np.ndarray  # (n, 4) x1, y1, x2, y2 pixels
    classes: np.ndarray  # (n,) int64


def labelled_images(directory: Path) -> Iterator[LabelledFile]:
    images = directory / "images"
    if not images.is_dir():
        raise ValueError(f"{directory}: no images/ folder (expected images/ and labels/)")
    for path in image_files(images):
        image = decode_image(path.read_bytes())
        label = directory / "labels" / f"{path.stem}.txt"
        lines = label.read_text().split("\n") if label.is_file() else []
        try:
            rows = np.array([[float(v) for v in line.split()] for line in lines if line.strip()])
            rows = rows.reshape(-1, 5)
        except ValueError as error:
            raise ValueError(f"{label}: expected 'class cx cy w h' per line") from error
        height, width = image.shape[:2]
        centre, size = rows[:, 1:3], rows[:, 3:5]
        boxes = np.concatenate((centre - size / 2, centre + size / 2), 1) * ([width, height] * 2)
        yield LabelledFile(image, boxes.astype(np.float32), rows[:, 0].astype(np.int64))


def make_detector(
    checkpoint: Path,
    img_size: int,
    precision: str,
    calibration_dir: Path | None = None,
    cache_dir: str | None = None,
    min_agreement: float | None = None,
) -> Detector:
    """A CPU Detector on ONNX Runtime, built as the server builds it: the fp32 export, or
    its INT8 model (calibrated and self-checked)."""
    return Detector.load(
        checkpoint,
        "cpu",
        img_size,
        backend="onnxruntime",
        cache_dir=cache_dir,
        precision=precision,
        calibration_dir=calibration_dir,
        int8_min_agreement=min_agreement,
    )


def evaluate_folder(detector: Detector, directory: Path) -> EvaluationResult:
    return evaluate_detector(detector, labelled_images(directory), VAL_SETTINGS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m predictor.evaluate",
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("checkpoint", type=Path, help="YOLOv5 .pt checkpoint")
    parser.add_argument("data", type=Path, help="folder with images/ and labels/")
    parser.add_argument("--img_size", type=int, default=640, help="default: %(default)s")
    parser.add_argument("--precision", choices=("fp32", "int8"), default="fp32")
    parser.add_argument(
        "--calibration_dir",
        type=Path,
        help="int8: calibration images (default: calibration/ beside the checkpoint)",
    )
    parser.add_argument(
        "--int8_min_agreement",
        type=float,
        help="int8: refuse below this agreement with fp32 (default: 0.95)",
    )
    parser.add_argument(
        "--cache_dir", help="export cache (default: ~/.cache/yolov5-kserve; '' for none)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        detector = make_detector(
            args.checkpoint,
            args.img_size,
            args.precision,
            args.calibration_dir,
            args.cache_dir,
            args.int8_min_agreement,
        )
        result = evaluate_folder(detector, args.data)
    except (CheckpointError, CalibrationError, BackendError, ImageDecodeError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{args.precision} at {args.img_size}: {result.summary()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
