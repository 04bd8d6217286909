"""`python -m predictor`: serve YOLOv5 checkpoints with KServe's ModelServer.

Every stock KServe ModelServer flag works (ports, gRPC, logging, ...); our flags are in
`options`. Example:

    python -m predictor --model_dir model_store --img_size 320
"""

from __future__ import annotations

import argparse
import logging
import sys

from ..checkpoint import CheckpointError
from . import contract, options
from .observability import configure_json_logging

DEFAULT_MODEL_NAME = options.DEFAULT_MODEL_NAME
DEFAULT_MODEL_DIR = options.DEFAULT_MODEL_DIR

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
    # None: not given, so the gRPC limits follow --max_request_bytes and the largest
    # possible response instead of kserve's 8 MiB.
    parser.set_defaults(
        model_name=DEFAULT_MODEL_NAME,
        grpc_max_receive_message_length=None,
        grpc_max_send_message_length=None,
    )
    options.add_arguments(parser)
    return parser


def grpc_limits(args: argparse.Namespace, limits: options.Limits) -> tuple[int, int]:
    """(receive, send) gRPC message limits: kserve's flags when given, else ours."""
    receive = args.grpc_max_receive_message_length or limits.max_request_bytes
    send = args.grpc_max_send_message_length or contract.largest_response_bytes(limits.max_images)
    return receive, send


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # argparse leaves an attribute the namespace already has alone unless the flag is given:
    # model_name is None unless --model_name was, so an archive keeps its manifest's name
    # (and a single checkpoint gets DEFAULT_MODEL_NAME from the repository).
    args = parser.parse_args(argv, namespace=argparse.Namespace(model_name=None))
    if args.workers > 1:
        parser.error(
            "--workers > 1 is not supported: KServe pickles the model into spawned processes "
            "(breaking CUDA and multiplying memory). Scale with replicas instead."
        )
    try:
        base = options.serving_options_from_args(args)
    except ValueError as error:
        parser.error(str(error))
    json_logs = args.log_format == "json" and args.configure_logging and not args.log_config_file
    if json_logs:
        configure_json_logging()

    from . import kserve_compat
    from .repository import MODEL_LOAD_ERRORS, YoloRepository

    try:
        kserve_compat.check_kserve_version(allow_other=args.kserve_version_check == "off")
    except kserve_compat.IncompatibleKServe as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    repository = YoloRepository(args.model_dir, args.model_name, base, args.max_loaded_models)
    try:
        entries = repository.entries()
        if len(entries) > args.max_loaded_models:
            raise CheckpointError(
                f"--model_dir {args.model_dir} holds {len(entries)} models, over "
                f"--max_loaded_models={args.max_loaded_models}"
            )
        models = [repository.load_entry(entry) for entry in entries]
    except MODEL_LOAD_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    server = kserve_compat.YoloModelServer(
        repository,
        max_body_bytes=base.limits.max_request_bytes,
        grpc_limits=grpc_limits(args, base.limits),
        http_port=args.http_port,
        grpc_port=args.grpc_port,
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
        torchserve_api=args.torchserve_api,
    )
    if json_logs:
        configure_json_logging()  # ModelServer() re-applied KServe's text format
    server.start(models)
    return 0
