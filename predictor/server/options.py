"""Every serving option: what it means, its command-line flag, and its validation.

The dataclasses validate themselves in `__post_init__`, so the command line and a model's
config.yaml (`with_config_file`) accept and refuse the same values. kserve's own flags
(ports, gRPC, logging) come from its parser, which `cli.build_parser` extends.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import yaml

from ..backends import BACKENDS, PRECISIONS, available_cpus
from ..backends.int8 import DEFAULT_MIN_AGREEMENT
from ..checkpoint import CheckpointError
from ..detector import DetectionSettings
from ..imaging import LetterboxMode
from .limits import Limits

# Defaults by device. CPU: batch 1 (batching did not pay on a small CPU: batch 4 was slower
# per image than batch 1), parallel streams instead. CUDA: batches fill the GPU.
CPU_BATCHING = (1, 0.0)
CUDA_BATCHING = (8, 2.0)
CONFIG_FILE = "config.yaml"  # beside a checkpoint, or in a model's directory
_OPTION_KEYS = {"img_size", "letterbox", "precision", "calibration_dir", "int8_min_agreement"}
_SETTING_KEYS = {"conf_threshold", "iou_threshold", "max_det"}
MIN_IMG_SIZE = 32
DEFAULT_MODEL_DIR = "/mnt/models"  # where KServe's storage initializer puts storageUri
DEFAULT_MODEL_NAME = "yolov5"  # a single checkpoint's name when --model_name is not given
LETTERBOX_MODES: tuple[str, ...] = get_args(LetterboxMode)


@dataclass(frozen=True)
class PerformanceOptions:
    """How inference runs; None = chosen from the device and the CPU quota."""

    backend: str = "auto"
    cache_dir: str | None = None
    streams: int | None = None
    threads_per_stream: int | None = None
    solo_threads: int | None = None
    max_batch_size: int | None = None
    max_batch_delay_ms: float | None = None

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        for name in ("streams", "threads_per_stream", "solo_threads", "max_batch_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer or auto, got {value!r}")
        delay = self.max_batch_delay_ms
        if delay is not None and not delay >= 0:
            raise ValueError(f"max_batch_delay_ms must be >= 0 or auto, got {delay!r}")


@dataclass(frozen=True)
class ServingOptions:
    """One model version's settings (the command line's, overridden by its config.yaml)."""

    img_size: int = 640
    letterbox: LetterboxMode = "square"
    device: str = "auto"
    defaults: DetectionSettings = field(default_factory=DetectionSettings)
    limits: Limits = field(default_factory=Limits)
    decode_threads: int | None = None  # None: one per CPU of the cgroup quota
    performance: PerformanceOptions = field(default_factory=PerformanceOptions)
    class_names: tuple[str, ...] | None = None  # overrides the checkpoint's names
    precision: str = "auto"  # see predictor.backends.PRECISIONS
    calibration_dir: str | None = None  # None: calibration/ beside the checkpoint
    int8_min_agreement: float = DEFAULT_MIN_AGREEMENT

    def __post_init__(self) -> None:
        if (
            not isinstance(self.img_size, int)
            or isinstance(self.img_size, bool)
            or self.img_size < MIN_IMG_SIZE
        ):
            raise ValueError(
                f"img_size must be an integer >= {MIN_IMG_SIZE}, got {self.img_size!r}"
            )
        if self.letterbox not in LETTERBOX_MODES:
            raise ValueError(
                f"letterbox must be {' or '.join(LETTERBOX_MODES)}, got {self.letterbox!r}"
            )
        if self.decode_threads is not None and self.decode_threads < 1:
            raise ValueError(f"decode_threads must be at least 1, got {self.decode_threads}")
        if self.class_names is not None and not all(isinstance(n, str) for n in self.class_names):
            raise ValueError("names must be a list of class names or a {id: name} mapping")
        self._check_precision()

    def _check_precision(self) -> None:
        """What can be refused before loading; what depends on the resolved device or the
        model is refused by `create_backend` (the same rules)."""
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"
            )
        agreement = self.int8_min_agreement
        if (
            isinstance(agreement, bool)
            or not isinstance(agreement, int | float)
            or not 0 <= agreement <= 1
        ):
            raise ValueError(f"int8_min_agreement must be in [0, 1], got {agreement!r}")
        if self.calibration_dir is not None and not isinstance(self.calibration_dir, str):
            raise ValueError(f"calibration_dir must be a path, got {self.calibration_dir!r}")
        if self.precision == "fp16" and self.device == "cpu":
            raise ValueError("precision fp16 runs on CUDA only (use fp32 or int8 on the CPU)")
        if self.precision != "int8":
            return
        if self.device.startswith("cuda"):
            raise ValueError(
                f"precision int8 runs on the CPU only, not on device {self.device} "
                "(use --device cpu, or precision fp16 on a GPU)"
            )
        if self.performance.backend == "torch":
            raise ValueError(
                "precision int8 runs on ONNX Runtime; backend torch cannot serve it "
                "(use --backend auto or onnxruntime)"
            )
        if self.letterbox == "rect":
            raise ValueError(
                "precision int8 needs letterbox square: the INT8 model has one input shape"
            )

    @property
    def decode_thread_count(self) -> int:
        """Threads that decode and letterbox images: the flag, or the cgroup's CPU budget
        (decoding runs while the streams wait for work, so it gets every CPU)."""
        return self.decode_threads or available_cpus()


def with_config_file(directory: Path, base: ServingOptions) -> ServingOptions:
    """`base` overridden by `directory`/config.yaml, if there is one (CheckpointError names
    the file and the bad setting)."""
    path = directory / CONFIG_FILE
    if not path.is_file():
        return base
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise CheckpointError(f"{path}: not valid YAML ({error})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a mapping of settings")
    unknown = set(config) - _OPTION_KEYS - _SETTING_KEYS - {"names"}
    if unknown:
        allowed = sorted(_OPTION_KEYS | _SETTING_KEYS | {"names"})
        raise CheckpointError(f"{path}: unknown settings {sorted(unknown)}; allowed: {allowed}")
    calibration = config.get("calibration_dir")
    if isinstance(calibration, str):  # relative to the model's directory, like the checkpoint
        config["calibration_dir"] = str(directory / calibration)
    try:
        return apply_config(base, config)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: {error}") from None


def apply_config(base: ServingOptions, config: dict[str, Any]) -> ServingOptions:
    """`base` with a config.yaml's settings; ValueError or TypeError for a bad value."""
    settings = {k: config[k] for k in _SETTING_KEYS & set(config)}
    defaults: DetectionSettings = dataclasses.replace(base.defaults, **settings)
    options = {k: config[k] for k in _OPTION_KEYS & set(config)}
    if "names" in config:
        names = config["names"]
        if isinstance(names, dict):
            names = [names[k] for k in sorted(names)]
        if not isinstance(names, list):
            raise ValueError("names must be a list of class names or a {id: name} mapping")
        options["class_names"] = tuple(names)
    return dataclasses.replace(base, defaults=defaults, **options)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Our flags (kserve's are on its parser, the parent of ours)."""
    defaults = DetectionSettings()
    group = parser.add_argument_group("YOLOv5")
    group.add_argument(
        "--model_dir",
        default=DEFAULT_MODEL_DIR,
        help="a checkpoint file; a directory holding one (KServe's storage initializer puts "
        "storageUri content in /mnt/models); or a repository: one subdirectory per model, "
        "<name>/<checkpoint> or <name>/<version>/<checkpoint>, each with an optional "
        "config.yaml (img_size, letterbox, precision, calibration_dir, int8_min_agreement, "
        "conf_threshold, iou_threshold, max_det, names). "
        "TorchServe archives (.mar, .tar.gz/.tgz, no-archive directories) are models too, "
        "alone or in the directory: each is served under its manifest's model name and "
        f"version. --model_name names a single checkpoint (default {DEFAULT_MODEL_NAME}) "
        "and renames the model of a --model_dir that holds a single archive",
    )
    group.add_argument("--img_size", type=int, default=640, help="network input size in pixels")
    group.add_argument(
        "--letterbox",
        choices=LETTERBOX_MODES,
        default="square",
        help="square: pad to img_size x img_size (batchable); rect: pad only to a multiple "
        "of the stride, like YOLOv5's detect.py",
    )
    group.add_argument("--conf_threshold", type=float, default=defaults.conf_threshold)
    group.add_argument("--iou_threshold", type=float, default=defaults.iou_threshold)
    group.add_argument("--max_det", type=int, default=defaults.max_det)
    group.add_argument(
        "--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N"
    )
    group.add_argument(
        "--max_loaded_models",
        type=int,
        default=16,
        help="most models loaded at once (startup and POST /v2/repository/models/NAME/load)",
    )
    group.add_argument(
        "--kserve_version_check",
        choices=("strict", "off"),
        default="strict",
        help="strict: refuse to start with a kserve other than the one our compatibility "
        "layer was written for; off: try anyway",
    )
    _add_limit_arguments(parser)
    _add_performance_arguments(parser)
    _add_precision_arguments(parser)
    _add_torchserve_arguments(parser)
    parser.add_argument(
        "--log_format",
        choices=("json", "text"),
        default="json",
        help="json: one JSON object per line with the request id; text: KServe's format",
    )


def _add_torchserve_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("TorchServe compatibility (docs/torchserve.md)")
    group.add_argument(
        "--torchserve_api",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="serve TorchServe's inference API (GET /ping, POST/PUT /predictions/MODEL[/VERSION]) "
        "and its read-only GET /models[/MODEL[/VERSION]] on the HTTP port, beside V2 and V1",
    )


def _add_limit_arguments(parser: argparse.ArgumentParser) -> None:
    limits = Limits()
    group = parser.add_argument_group(
        "request limits (over a limit: HTTP 413 / gRPC INVALID_ARGUMENT)"
    )
    group.add_argument(
        "--max_request_bytes",
        type=int,
        default=limits.max_request_bytes,
        help="largest HTTP request body or gRPC request message (unless "
        "--grpc_max_receive_message_length is given)",
    )
    group.add_argument(
        "--max_images", type=int, default=limits.max_images, help="images per request"
    )
    group.add_argument(
        "--max_image_pixels",
        type=int,
        default=limits.max_image_pixels,
        help="width x height of one image, checked from its header before decoding",
    )
    group.add_argument(
        "--max_batch_decoded_bytes",
        type=int,
        default=limits.max_batch_decoded_bytes,
        help="decoded size of all images in one request",
    )


def _add_performance_arguments(parser: argparse.ArgumentParser) -> None:
    """--backend, --cache_dir, --streams, --threads_per_stream, --solo_threads,
    --max_batch_size, --max_batch_delay_ms, --decode_threads ("auto": from the device and
    the CPU quota)."""
    from ..backends import resolve_cache_dir

    group = parser.add_argument_group("performance")
    group.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="inference runtime: auto (onnxruntime on CPU, torch on CUDA), torch (the "
        "reference), onnxruntime (the checkpoint is exported to ONNX at load time and "
        "checked against torch)",
    )
    group.add_argument(
        "--cache_dir",
        default=str(resolve_cache_dir(None) or ""),
        help="where ONNX exports are cached by checkpoint hash ('' or a read-only "
        "directory: export in memory at every start), and where a TorchServe archive's "
        "serialized file is extracted ('': a temporary directory removed at exit)",
    )
    group.add_argument(
        "--streams",
        type=_auto_or_positive_int,
        default="auto",
        help="inference streams running at once (auto: CPU: one per CPU of the cgroup "
        "quota, at most 8; CUDA: 2)",
    )
    group.add_argument(
        "--threads_per_stream",
        type=_auto_or_positive_int,
        default="auto",
        help="CPU threads of each stream (auto: CPUs / streams, rounded down)",
    )
    group.add_argument(
        "--solo_threads",
        type=_auto_or_positive_int,
        default="auto",
        help="CPU threads a stream uses when it is the only one busy (auto: every CPU; "
        "equal to --threads_per_stream: off)",
    )
    group.add_argument(
        "--max_batch_size",
        type=_auto_or_positive_int,
        default="auto",
        help="most images gathered from concurrent requests into one forward pass "
        f"(auto: CPU {CPU_BATCHING[0]}, CUDA {CUDA_BATCHING[0]})",
    )
    group.add_argument(
        "--max_batch_delay_ms",
        type=_auto_or_non_negative_float,
        default="auto",
        help="longest an image waits for its batch to fill, in ms "
        f"(auto: CPU {CPU_BATCHING[1]:g}, CUDA {CUDA_BATCHING[1]:g})",
    )
    group.add_argument(
        "--decode_threads",
        type=_auto_or_positive_int,
        default="auto",
        help="threads decoding and letterboxing images (auto: one per CPU of the cgroup quota)",
    )


