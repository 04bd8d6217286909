"""`python -m predictor.client IMAGE...`: send images to a running server, print a table of
detections and write annotated copies.

    python -m predictor.client samples/*.jpg --out annotated/
    python -m predictor.client bus.jpg --grpc localhost:8081 --conf_threshold 0.4
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

OUTPUTS = ("num_detections", "boxes", "scores", "classes", "labels")


@dataclass
class Detection:
    box: tuple[float, float, float, float]
    score: float
    class_id: int
    label: str


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m predictor.client",
        description="Detect objects in images with a running yolov5-kserve server (V2 protocol).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("images", nargs="+", type=Path, help="image files (JPEG, PNG, ...)")
    parser.add_argument("--url", default="localhost:8080", help="REST host:port of the server")
    parser.add_argument("--grpc", metavar="HOST:PORT", help="use gRPC at this address instead")
    parser.add_argument("--model", default="yolov5", help="model name on the server")
    parser.add_argument("--conf_threshold", type=float, help="override the server's default")
    parser.add_argument("--iou_threshold", type=float, help="override the server's default")
    parser.add_argument("--classes", help="only these classes (comma-separated ids or names)")
    parser.add_argument("--out", type=Path, help="write annotated images into this directory")
    return parser


def detect(args: argparse.Namespace, payloads: list[bytes]) -> list[list[Detection]]:
    parameters = {
        key: str(value)
        for key in ("conf_threshold", "iou_threshold", "classes")
        if (value := getattr(args, key)) is not None
    }
    batch = np.array(payloads, dtype=object)
    if args.grpc:
        import tritonclient.grpc as client_module

        client = client_module.InferenceServerClient(args.grpc)
    else:
        import tritonclient.http as client_module

        client = client_module.InferenceServerClient(args.url.removeprefix("http://"))
    tensor = client_module.InferInput("image", [len(payloads)], "BYTES")
    tensor.set_data_from_numpy(batch)
    result = client.infer(args.model, [tensor], parameters=parameters)
    arrays = {name: result.as_numpy(name) for name in OUTPUTS}
    return [
        [
            Detection(
                tuple(float(v) for v in arrays["boxes"][i, k]),
                float(arrays["scores"][i, k]),
                int(arrays["classes"][i, k]),
                arrays["labels"][i, k].decode(),
            )
            for k in range(int(count))
        ]
        for i, count in enumerate(arrays["num_detections"])
    ]


def annotate(image: np.ndarray, detections: list[Detection]) -> np.ndarray:
    canvas = image.copy()
    thickness = max(1, round(sum(image.shape[:2]) / 600))
    for d in detections:
        colour = _colour(d.class_id)
        x1, y1, x2, y2 = (round(v) for v in d.box)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, thickness, cv2.LINE_AA)
        text = f"{d.label} {d.score:.2f}"
        scale = thickness / 3
        (w, h), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        top = max(y1 - h - baseline, 0)
        left = max(min(x1, canvas.shape[1] - w), 0)  # keep the label inside the image
        cv2.rectangle(canvas, (left, top), (left + w, top + h + baseline), colour, -1)
        cv2.putText(
            canvas, text, (left, top + h), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255),
            thickness, cv2.LINE_AA,
        )  # fmt: skip
    return canvas


def _colour(class_id: int) -> tuple[int, int, int]:
    palette = [(56, 56, 255), (151, 157, 255), (31, 112, 255), (29, 178, 255), (49, 210, 207)]
    return palette[class_id % len(palette)]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    missing = [str(p) for p in args.images if not p.is_file()]
    if missing:
        print(f"error: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    payloads = [p.read_bytes() for p in args.images]
    try:
        results = detect(args, payloads)
    except Exception as error:  # connection refused, 4xx from the server, ...
        where = args.grpc or args.url
        print(f"error: request to {where} failed: {error}", file=sys.stderr)
        return 1
    print(f"{'image':<28} {'label':<14} {'score':>6}  box (x1, y1, x2, y2)")
    for path, detections in zip(args.images, results, strict=True):
        if not detections:
            print(f"{path.name:<28} {'-':<14}")
        for d in detections:
            box = ", ".join(f"{v:.1f}" for v in d.box)
            print(f"{path.name:<28} {d.label:<14} {d.score:6.3f}  ({box})")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        for path, payload, detections in zip(args.images, payloads, results, strict=True):
            image = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR)
            target = args.out / path.name
            cv2.imwrite(str(target), annotate(image, detections))
            print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
