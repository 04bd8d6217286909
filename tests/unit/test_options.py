"""Options accept and refuse the same values from the command line and from config.yaml."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from predictor.checkpoint import CheckpointError
from predictor.server import cli, contract, options
from predictor.server.limits import Limits
from predictor.server.options import PerformanceOptions, ServingOptions


def parse(*argv: str) -> argparse.Namespace:
    # A plain parser: the server's own adds kserve's flags (tests/deploy checks that one).
    parser = argparse.ArgumentParser()
    options.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_defaults() -> None:
    base = options.serving_options_from_args(parse())
    assert dataclasses.replace(base, performance=PerformanceOptions()) == ServingOptions()
    assert dataclasses.replace(base.performance, cache_dir=None) == PerformanceOptions()
    assert base.decode_thread_count >= 1


def test_performance_flags_parse() -> None:
    args = parse(
        "--backend=onnxruntime",
        "--cache_dir=",
        "--streams=3",
        "--threads_per_stream=2",
        "--solo_threads=auto",
        "--max_batch_size=4",
        "--max_batch_delay_ms=0",
        "--decode_threads=5",
    )
    served = options.serving_options_from_args(args)
    assert served.performance == PerformanceOptions("onnxruntime", "", 3, 2, None, 4, 0.0)
    assert served.decode_threads == served.decode_thread_count == 5


@pytest.mark.parametrize(
    "argv",
    [
        ["--streams=0"],
        ["--max_batch_delay_ms=-1"],
        ["--backend=tensorrt"],
        ["--decode_threads=0"],
        ["--letterbox=wide"],
    ],
)
def test_the_parser_refuses(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        parse(*argv)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--img_size", "7"], "img_size must be an integer >= 32"),
        (["--conf_threshold", "2"], "conf_threshold must be in [0, 1]"),
        (["--max_images", "0"], "max_images must be a positive integer"),
        (["--max_request_bytes", "-5"], "max_request_bytes must be a positive integer"),
        (["--precision", "fp16", "--device", "cpu"], "precision fp16 runs on CUDA only"),
        (["--precision", "int8", "--device", "cuda"], "int8 runs on the CPU only"),
        (["--precision", "int8", "--device", "cuda:1"], "int8 runs on the CPU only"),
        (["--precision", "int8", "--backend", "torch"], "backend torch cannot serve it"),
        (["--precision", "int8", "--letterbox", "rect"], "needs letterbox square"),
        (["--int8_min_agreement", "1.5"], "int8_min_agreement must be in [0, 1]"),
    ],
)
def test_the_options_refuse(argv: list[str], message: str) -> None:
    with pytest.raises(ValueError) as raised:
        options.serving_options_from_args(parse(*argv))
    assert message in str(raised.value)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("img_size: 7", "img_size must be an integer >= 32"),
        ("img_size: true", "img_size must be an integer >= 32"),
        ("letterbox: wide", "letterbox must be square or rect"),
        ("conf_threshold: 2", "conf_threshold must be in [0, 1]"),
        ("names: [a, 3]", "names must be a list of class names"),
        ("colour: red", "unknown settings ['colour']"),
        ("precision: int4", "precision must be one of auto, fp32, fp16, int8"),
        ("precision: int8\nletterbox: rect", "needs letterbox square"),
        ("int8_min_agreement: high", "int8_min_agreement must be in [0, 1]"),
        ("calibration_dir: [a]", "calibration_dir must be a path"),
    ],
)
def test_config_yaml_refuses_what_the_command_line_refuses(
    tmp_path: Path, config: str, message: str
) -> None:
    (tmp_path / "config.yaml").write_text(config)
    with pytest.raises(CheckpointError) as raised:
        options.with_config_file(tmp_path, ServingOptions())
    assert message in str(raised.value)


def test_config_yaml_overrides() -> None:
    base = ServingOptions()
    changed = options.apply_config(base, {"img_size": 320, "max_det": 5, "names": {1: "b", 0: "a"}})
    assert (changed.img_size, changed.defaults.max_det, changed.class_names) == (320, 5, ("a", "b"))
    assert changed.limits == Limits()


def test_precision_flags_and_config(tmp_path: Path) -> None:
    args = parse("--precision=int8", "--calibration_dir=/data/calib", "--int8_min_agreement=0.9")
    base = options.serving_options_from_args(args)
    assert (base.precision, base.calibration_dir, base.int8_min_agreement) == (
        "int8",
        "/data/calib",
        0.9,
    )
    # a config.yaml's calibration_dir is relative to its model directory
    (tmp_path / "config.yaml").write_text("precision: fp32\ncalibration_dir: images\n")
    configured = options.with_config_file(tmp_path, base)
    assert configured.precision == "fp32"
    assert configured.calibration_dir == str(tmp_path / "images")


def test_grpc_limits_follow_ours_unless_kserves_flags_are_given() -> None:
    limits = Limits(max_request_bytes=1000, max_images=2)
    unset = argparse.Namespace(
        grpc_max_receive_message_length=None, grpc_max_send_message_length=None
    )
    assert cli.grpc_limits(unset, limits) == (1000, contract.largest_response_bytes(2))
    given = argparse.Namespace(grpc_max_receive_message_length=5, grpc_max_send_message_length=6)
    assert cli.grpc_limits(given, limits) == (5, 6)
