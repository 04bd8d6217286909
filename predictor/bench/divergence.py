"""Where ONNX Runtime's raw outputs differ from PyTorch's, and what the session level costs.

    python -m predictor.bench.divergence .cache/checkpoints/yolov5s-shapes/best.pt --img_size 640

Prints, on one thread: the network's raw output difference and forward time (interleaved
runs) at each graph optimisation level, then single operators (Sigmoid; SiLU as exported,
Sigmoid then Mul; a 3x3 convolution) against float64, for ONNX Runtime and PyTorch alike.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

LEVELS = ("ORT_DISABLE_ALL", "ORT_ENABLE_BASIC", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_ALL")


def session(model: bytes, level: str):  # -> onnxruntime.InferenceSession
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def exported(module: torch.nn.Module, example: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (example,), buffer, dynamo=False, opset_version=17)
    return buffer.getvalue()


def run_onnx(model: bytes, level: str, inputs: np.ndarray) -> np.ndarray:
    runner = session(model, level)
    return runner.run(None, {runner.get_inputs()[0].name: inputs})[0]


def network_levels(checkpoint: Path, img_size: int, rounds: int) -> None:
    from ..backends import TorchBackend, verify
    from ..backends.onnxruntime_backend import export_onnx
    from ..checkpoint import load_checkpoint

    model = load_checkpoint(checkpoint)
    shape = (img_size, img_size)
    onnx = export_onnx(model, shape)
    batch = verify.probes(shape, model.stride, rect=False)[0].batch[:1]
    reference = TorchBackend(model.network, torch.device("cpu")).engine(1)
    expected = reference(batch)
    sessions = {level: session(onnx, level) for level in LEVELS}
    seconds: dict[str, list[float]] = {level: [] for level in LEVELS}
    seconds["torch"] = []
    print(f"{checkpoint} at {img_size}, one scene, one thread:")
    for level, runner in sessions.items():
        output = torch.from_numpy(runner.run(None, {"images": batch})[0])
        print(f"  {level:20} raw difference {verify.compare_raw(expected, output)}")
    for _ in range(rounds):  # interleaved: this machine's speed drifts
        for level, runner in sessions.items():
            began = time.perf_counter()
            runner.run(None, {"images": batch})
            seconds[level].append(time.perf_counter() - began)
        began = time.perf_counter()
        reference(batch)
        seconds["torch"].append(time.perf_counter() - began)
    row = ", ".join(f"{name} {1000 * np.median(s):.0f}" for name, s in seconds.items())
    print(f"  forward median ms over {rounds} interleaved rounds: {row}")


def operators() -> None:
    x = torch.linspace(-20, 20, 400_001)
    exact = torch.sigmoid(x.double())
    print("single operators, largest |difference| from float64:")
    for name, module, reference in (
        ("Sigmoid", torch.nn.Sigmoid(), exact),
        ("SiLU (Sigmoid, Mul)", torch.nn.SiLU(), x.double() * exact),
    ):
        ours = np.abs(
            run_onnx(exported(module, x), "ORT_ENABLE_ALL", x.numpy()) - reference.numpy()
        )
        theirs = (module(x).double() - reference).abs().numpy()
        print(
            f"  {name:20} x in [-20, 20]: onnxruntime {ours.max():.2e} (at x = "
            f"{float(x[ours.argmax()]):.1f}), PyTorch {theirs.max():.2e}"
        )
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(64, 64, 3, padding=1).eval()
    inputs = torch.randn(1, 64, 80, 80)
    with torch.no_grad():
        exact = torch.nn.functional.conv2d(
            inputs.double(), conv.weight.double(), conv.bias.double(), padding=1
        )
        theirs = (conv(inputs).double() - exact).abs().max()
    ours = np.abs(
        run_onnx(exported(conv, inputs), "ORT_ENABLE_ALL", inputs.numpy()) - exact.numpy()
    )
    print(
        f"  {'Conv 3x3, 64 ch':20} outputs up to {float(exact.abs().max()):.1f}: onnxruntime "
        f"{ours.max():.2e}, PyTorch {float(theirs):.2e}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m predictor.bench.divergence")
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--img_size", type=int, default=640)
    parser.add_argument("--rounds", type=int, default=8, help="interleaved timing rounds")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    network_levels(args.checkpoint, args.img_size, args.rounds)
    operators()
    return 0


if __name__ == "__main__":
    sys.exit(main())
