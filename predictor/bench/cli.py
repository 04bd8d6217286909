"""The `python -m predictor.bench` command line: see predictor/bench/__init__.py."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ..backends import verify
from . import load, pipeline
from .server import ServerExited

REPO = Path(__file__).resolve().parents[2]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
DEFAULT_MODEL = REPO / ".cache" / "checkpoints" / "yolov5s-shapes" / "best.pt"
NOTHING_TO_COMPARE = (
    "no detections to compare (an untrained model finds nothing; a trained checkpoint "
    "checks real ones)"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m predictor.bench",
        description="Throughput and latency of a yolov5-kserve endpoint (V2 gRPC / REST) per "
        "concurrency level, against the in-process PyTorch pipeline on the same model and "
        "images.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    target = parser.add_argument_group("endpoint (any of --serve, --grpc, --url)")
    target.add_argument(
        "--serve",
        action="store_true",
        help="start `python -m predictor` on free local ports with the model, bench it, stop it",
    )
    target.add_argument("--grpc", metavar="HOST:PORT", help="gRPC endpoint of a running server")
    target.add_argument("--url", metavar="HOST:PORT", help="REST endpoint of a running server")
    target.add_argument(
        "--protocol",
        default="grpc",
        help="comma-separated: grpc (V2 gRPC), rest (V2 REST, binary tensor extension)",
    )
    target.add_argument("--model_name", default="yolov5", help="model name on the server")
    target.add_argument(
        "--server_args",
        default="",
        help="extra flags for the --serve server, e.g. '--backend torch --streams 1'",
    )
    target.add_argument(
        "--precision",
        default="",
        help="comma-separated --precision values for --serve, e.g. fp32,int8: one server "
        "after the other on the same load, then each one's images/s and p50 as a ratio to "
        "the first's (int8 needs calibration images: '--server_args \"--calibration_dir "
        "DIR\"' or calibration/ beside the checkpoint); the detection check and the "
        "interleaved latency use the first (default: the server's own)",
    )

    traffic = parser.add_argument_group("load")
    traffic.add_argument(
        "--concurrency", default="1,8,64", help="comma-separated numbers of concurrent clients"
    )
    traffic.add_argument("--duration", type=float, default=20.0, help="measured seconds per level")
    traffic.add_argument(
        "--requests",
        type=int,
        default=None,
        help="measure exactly this many requests per level instead of --duration",
    )
    traffic.add_argument(
        "--warmup", type=float, default=3.0, help="seconds of the same load before measuring"
    )
    traffic.add_argument(
        "--images",
        nargs="+",
        type=Path,
        help="image files (default: the repository's samples/, else generated scenes)",
    )
    traffic.add_argument("--batch", type=int, default=1, help="images per request")
    traffic.add_argument(
        "--channels",
        type=int,
        default=4,
        help="gRPC channels (HTTP/2 connections) the clients share",
    )

    model = parser.add_argument_group("model (for --serve, --in-process and the check)")
    model.add_argument(
        "--model_dir",
        type=Path,
        help="checkpoint (or its directory); with --serve or --in-process the default is the "
        "yolov5s best.pt that `python -m predictor.training.genuine` writes (train.py's own "
        "format); a running endpoint's detections are checked only against a given one",
    )
    model.add_argument("--img_size", type=int, default=640)
    model.add_argument("--letterbox", choices=("square", "rect"), default="square")
    model.add_argument("--device", default="cpu", help="for --in-process and the check")
    model.add_argument(
        "--cache_dir",
        default=None,
        help="ONNX export cache for --in-process and the --serve server (default: theirs)",
    )

    local = parser.add_argument_group("in-process limits")
    local.add_argument(
        "--in-process",
        "--in_process",
        dest="in_process",
        action="store_true",
        help="measure the PyTorch pipeline (decode, letterbox, forward, NMS) in this process: "
        "one stream x all threads, and parallel streams x 1 thread",
    )
    local.add_argument(
        "--in_process_backends",
        default="torch",
        help="comma-separated backends for --in-process (torch is the reference; add "
        "onnxruntime to see the runtime's own limit)",
    )
    local.add_argument(
        "--forward_batches",
        default="",
        help="comma-separated batch sizes: also measure the bare forward pass at each "
        "(images/s; the ceiling a GPU server can approach)",
    )
    local.add_argument(
        "--latency_seconds",
        type=float,
        default=30.0,
        help="with --in-process, an endpoint and 1 in --concurrency: sample single-image "
        "latency alternately for this long, one image through the in-process PyTorch "
        "pipeline on all threads (a server started here paused meanwhile), then one request "
        "per protocol; the latency target compares these p50s, taken at the same moments of "
        "a machine whose speed drifts (0: off)",
    )
    local.add_argument(
        "--cpus", type=int, default=None, help="CPUs to use (default: from the cgroup quota)"
    )

    output = parser.add_argument_group("output")
    output.add_argument("--plot", type=Path, help="write a PNG of latency/throughput here")
    output.add_argument("--json", type=Path, help="write every number as JSON here")
    output.add_argument(
        "--no_check",
        action="store_true",
        help="skip comparing served detections with the PyTorch path's",
    )
    return parser


@dataclass
class Report:
    machine: dict[str, object] = field(default_factory=dict)
    in_process: list[pipeline.PipelineResult] = field(default_factory=list)
    forward: dict[str, dict[int, float]] = field(default_factory=dict)
    levels: list[load.LevelResult] = field(default_factory=list)  # the first precision's
    other_precisions: dict[str, list[load.LevelResult]] = field(default_factory=dict)
    interleaved_ms: dict[str, list[float]] = field(default_factory=dict)  # side: latencies
    check: dict[str, object] | None = None
    targets: list[dict[str, object]] = field(default_factory=list)

    def interleaved_p50(self) -> dict[str, float]:
        return {side: float(np.percentile(ms, 50)) for side, ms in self.interleaved_ms.items()}

    def to_json(self) -> dict[str, object]:
        return {
            "machine": self.machine,
            "in_process": [r.summary() for r in self.in_process],
            "forward_images_per_s": self.forward,
            "levels": [level.summary() for level in self.levels],
            "other_precisions": {
                precision: [level.summary() for level in levels]
                for precision, levels in self.other_precisions.items()
            },
            "interleaved_p50_ms": {
                side: round(p50, 1) for side, p50 in self.interleaved_p50().items()
            },
            "check": self.check,
            "targets": self.targets,
        }


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _bench(parser, args)
    except ServerExited as refused:
        # The server's own last line is the reason (an error: ... line at exit 2).
        lines = [line for line in refused.log_tail.splitlines() if line.strip()]
        print(f"error: the server exited with {refused.code}: {lines[-1] if lines else ''}")
        return 2


def _bench(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    protocols = _csv(args.protocol, str)
    for protocol in protocols:
        if protocol not in ("grpc", "rest"):
            parser.error(f"--protocol: unknown protocol {protocol!r} (grpc, rest)")
    concurrency = _csv(args.concurrency, int)
    if not args.serve and not args.in_process and not (args.grpc or args.url):
        parser.error("nothing to measure: give --serve, --grpc/--url, or --in-process")
    precisions: list[str | None] = _csv(args.precision, str) or [None]
    if len(precisions) > 1 and not args.serve:
        parser.error("--precision with several values needs --serve (one server each)")
    if not args.serve:
        if "grpc" in protocols and args.grpc is None and args.url is not None:
            protocols = [p for p in protocols if p != "grpc"] or ["rest"]
        if "rest" in protocols and args.url is None and args.grpc is not None:
            protocols = [p for p in protocols if p != "rest"] or ["grpc"]

    from ..backends import available_cpus

    cpus = args.cpus or available_cpus()
    payloads = read_images(args.images)
    report = Report(machine=describe_machine(cpus, payloads))
    _print_header(report.machine)

    checkpoint = None
    if args.model_dir is not None or args.serve or args.in_process:
        checkpoint = _find_checkpoint(args.model_dir or DEFAULT_MODEL)
        report.machine["model"] = str(checkpoint)
        print(f"model: {checkpoint}")
    if args.in_process:
        assert checkpoint is not None
        run_in_process(args, checkpoint, payloads, cpus, report)
    if args.serve or args.grpc or args.url:
        first, *others = precisions
        with endpoint(args, checkpoint, first) as target:
            report.machine["served_by"] = served(args, target, first)
            report.levels = run_levels(args, protocols, concurrency, payloads, target)
            if not args.no_check and checkpoint is not None:
                report.check = check_detections(
                    args, checkpoint, payloads, protocols[0], target.grpc, target.http
                )
                _print_check(report.check)
            if args.in_process and args.latency_seconds > 0 and 1 in concurrency:
                report.interleaved_ms = asyncio.run(
                    interleaved_latency(args, checkpoint, payloads, cpus, protocols, target)
                )
        for precision in others:
            with endpoint(args, checkpoint, precision) as target:
                report.machine[f"served_by_{precision}"] = served(args, target, precision)
                levels = run_levels(args, protocols, concurrency, payloads, target)
                report.other_precisions[str(precision)] = levels
        if others:
            _print_precision_ratios(str(first), report)
    report.targets = targets(report)
    _print_targets(report.targets)
    if args.plot and report.levels:
        from .plot import plot

        model = checkpoint.name if checkpoint is not None else args.model_name
        plot(report.levels, args.plot, f"{model} {args.img_size} - {_cpu_name()}")
        print(f"\nplot: {args.plot}")
    if args.json:
        args.json.write_text(json.dumps(report.to_json(), indent=2))
        print(f"json: {args.json}")
    every = [report.levels, *report.other_precisions.values()]
    failed = any(level.errors for levels in every for level in levels)
    return 1 if failed else 0


# -- inputs ---------------------------------------------------------------------------------


def read_images(paths: Sequence[Path] | None) -> list[bytes]:
    if paths:
        return [path.read_bytes() for path in paths]
    samples = REPO / "samples"
    if samples.is_dir():
        found = sorted(p for p in samples.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if found:
            return [p.read_bytes() for p in found]
    return generated_images()


def generated_images() -> list[bytes]:
    """Photo-sized JPEG scenes (1080x810, 1280x720, 640x480) when no images are given."""
    rng = np.random.default_rng(0)
    payloads = []
    for height, width in ((1080, 810), (720, 1280), (480, 640)):
        image = np.empty((height, width, 3), np.uint8)
        image[:] = rng.integers(60, 200, 3)
        image = cv2.GaussianBlur(
            np.clip(image + rng.normal(0, 25, image.shape), 0, 255).astype(np.uint8), (5, 5), 0
        )
        for _ in range(12):
            x, y = int(rng.integers(0, width - 60)), int(rng.integers(0, height - 60))
            w, h = int(rng.integers(40, width // 3)), int(rng.integers(40, height // 3))
            colour = tuple(int(c) for c in rng.integers(0, 255, 3))
            cv2.rectangle(image, (x, y), (x + w, y + h), colour, -1)
        payloads.append(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    return payloads


def _find_checkpoint(model_dir: Path) -> Path:
    """The checkpoint file itself, or the single one in a directory (as the server finds it;
    not imported from the server, which would import kserve and its own flag parsing)."""
    from ..checkpoint import CHECKPOINT_SUFFIXES

    if model_dir == DEFAULT_MODEL and not model_dir.is_file():
        raise SystemExit(
            f"{DEFAULT_MODEL} is missing: make it with `python -m predictor.training.genuine` "
            "(minutes on one thread), or give --model_dir"
        )
    if model_dir.is_file():
        return model_dir
    found = sorted(p for p in model_dir.glob("*") if p.suffix in CHECKPOINT_SUFFIXES)
    if len(found) != 1:
        raise SystemExit(f"--model_dir {model_dir}: expected one checkpoint, found {len(found)}")
    return found[0]


@dataclass
class Endpoint:
    grpc: str | None  # host:port
    http: str | None
    # Stops the server while this process measures in-process latency (a server started
    # here); contextlib.nullcontext for one running elsewhere.
    paused: Callable[[], contextlib.AbstractContextManager[None]] = contextlib.nullcontext


@contextlib.contextmanager
def endpoint(
    args: argparse.Namespace, checkpoint: Path | None, precision: str | None = None
) -> Iterator[Endpoint]:
    if not args.serve:
        yield Endpoint(args.grpc, args.url)
        return
    assert checkpoint is not None  # --serve always has one
    from .server import serve

    server_args = [
        "--img_size",
        str(args.img_size),
        "--letterbox",
        args.letterbox,
        *(["--cache_dir", args.cache_dir] if args.cache_dir is not None else []),
        *(["--precision", precision] if precision is not None else []),
        *shlex.split(args.server_args),
    ]
    print(f"\nstarting: python -m predictor {' '.join(server_args)}", flush=True)
    with serve(checkpoint, args.model_name, server_args) as server:
        print(f"server ready (pid {server.pid}, log {server.log})")
        yield Endpoint(server.grpc, server.http, server.paused)


def served(args: argparse.Namespace, target: Endpoint, precision: str | None) -> str:
    """Which backend serves (printed), from the server's metadata."""
    what = served_backend(args.model_name, target.http)
    print(f"served by: {what}" + (f" (--precision {precision})" if precision else ""))
    return what


