"""Build the INT8 model of a checkpoint ahead of time, beside the checkpoint.

  python -m predictor.quantize model_store/yolov5n-shapes.pt --calibration_dir calib/ --img_size 320

Calibrates ONNX Runtime's static INT8 quantisation of the checkpoint's fp32 export on the
images of --calibration_dir (default: calibration/ beside the checkpoint), preprocessed with
the server's letterbox at --img_size; every 4th image (by name) is held back to compare the
INT8 model's detections with fp32's. Writes NAME.int8-HxW.onnx and its report
NAME.int8-HxW.json (key and self-check) beside the checkpoint, where a server started with
--precision int8 loads it instead of calibrating at start-up: put both files in the model
directory (the storageUri) of every replica. Refuses, writing nothing beside the
checkpoint, when the agreement with fp32 is below --int8_min_agreement.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .backends import BackendError, resolve_cache_dir
from .backends.int8 import (
    DEFAULT_MIN_AGREEMENT,
    obtain_int8,
    prebuilt_path,
    require_agreement,
    save_int8,
)
from .calibration import find_calibration_set
from .checkpoint import CheckpointError, load_checkpoint
from .imaging import round_up_to_stride


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m predictor.quantize",
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("checkpoint", type=Path, help="YOLOv5 .pt checkpoint")
    parser.add_argument(
        "--calibration_dir",
        type=Path,
        help="images like those the model will serve (default: calibration/ beside the "
        "checkpoint); 50 or more is better",
    )
    parser.add_argument(
        "--img_size", type=int, default=640, help="the size the server uses (default: 640)"
    )
    parser.add_argument(
        "--int8_min_agreement",
        type=float,
        default=DEFAULT_MIN_AGREEMENT,
        help="refuse below this F1 of INT8 against fp32 detections (default: %(default)s)",
    )
    parser.add_argument(
        "--cache_dir",
        help="where the fp32 export and INT8 models are cached (default: "
        "~/.cache/yolov5-kserve; '' for none)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        model = load_checkpoint(args.checkpoint, "cpu")
        size = round_up_to_stride(args.img_size, model.stride)
        calibration = find_calibration_set(args.checkpoint, args.calibration_dir)
        int8 = obtain_int8(model, (size, size), calibration, resolve_cache_dir(args.cache_dir))
        print(json.dumps(int8.report["self_check"], indent=2))
        require_agreement(int8, args.int8_min_agreement)
        path = prebuilt_path(model.source, (size, size))
        save_int8(int8, path)
    except (CheckpointError, BackendError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {path} and {path.with_suffix('.json')} ({int8.onnx.origin})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
