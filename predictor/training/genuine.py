"""Genuine-format YOLOv5s checkpoints for the benchmark and the backend checks.

    python -m predictor.training.genuine                  # .cache/checkpoints/yolov5s-shapes/
    python -m predictor.training.genuine --out DIR --threads 1

Trains a yolov5s (YOLOv5's full s architecture, 3 classes) on the synthetic shapes with the
project's trainer and writes both files YOLOv5's `train.py` leaves behind:

- `last.pt`: as written mid-training, after the last epoch: the training weights under
  `model`, the EMA under `ema` (both fp16), the optimizer state, `updates`, `epoch`;
- `best.pt`: stripped as `train.py` strips it: the EMA under `model`, `ema` None,
  no optimizer, `epoch` -1, fp16;
- `untrained.pt`: the same architecture freshly initialised as YOLOv5 initialises it,
  stripped (`--untrained-only` writes just this one, in seconds).

A short run (minutes on one thread): the detections are real but far from converged,
which is what a checkpoint a few epochs into training looks like. The files are large
(~14 MB each): keep them out of git (`.cache/` is ignored).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..checkpoint import save_checkpoint
from .trainer import TrainConfig, new_model, train

DEFAULT_DIR = Path(".cache") / "checkpoints" / "yolov5s-shapes"


def config(threads: int | None) -> TrainConfig:
    return TrainConfig(
        size="s",
        img_size=256,
        epochs=4,
        batch_size=8,
        train_images=600,
        val_images=48,
        epoch_eval_images=0,
        warmup_min_iters=30,
        lr0=0.003,
        threads=threads,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m predictor.training.genuine",
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_DIR, help="directory to write")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default: 1)")
    parser.add_argument(
        "--untrained-only", action="store_true", help="write untrained.pt only (no training)"
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(args.out / "untrained.pt", new_model(config(args.threads)))
    print(f"wrote {args.out / 'untrained.pt'}")
    if args.untrained_only:
        return 0
    result = train(
        config(args.threads),
        args.out / "best.pt",
        log=lambda line: print(line, flush=True),
        last=args.out / "last.pt",
    )
    if result.evaluation is not None:
        print(f"best.pt: {result.evaluation.summary()}")
    print(f"wrote {args.out / 'last.pt'} and {args.out / 'best.pt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