def served_backend(model_name: str, http_target: str | None) -> str:
    """Which backend the server runs the model on, and why, from its V2 metadata
    (`parameters.backend`, `parameters.backend_reason`)."""
    if http_target is None:
        return "unknown (no REST endpoint to ask)"
    import httpx

    try:
        response = httpx.get(f"http://{http_target}/v2/models/{model_name}", timeout=10)
        parameters = response.json().get("parameters") or {}
    except (httpx.HTTPError, ValueError) as error:
        return f"unknown (metadata: {error})"
    if "backend" not in parameters:
        return "not reported by the server's metadata"
    precision = f", {parameters['precision']}" if "precision" in parameters else ""
    reason = parameters.get("backend_reason", "no reason given")
    return f"{parameters['backend']}{precision}: {reason}"


# -- measurements ---------------------------------------------------------------------------


def run_in_process(
    args: argparse.Namespace,
    checkpoint: Path,
    payloads: list[bytes],
    cpus: int,
    report: Report,
) -> None:
    from ..detector import Detector

    configurations = [(1, cpus)] + ([(cpus, 1)] if cpus > 1 else [])
    print(
        f"\nin-process pipeline (decode + letterbox + forward + NMS per image), "
        f"{args.duration:g} s each after {args.warmup:g} s warm-up:"
    )
    print(f"  {'configuration':34} {'images/s':>9} {'p50 ms':>8} {'p90 ms':>8}")
    for backend in _csv(args.in_process_backends, str):
        detector = Detector.load(
            checkpoint,
            args.device,
            args.img_size,
            args.letterbox,
            backend=backend,
            cache_dir=args.cache_dir,
        )
        print(f"  {backend}: served by {detector.backend.name} ({detector.backend.reason})")
        for streams, threads in configurations:
            result = pipeline.measure_pipeline(
                detector, payloads, streams, threads, args.duration, args.warmup
            )
            report.in_process.append(result)
            print(
                f"  {result.name:34} {result.throughput:9.2f} {result.percentile(50):8.1f} "
                f"{result.percentile(90):8.1f}",
                flush=True,
            )
        batches = _csv(args.forward_batches, int)
        if batches:
            forward = pipeline.measure_forward(detector, batches, cpus, min(args.duration, 10))
            report.forward[backend] = forward
            row = ", ".join(f"batch {b}: {v:.1f}" for b, v in forward.items())
            print(f"  {backend} forward pass alone, images/s: {row}")


