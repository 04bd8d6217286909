"""Train a YOLOv5 detector on the synthetic shapes data set, on CPU, from scratch.

SGD with Nesterov momentum (or AdamW), a linear warmup of learning rate and momentum (the
bias learning rate warms down from `warmup_bias_lr`), then a cosine or linear decay to
`lr0 * lrf`; an exponential moving average of the weights whose decay ramps up as
`decay * (1 - exp(-updates / tau))`, which is what gets saved and evaluated.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from ..checkpoint import save_checkpoint
from ..detector import DetectionSettings, Detector
from ..runtime.architecture import build_model, yolov5_spec
from ..runtime.detection import DetectionModel
from ..synthetic import CLASS_NAMES, Scene, SceneConfig, generate_scene
from .data import AugmentConfig, TrainingSet
from .loss import YoloLoss
from .metrics import APAccumulator, EvaluationResult, LabelledImage

Log = Callable[[str], None]


@dataclass
class TrainConfig:
    size: str = "n"  # YOLOv5 model size (depth/width multiples of yolov5{size})
    img_size: int = 320
    epochs: int = 13
    batch_size: int = 16
    accumulate: int = 1  # optimizer step every `accumulate` batches
    train_images: int = 3000
    val_images: int = 500  # held-out scenes for the final evaluation
    epoch_eval_images: int = 100  # quick evaluation after each epoch (0: none)
    data_seed: int = 1  # training scenes
    val_seed: int = 2  # held-out scenes: a different seed, so different scenes
    seed: int = 0  # weights initialisation and augmentation
    optimizer: str = "AdamW"  # or "SGD" (with lr0 about 0.01: slower from scratch)
    lr0: float = 0.002
    lrf: float = 0.01  # final learning rate = lr0 * lrf
    schedule: str = "cosine"  # or "linear"
    momentum: float = 0.9  # SGD momentum / Adam beta1
    weight_decay: float = 5e-4  # per 64 images, as YOLOv5's nominal batch size
    warmup_epochs: float = 1.0
    warmup_min_iters: int = 100
    warmup_momentum: float = 0.8
    warmup_bias_lr: float = 0.0  # YOLOv5 uses 0.1 with SGD
    # YOLOv5 uses 0.9999 and 2000 for runs of many thousand updates; a short run averages
    # over its last ~500 updates instead
    ema_decay: float = 0.998
    ema_tau: float = 200.0
    grad_clip: float = 10.0
    threads: int | None = None  # torch / OpenCV threads; None: all cores
    names: tuple[str, ...] = CLASS_NAMES
    scene: SceneConfig = field(default_factory=SceneConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    eval_conf: float = 0.001
    eval_iou: float = 0.6
    max_steps: int | None = None  # stop after this many batches (smoke runs)


@dataclass
class TrainResult:
    output: Path
    losses: list[list[float]]  # per batch: box, obj, cls (per-image terms, gains applied)
    epoch_maps: list[float]
    evaluation: EvaluationResult | None
    train_seconds: float
    total_seconds: float


class ModelEMA:
    """An exponential moving average of a model's parameters and buffers."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000.0) -> None:
        self.ema = copy.deepcopy(model).eval()
        for parameter in self.ema.parameters():
            parameter.requires_grad_(False)
        self.decay = decay
        self.tau = tau
        self.updates = 0

    def current_decay(self) -> float:
        return self.decay * (1 - math.exp(-self.updates / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.current_decay()
        current = model.state_dict()
        for name, value in self.ema.state_dict().items():
            if value.dtype.is_floating_point:
                value.mul_(d).add_(current[name].detach(), alpha=1 - d)


def set_threads(threads: int | None) -> int:
    threads = threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    return threads


def new_model(config: TrainConfig) -> DetectionModel:
    torch.manual_seed(config.seed)
    spec = yolov5_spec(config.size, nc=len(config.names))
    return build_model(spec, list(config.names))


def parameter_groups(model: nn.Module) -> tuple[list, list, list]:
    """(weights with decay, batch-norm weights, biases): only the first is decayed."""
    decayed, norm_weights, biases = [], [], []
    for module in model.modules():
        for name, parameter in module.named_parameters(recurse=False):
            if name == "bias":
                biases.append(parameter)
            elif isinstance(module, nn.BatchNorm2d):
                norm_weights.append(parameter)
            else:
                decayed.append(parameter)
    return decayed, norm_weights, biases


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    decayed, norm_weights, biases = parameter_groups(model)
    weight_decay = config.weight_decay * config.batch_size * config.accumulate / 64
    if config.optimizer == "SGD":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(
            biases, lr=config.lr0, momentum=config.momentum, nesterov=True
        )
    elif config.optimizer == "AdamW":
        optimizer = torch.optim.AdamW(
            biases, lr=config.lr0, betas=(config.momentum, 0.999), weight_decay=0.0
        )
    else:
        raise ValueError(f"unknown optimizer {config.optimizer!r} (SGD or AdamW)")
    optimizer.add_param_group({"params": decayed, "weight_decay": weight_decay})
    optimizer.add_param_group({"params": norm_weights, "weight_decay": 0.0})
    for index, group in enumerate(optimizer.param_groups):
        group["is_bias"] = index == 0
    return optimizer


def lr_factor(progress: float, config: TrainConfig) -> float:
    """Multiplier of lr0 at `progress` in [0, 1] of training."""
    if config.schedule == "cosine":
        return ((1 - math.cos(progress * math.pi)) / 2) * (config.lrf - 1) + 1
    if config.schedule == "linear":
        return (1 - progress) * (1.0 - config.lrf) + config.lrf
    raise ValueError(f"unknown schedule {config.schedule!r} (cosine or linear)")


def _set_hyper(
    optimizer: torch.optim.Optimizer, step: int, total: int, warmup: int, config: TrainConfig
) -> float:
    target = config.lr0 * lr_factor(step / max(total, 1), config)
    key = "momentum" if config.optimizer == "SGD" else "betas"
    for group in optimizer.param_groups:
        if step < warmup:
            start = config.warmup_bias_lr if group["is_bias"] else 0.0
            group["lr"] = float(np.interp(step, [0, warmup], [start, target]))
            momentum = float(
                np.interp(step, [0, warmup], [config.warmup_momentum, config.momentum])
            )
        else:
            group["lr"] = target
            momentum = config.momentum
        if key == "momentum":
            group["momentum"] = momentum
        else:
            group["betas"] = (momentum, group["betas"][1])
    return target if step >= warmup else optimizer.param_groups[1]["lr"]


def validation_scenes(config: TrainConfig, count: int) -> Iterator[Scene]:
    for index in range(count):
        yield generate_scene(config.val_seed, index, config.scene)


def evaluate_detector(
    detector: Detector,
    scenes: Iterable[LabelledImage],
    settings: DetectionSettings,
    batch_size: int = 16,
) -> EvaluationResult:
    """mAP of a detector over scenes, fed one batch of images at a time."""
    accumulator = APAccumulator(detector.names)
    pending: list[LabelledImage] = []

    def flush() -> None:
        results = detector.detect([s.image for s in pending], settings)
        for scene, found in zip(pending, results, strict=True):
            accumulator.add(found.boxes, found.scores, found.class_ids, scene.boxes, scene.classes)
        pending.clear()

    for scene in scenes:
        pending.append(scene)
        if len(pending) == batch_size:
            flush()
    if pending:
        flush()
    return accumulator.result()


def evaluate_checkpoint(
    path: str | Path, config: TrainConfig, scenes: Sequence[Scene] | Iterator[Scene] | None = None
) -> EvaluationResult:
    """Load a checkpoint exactly as the server does (`Detector`) and measure its mAP."""
    detector = Detector.load(path, device="cpu", img_size=config.img_size)
    settings = DetectionSettings(conf_threshold=config.eval_conf, iou_threshold=config.eval_iou)
    if scenes is None:
        scenes = validation_scenes(config, config.val_images)
    return evaluate_detector(detector, scenes, settings)


def train(
    config: TrainConfig, output: str | Path, log: Log = print, last: str | Path | None = None
) -> TrainResult:
    """Generate the data, train, save the EMA weights to `output`, evaluate them.

    `output` is stripped as train.py strips `best.pt` (`model` = the EMA, no `ema`, no
    optimizer); `last`, when given, is written after every epoch as train.py writes
    `last.pt` mid-training: the training weights under `model`, the EMA under `ema`
    (both fp16), the optimizer state and the EMA's update count.
    """
    started = time.time()
    threads = set_threads(config.threads)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    log(
        f"yolov5{config.size} on {len(config.names)} classes {list(config.names)}, "
        f"img {config.img_size}, {config.epochs} epochs x {config.train_images} images, "
        f"batch {config.batch_size}, {threads} thread(s)"
    )

    t0 = time.time()
    dataset = TrainingSet(
        config.data_seed, config.train_images, config.img_size, config.scene, config.augment
    )
    quick_eval = list(validation_scenes(config, min(config.epoch_eval_images, config.val_images)))
    log(f"generated {len(dataset)} training scenes in {time.time() - t0:.0f}s")

    model = new_model(config)
    model.train()
    criterion = YoloLoss(model.head, config.img_size)
    optimizer = make_optimizer(model, config)
    ema = ModelEMA(model, config.ema_decay, config.ema_tau)
    rng = np.random.default_rng(config.seed)

    per_epoch = dataset.batches_per_epoch(config.batch_size)
    if per_epoch == 0:
        raise ValueError(f"{len(dataset)} training images is less than one batch")
    total = per_epoch * config.epochs
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    warmup = min(max(round(config.warmup_epochs * per_epoch), config.warmup_min_iters), total // 2)
    losses: list[list[float]] = []
    epoch_maps: list[float] = []
    opt = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("scene", "augment")}
    opt["names"] = list(config.names)
    step = 0
    train_start = time.time()
    last_log = train_start
    for epoch in range(config.epochs):
        if step >= total:
            break
        model.train()
        epoch_losses = []
        for images, targets in dataset.batches(config.batch_size, rng):
            if step >= total:
                break
            lr = _set_hyper(optimizer, step, total, warmup, config)
            loss, items = criterion(model(images), targets)
            (loss / config.accumulate).backward()
            if (step + 1) % config.accumulate == 0 or step + 1 == total:
                if config.grad_clip:
                    nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                ema.update(model)
            step += 1
            losses.append(items.tolist())
            epoch_losses.append(items)
            now = time.time()
            if now - last_log >= 30 or step == total or len(epoch_losses) == per_epoch:
                last_log = now
                mean = torch.stack(epoch_losses).mean(0)
                rate = step * config.batch_size / (now - train_start)
                eta = (total - step) * (now - train_start) / step
                log(
                    f"epoch {epoch + 1}/{config.epochs} batch {len(epoch_losses)}/{per_epoch}  "
                    f"box {mean[0]:.4f} obj {mean[1]:.4f} cls {mean[2]:.4f}  lr {lr:.5f}  "
                    f"{rate:.1f} img/s  elapsed {_clock(now - started)}  eta {_clock(eta)}"
                )
        if quick_eval and step < total:
            result = _evaluate_weights(ema.ema, config, quick_eval)
            epoch_maps.append(result.map50)
            log(f"epoch {epoch + 1} EMA on {len(quick_eval)} held-out images: {result.summary()}")
        if last is not None:
            _save_last(Path(last), model, ema, optimizer, epoch, opt)
    train_seconds = time.time() - train_start

    _save(output, ema.ema, opt)
    log(f"saved EMA weights to {output} ({output.stat().st_size / 1e6:.2f} MB)")
    evaluation = None
    if config.val_images:
        t0 = time.time()
        evaluation = evaluate_checkpoint(output, config)
        log(
            f"held-out evaluation (conf {config.eval_conf}, iou {config.eval_iou}) "
            f"in {time.time() - t0:.0f}s: {evaluation.summary()}"
        )
        _save(output, ema.ema, opt, evaluation)
    total_seconds = time.time() - started
    log(f"done in {_clock(total_seconds)} (training {_clock(train_seconds)})")
    return TrainResult(output, losses, epoch_maps, evaluation, train_seconds, total_seconds)


def _evaluate_weights(
    model: DetectionModel, config: TrainConfig, scenes: Sequence[Scene]
) -> EvaluationResult:
    """Evaluate weights as they would be saved: through a checkpoint file and `Detector`."""
    with tempfile.TemporaryDirectory(prefix="yolov5-train-") as scratch:
        path = Path(scratch) / "epoch.pt"
        save_checkpoint(path, model)
        return evaluate_checkpoint(path, config, scenes)


def _save(
    output: Path, model: DetectionModel, opt: dict, evaluation: EvaluationResult | None = None
) -> None:
    extra: dict = {"opt": opt}
    if evaluation is not None:
        extra["demo_metrics"] = {
            "map50": evaluation.map50,
            "map50_95": evaluation.map50_95,
            "images": evaluation.images,
        }
    partial = output.with_name(output.name + ".partial")
    save_checkpoint(partial, model, epoch=-1, extra=extra)
    partial.replace(output)


def _save_last(
    path: Path,
    model: DetectionModel,
    ema: ModelEMA,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    opt: dict,
) -> None:
    extra = {"updates": ema.updates, "optimizer": optimizer.state_dict(), "opt": opt}
    partial = path.with_name(path.name + ".partial")
    save_checkpoint(partial, model, ema=ema.ema, epoch=epoch, extra=extra)
    partial.replace(path)


def _clock(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s"