def _add_precision_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("precision")
    group.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="auto: fp32 on the CPU, fp16 on CUDA; fp16: CUDA only; int8: CPU with ONNX "
        "Runtime only, quantised and calibrated on --calibration_dir, checked against fp32 "
        "before it serves (never falls back: a start-up error says what to change)",
    )
    group.add_argument(
        "--calibration_dir",
        default=None,
        help="int8: images like those served (default: calibration/ beside the checkpoint; "
        "not needed when `python -m predictor.quantize` put a matching model there)",
    )
    group.add_argument(
        "--int8_min_agreement",
        type=float,
        default=DEFAULT_MIN_AGREEMENT,
        help="int8: refuse to serve when the F1 of INT8 against fp32 detections on held-back "
        "calibration images is below this",
    )


def performance_from_args(args: argparse.Namespace) -> PerformanceOptions:
    return PerformanceOptions(
        backend=args.backend,
        cache_dir=args.cache_dir,
        streams=args.streams,
        threads_per_stream=args.threads_per_stream,
        solo_threads=args.solo_threads,
        max_batch_size=args.max_batch_size,
        max_batch_delay_ms=args.max_batch_delay_ms,
    )


def serving_options_from_args(args: argparse.Namespace) -> ServingOptions:
    """The command line's options; ValueError names the first bad value."""
    return ServingOptions(
        img_size=args.img_size,
        letterbox=args.letterbox,
        device=args.device,
        defaults=DetectionSettings(args.conf_threshold, args.iou_threshold, args.max_det),
        limits=Limits(
            args.max_request_bytes,
            args.max_images,
            args.max_image_pixels,
            args.max_batch_decoded_bytes,
        ),
        decode_threads=args.decode_threads,
        performance=performance_from_args(args),
        precision=args.precision,
        calibration_dir=args.calibration_dir,
        int8_min_agreement=args.int8_min_agreement,
    )


def _auto_or_positive_int(text: str) -> int | None:
    if text == "auto":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'auto', got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 or 'auto', got {value}")
    return value


def _auto_or_non_negative_float(text: str) -> float | None:
    if text == "auto":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 or 'auto', got {text}")
    return value