def run_levels(
    args: argparse.Namespace,
    protocols: list[str],
    concurrency: list[int],
    payloads: list[bytes],
    target: Endpoint,
) -> list[load.LevelResult]:
    """One level per protocol and client count, printed as it is measured."""
    levels = []
    requests = [
        [payloads[(i + j) % len(payloads)] for j in range(args.batch)] for i in range(len(payloads))
    ]
    what = f"{args.requests} requests" if args.requests else f"{args.duration:g} s"
    for protocol in protocols:
        print(f"\nserver over {protocol}, {what} per level after {args.warmup:g} s warm-up:")
        print(
            f"  {'clients':>7} {'images/s':>9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} "
            f"{'errors':>6} {'client CPU':>10} {'server RSS':>11}"
        )
        for clients in concurrency:
            result = asyncio.run(
                _level(
                    args,
                    protocol,
                    clients,
                    requests,
                    target.grpc,
                    target.http,
                    (args.duration, args.requests, args.warmup),
                )
            )
            levels.append(result)
            rss = f"{result.server_rss_peak_mb:.0f} MB" if result.server_rss_peak_mb else "-"
            cpu = 100 * result.client_cpu_seconds / result.seconds if result.seconds else 0
            print(
                f"  {clients:7d} {result.throughput:9.2f} {result.percentile(50):8.1f} "
                f"{result.percentile(90):8.1f} {result.percentile(99):8.1f} "
                f"{result.errors:6d} {cpu:9.0f}% {rss:>11}",
                flush=True,
            )
            if result.first_error:
                print(f"          first error: {result.first_error}")
    return levels


