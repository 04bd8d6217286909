#!/usr/bin/env python3
"""Make the bundled demo detector: YOLOv5n trained from scratch on synthetic shapes.

Generates a synthetic data set (circles, squares and triangles of random colours and sizes
on textured, noisy backgrounds; images of varied sizes and aspect ratios), trains a
yolov5n-architecture detector on CPU with a YOLOv5-style loss, evaluates mAP@0.5 on
held-out generated images through the same `Detector` the server uses, and saves the EMA
weights as a genuine YOLOv5 checkpoint (fp16 modules, class names) that YOLOv5's own tools
can load too.

  python model_store/make_demo_model.py                     # the shipped model (~35 min)
  python model_store/make_demo_model.py --threads 1         # leave the other cores free
  python model_store/make_demo_model.py --smoke             # a tiny run (seconds)
  python model_store/make_demo_model.py --write-samples samples   # the sample images

Serve the result with `--img_size` equal to `--img-size` here (320 by default).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(HERE.parent))

from predictor.synthetic import write_samples  # noqa: E402
from predictor.training.trainer import TrainConfig, train  # noqa: E402

DEFAULT_OUTPUT = HERE / "yolov5n-shapes.pt"
SMOKE = {"img_size": 128, "epochs": 2, "train_images": 24, "val_images": 8, "batch_size": 8}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help=f"checkpoint to write (default: {DEFAULT_OUTPUT}; with --smoke a temporary file). "
        "Keep exactly one .pt in model_store/: the server serves the single checkpoint there.",
    )
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument(
        "--img-size",
        type=int,
        default=defaults.img_size,
        help="square training size; serve with the same --img_size (default: %(default)s)",
    )
    parser.add_argument(
        "--train-images",
        type=int,
        default=defaults.train_images,
        help="generated training scenes (default: %(default)s)",
    )
    parser.add_argument(
        "--val-images",
        type=int,
        default=defaults.val_images,
        help="held-out scenes for the final mAP (default: %(default)s)",
    )
    parser.add_argument(
        "--epoch-eval-images",
        type=int,
        default=defaults.epoch_eval_images,
        help="held-out scenes evaluated after each epoch, 0 for none (default: %(default)s)",
    )
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument(
        "--seed", type=int, default=defaults.seed, help="weights and augmentation seed"
    )
    parser.add_argument(
        "--data-seed", type=int, default=defaults.data_seed, help="training scenes seed"
    )
    parser.add_argument(
        "--val-seed",
        type=int,
        default=defaults.val_seed,
        help="held-out scenes seed (must differ from --data-seed)",
    )
    parser.add_argument("--lr0", type=float, default=defaults.lr0, help="initial learning rate")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch and OpenCV (default: all cores)",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a tiny run to check the pipeline: "
        + ", ".join(f"{k.replace('_', '-')} {v}" for k, v in SMOKE.items()),
    )
    parser.add_argument(
        "--write-samples",
        type=Path,
        metavar="DIR",
        help="only write the sample images and their labels.json to DIR, then exit",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.write_samples:
        for record in write_samples(args.write_samples):
            print(f"{args.write_samples / record['file']}: {len(record['objects'])} objects")
        return 0
    if args.data_seed == args.val_seed:
        print("--data-seed and --val-seed must differ (held-out means unseen)", file=sys.stderr)
        return 2
    config = TrainConfig(
        img_size=args.img_size,
        epochs=args.epochs,
        batch_size=args.batch_size,
        train_images=args.train_images,
        val_images=args.val_images,
        epoch_eval_images=args.epoch_eval_images,
        seed=args.seed,
        data_seed=args.data_seed,
        val_seed=args.val_seed,
        lr0=args.lr0,
        threads=args.threads,
    )
    output = args.output
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(config, key, value)
        config.epoch_eval_images = 0
        output = output or Path(tempfile.gettempdir()) / "yolov5n-shapes-smoke.pt"
    output = output or DEFAULT_OUTPUT
    result = train(config, output, log=lambda line: print(line, flush=True))
    if result.evaluation is not None:
        print(
            f"mAP@0.5 {result.evaluation.map50:.4f} on {result.evaluation.images} held-out images"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
