"""`python -m predictor`: serve a YOLOv5 checkpoint with KServe's ModelServer.

Every stock KServe ModelServer flag works (ports, gRPC, logging, ...); the flags below
configure the detector. Example:

    python -m predictor --model_dir model_store --img_size 320
"""

from __future__ import annotations

import argparse
import logging
import sys

from ..checkpoint import CheckpointError
from ..detector import DetectionSettings
from .limits import Limits
from .observability import configure_json_logging
from .scheduler import PerformanceOptions, add_performance_arguments

DEFAULT_MODEL_NAME = "yolov5"
DEFAULT_MODEL_DIR = "/mnt/models"

logger = logging.getLogger("predictor")


def build_parser() -> argparse.ArgumentParser:
    from kserve import model_server

    parser = argparse.ArgumentParser(
        prog="python -m predictor",
        description="Serve a YOLOv5 detector (.pt from train.py, or a .torchscript export) "
        "over the KServe V1 and V2 (Open Inference Protocol) REST and gRPC APIs.",
        parents=[model_server.parser],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.set_defaults(model_name=DEFAULT_MODEL_NAME)
    group = parser.add_argument_group("YOLOv5")
    group.add_argument(
        "--model_dir",
        default=DEFAULT_MODEL_DIR,
        help="a checkpoint file; a directory holding one (KServe's storage initializer puts "
        "storageUri content in /mnt/models); or a repository: one subdirectory per model, "
        "<name>/<checkpoint> or <name>/<version>/<checkpoint>, each with an optional "
        "config.yaml (img_size, letterbox, conf_threshold, iou_threshold, max_det, names)",
    )
    group.add_argument("--img_size", type=int, default=640, help="network input size in pixels")
    group.add_argument(
        "--letterbox",
        choices=("square", "rect"),
        default="square",
        help="square: pad to img_size x img_size (batchable); rect: pad only to a multiple "
        "of the stride, like YOLOv5's detect.py",
    )
    defaults = DetectionSettings()
    group.add_argument("--conf_threshold", type=float, default=defaults.conf_threshold)
    group.add_argument("--iou_threshold", type=float, default=defaults.iou_threshold)
    group.add_argument("--max_det", type=int, default=defaults.max_det)
    group.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA when available), cpu, cuda or cuda:N",
    )
    limits = parser.add_argument_group(
        "request limits (over a limit: HTTP 413 / gRPC INVALID_ARGUMENT)"
    )
    default_limits = Limits()
    limits.add_argument(
        "--max_request_bytes",
        type=int,
        default=default_limits.max_request_bytes,
        help="largest HTTP request body",
    )
    limits.add_argument(
        "--max_images", type=int, default=default_limits.max_images, help="images per request"
    )
    limits.add_argument(
        "--max_image_pixels",
        type=int,
        default=default_limits.max_image_pixels,
        help="width x height of one image, checked from its header before decoding",
    )
    limits.add_argument(
        "--max_batch_decoded_bytes",
        type=int,
        default=default_limits.max_batch_decoded_bytes,
        help="decoded size of all images in one request",
    )
    group.add_argument(
        "--max_loaded_models",
        type=int,
        default=16,
        help="most models loaded at once (startup and POST /v2/repository/models/NAME/load)",
    )
    add_performance_arguments(parser)
    parser.add_argument(
        "--log_format",
        choices=("json", "text"),
        default="json",
        help="json: one JSON object per line with the request id; text: KServe's format",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.workers > 1:
        parser.error(
            "--workers > 1 is not supported: KServe pickles the model into spawned processes "
            "(breaking CUDA and multiplying memory). Scale with replicas instead."
        )
    try:
        defaults = DetectionSettings(args.conf_threshold, args.iou_threshold, args.max_det)
    except ValueError as error:
        parser.error(str(error))
    limits = Limits(
        args.max_request_bytes, args.max_images, args.max_image_pixels, args.max_batch_decoded_bytes
    )
    json_logs = args.log_format == "json" and args.configure_logging and not args.log_config_file
    if json_logs:
        configure_json_logging()

    from . import app, kserve_fixes
    from .model import ServingOptions
    from .repository import YoloRepository
    from .shutdown import GracefulModelServer

    base = ServingOptions(
        args.img_size,
        args.letterbox,
        args.device,
        defaults,
        limits,
        performance=PerformanceOptions.from_args(args),
    )
    repository = YoloRepository(args.model_dir, args.model_name, base, args.max_loaded_models)
    try:
        entries = repository.entries()
        if len(entries) > args.max_loaded_models:
            raise CheckpointError(
                f"--model_dir {args.model_dir} holds {len(entries)} models, over "
                f"--max_loaded_models={args.max_loaded_models}"
            )
        models = [repository.load_entry(entry) for entry in entries]
    except (CheckpointError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    kserve_fixes.apply()
    server = GracefulModelServer(
        registered_models=repository,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        workers=1,
        max_threads=args.max_threads,
        max_asyncio_workers=args.max_asyncio_workers,
        enable_grpc=args.enable_grpc,
        enable_docs_url=args.enable_docs_url,
        enable_latency_logging=args.enable_latency_logging,
        access_log_format=args.access_log_format,
        event_loop=args.event_loop,
        timeout_keep_alive=args.timeout_keep_alive,
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
    )
    app.extend(server, repository, limits)
    if json_logs:
        configure_json_logging()  # ModelServer() re-applied KServe's text format
    server.start(models)
    return 0