def _print_precision_ratios(first: str, report: Report) -> None:
    """Each other precision's images/s and p50 over the first's, level by level."""
    baseline = {(lv.protocol, lv.concurrency): lv for lv in report.levels}
    for precision, levels in report.other_precisions.items():
        print(f"\n{precision} / {first}:")
        print(f"  {'protocol':>8} {'clients':>7} {'images/s':>9} {'p50':>6}")
        for level in levels:
            base = baseline.get((level.protocol, level.concurrency))
            if base is None or not base.throughput:
                continue
            speed = level.throughput / base.throughput
            p50 = level.percentile(50) / base.percentile(50)
            print(f"  {level.protocol:>8} {level.concurrency:7d} {speed:8.2f}x {p50:5.2f}x")


async def _level(
    args: argparse.Namespace,
    protocol: str,
    clients: int,
    requests: list[list[bytes]],
    grpc_target: str | None,
    http_target: str | None,
    window: tuple[float, int | None, float],  # seconds (or a request count), warm-up
) -> load.LevelResult:
    duration, count, warmup = window
    transport = _transport(args, protocol, requests, clients, grpc_target, http_target)
    rss = None
    if http_target is not None:

        async def rss() -> float | None:
            return await load.metrics_rss(http_target)

    try:
        return await load.run_level(transport, clients, args.batch, duration, count, warmup, rss)
    finally:
        await transport.close()


def _transport(
    args: argparse.Namespace,
    protocol: str,
    requests: list[list[bytes]],
    clients: int,
    grpc_target: str | None,
    http_target: str | None,
) -> load.Transport:
    """A client for `clients` concurrent requests: gRPC channels (at most --channels) or
    HTTP connections."""
    if protocol == "grpc":
        assert grpc_target is not None
        channels = max(1, min(args.channels, clients))
        return load.GrpcTransport(grpc_target, args.model_name, requests, channels)
    assert http_target is not None
    return load.RestTransport(http_target, args.model_name, requests, clients)


async def interleaved_latency(
    args: argparse.Namespace,
    checkpoint: Path,
    payloads: list[bytes],
    cpus: int,
    protocols: list[str],
    target: Endpoint,
) -> dict[str, list[float]]:
    """Single-image latencies (ms), sampled alternately: one image through the in-process
    PyTorch pipeline (one stream on all threads), then one request per protocol, for
    `--latency_seconds`. This VM's speed moves by a fifth from one minute to the next; two
    measurements taken minutes apart would read that as a ratio, interleaved samples see
    the same moments. A server started here is paused while the in-process side runs.
    """
    from ..detector import DetectionSettings, Detector

    detector = Detector.load(
        checkpoint, args.device, args.img_size, args.letterbox, cache_dir=args.cache_dir
    )
    engine, settings = detector.backend.engine(cpus), DetectionSettings()
    singles = [[payload] for payload in payloads]
    transports = {p: _transport(args, p, singles, 1, target.grpc, target.http) for p in protocols}
    samples: dict[str, list[float]] = {"in_process": [], **{p: [] for p in transports}}
    print(
        f"\nsingle-image latency, interleaved for {args.latency_seconds:g} s: in-process "
        f"PyTorch ({detector.backend.name}, 1 stream x {cpus} threads), then the server at "
        f"1 client ({', '.join(transports)})",
        flush=True,
    )
    try:
        with pipeline.cv2_threads(cpus):
            deadline, index = None, 0
            while deadline is None or time.perf_counter() < deadline:
                payload = payloads[index % len(payloads)]
                with target.paused():
                    began = time.perf_counter()
                    pipeline.detect_once(detector, engine, payload, settings)
                    latencies = {"in_process": time.perf_counter() - began}
                for protocol, transport in transports.items():
                    began = time.perf_counter()
                    await transport.send(index)
                    latencies[protocol] = time.perf_counter() - began
                if deadline is None:  # the first round initialises lazily: not measured
                    deadline = time.perf_counter() + args.latency_seconds
                else:
                    for side, seconds in latencies.items():
                        samples[side].append(seconds * 1000)
                index += 1
    finally:
        for transport in transports.values():
            await transport.close()
    row = ", ".join(f"{side} {np.percentile(ms, 50):.1f}" for side, ms in samples.items())
    print(f"  p50 ms over {len(samples['in_process'])} rounds: {row}")
    return samples


def check_detections(
    args: argparse.Namespace,
    checkpoint: Path,
    payloads: list[bytes],
    protocol: str,
    grpc_target: str | None,
    http_target: str | None,
) -> dict[str, object]:
    """Each image once through the server, against the PyTorch path in this process."""
    from ..detector import Detector
    from ..imaging import decode_image

    reference = Detector.load(checkpoint, args.device, args.img_size, args.letterbox)
    expected = [reference.detect([decode_image(p)])[0] for p in payloads]

    async def served() -> list[load.Detections]:
        singles = [[p] for p in payloads]
        transport = _transport(args, protocol, singles, 1, grpc_target, http_target)
        try:
            return [(await transport.parsed(i))[0] for i in range(len(payloads))]
        finally:
            await transport.close()

    got = asyncio.run(served())
    mismatched, box_error, score_error, total = 0, 0.0, 0.0, 0
    for want, have in zip(expected, got, strict=True):
        total += len(want)
        if len(want) != len(have.scores) or not np.array_equal(want.class_ids, have.classes):
            mismatched += 1
            continue
        if len(want):
            box_error = max(box_error, float(np.abs(want.boxes - have.boxes).max()))
            score_error = max(score_error, float(np.abs(want.scores - have.scores).max()))
    return {
        "images": len(payloads),
        "detections": total,
        "images_with_different_detections": mismatched,
        "max_box_error_px": box_error,
        "max_score_error": score_error,
        "equal": mismatched == 0
        and box_error <= verify.BOX_TOLERANCE_PX
        and score_error <= verify.SCORE_TOLERANCE,
    }


def targets(report: Report) -> list[dict[str, object]]:
    """The issue's CPU targets as ratios, from whatever this run measured."""
    found = _ratio_targets(report)
    if report.check is not None:
        name = (
            f"detections equal PyTorch's (boxes {verify.BOX_TOLERANCE_PX:g} px, "
            f"scores {verify.SCORE_TOLERANCE:g})"
        )
        if report.check["detections"]:
            found.append({"name": name, "met": report.check["equal"]})
        else:  # nothing compared proves nothing
            found.append({"name": f"{name}: {NOTHING_TO_COMPARE}", "met": None})
    return found


def _ratio_targets(report: Report) -> list[dict[str, object]]:
    """The server against the in-process PyTorch pipeline (when measured), 64 against 8
    clients."""
    torch_runs = [r for r in report.in_process if r.backend == "torch"]
    best = max(torch_runs, key=lambda r: r.throughput) if torch_runs else None
    interleaved = report.interleaved_p50()
    found: list[dict[str, object]] = []
    for protocol in sorted({level.protocol for level in report.levels}):
        by_clients = {lv.concurrency: lv for lv in report.levels if lv.protocol == protocol}
        if best is not None and 8 in by_clients:
            ratio = by_clients[8].throughput / best.throughput
            found.append(
                _target(
                    f"{protocol}: images/s @8 clients / in-process PyTorch best "
                    f"({best.name}, {best.throughput:.2f}/s)",
                    ratio,
                    ">=",
                    1.5,
                )
            )
        if report.interleaved_ms.get(protocol):
            local, served = interleaved["in_process"], interleaved[protocol]
            found.append(
                _target(
                    f"{protocol}: p50 @1 client / in-process PyTorch single-image p50 "
                    f"(interleaved: {served:.1f} / {local:.1f} ms)",
                    served / local,
                    "<=",
                    0.6,
                )
            )
        if 8 in by_clients and 64 in by_clients:
            level = by_clients[64]
            ratio = level.throughput / by_clients[8].throughput
            entry = _target(f"{protocol}: images/s @64 / @8 clients", ratio, ">=", 0.95)
            entry["errors_at_64"] = level.errors
            entry["server_rss_peak_mb"] = level.server_rss_peak_mb
            entry["met"] = bool(entry["met"]) and level.errors == 0
            found.append(entry)
    return found


def _target(name: str, ratio: float, op: str, bound: float) -> dict[str, object]:
    met = ratio >= bound if op == ">=" else ratio <= bound
    return {"name": name, "ratio": round(ratio, 3), "target": f"{op} {bound}", "met": met}


# -- printing -------------------------------------------------------------------------------


def describe_machine(cpus: int, payloads: list[bytes]) -> dict[str, object]:
    import onnxruntime
    import torch

    from ..backends import cgroup_cpu_limit

    shapes = []
    for payload in payloads:
        image = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR)
        shapes.append(f"{image.shape[1]}x{image.shape[0]}" if image is not None else "?")
    return {
        "cpu": _cpu_name(),
        "cpus_used": cpus,
        "cgroup_cpu_limit": cgroup_cpu_limit(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "images": shapes,
    }


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def _print_header(machine: dict[str, object]) -> None:
    gpu = f", GPU {machine['cuda']}" if machine["cuda"] else ""
    print(
        f"machine: {machine['cpu']}, {machine['cpus_used']} CPUs used (cgroup limit "
        f"{machine['cgroup_cpu_limit'] or 'none'}){gpu}; torch {machine['torch']}, "
        f"onnxruntime {machine['onnxruntime']}"
    )
    print(f"images: {len(machine['images'])} ({', '.join(machine['images'])})")  # type: ignore[arg-type]


def _print_check(check: dict[str, object]) -> None:
    if not check["detections"]:
        print(f"\ndetections vs the PyTorch path ({check['images']} images): {NOTHING_TO_COMPARE}")
        return
    verdict = "equal" if check["equal"] else "DIFFERENT"
    print(
        f"\ndetections vs the PyTorch path ({check['images']} images, {check['detections']} "
        f"detections): {verdict}; images with other detections: "
        f"{check['images_with_different_detections']}, max |box diff| "
        f"{check['max_box_error_px']:.2g} px, max |score diff| {check['max_score_error']:.2g}"
    )


def _print_targets(found: list[dict[str, object]]) -> None:
    if not found:
        return
    print("\ntargets:")
    for entry in found:
        ratio = f" = {entry['ratio']:.2f}x (target {entry['target']})" if "ratio" in entry else ""
        extra = ""
        if "errors_at_64" in entry:
            rss = entry["server_rss_peak_mb"]
            extra = f", errors @64: {entry['errors_at_64']}" + (
                f", server RSS peak {rss:.0f} MB" if rss else ""
            )
        verdict = {True: "met", False: "NOT MET", None: "n/a"}[entry["met"]]
        print(f"  [{verdict}] {entry['name']}{ratio}{extra}")


def _csv(text: str, kind: type) -> list:
    return [kind(part.strip()) for part in text.split(",") if part.strip()]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
