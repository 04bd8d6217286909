"""`python -m predictor.soak`: mixed valid and hostile traffic against a running server.

Sends valid V2 requests and a rotation of invalid ones (bad JSON, bad base64, non-images,
truncated images, wrong datatypes, bad parameters) from N concurrent clients for a set
time, then reports unexpected responses (a 5xx, a 2xx for bad input, a 4xx for good input,
or a connection failure) and the server's RSS growth read from its /metrics.

    python -m predictor.soak --url http://localhost:8080 --concurrency 16 --duration 600
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import httpx
import numpy as np


@dataclass(frozen=True)
class Case:
    name: str
    body: bytes
    expect_ok: bool
    headers: dict[str, str] = field(default_factory=dict)


def _v2(data: list, datatype: str = "BYTES", shape: list[int] | None = None, **extra) -> bytes:
    tensor = {"name": "image", "datatype": datatype, "shape": shape or [len(data)], "data": data}
    return json.dumps({"inputs": [tensor], **extra}).encode()


def build_cases(image: bytes) -> list[Case]:
    b64 = base64.b64encode(image).decode()
    truncated = base64.b64encode(image[: len(image) // 2]).decode()
    return [
        Case("valid", _v2([b64]), True),
        Case("valid-params", _v2([b64], parameters={"conf_threshold": "0.5"}), True),
        Case("invalid-json", b'{"inputs": [', False, {"Content-Type": "application/json"}),
        Case("no-inputs", b"{}", False),
        Case("bad-base64", _v2(["***"]), False),
        Case("not-an-image", _v2([base64.b64encode(b"hello").decode()]), False),
        Case("truncated-image", _v2([truncated]), False),
        Case("empty-image", _v2([""]), False),
        Case("wrong-datatype", _v2([1.0], "FP32"), False),
        Case("shape-mismatch", _v2([b64], shape=[3]), False),
        Case("bad-threshold", _v2([b64], parameters={"conf_threshold": "high"}), False),
        Case("unknown-class", _v2([b64], parameters={"classes": "unicorn"}), False),
    ]


def sample_image() -> bytes:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
    cv2.rectangle(image, (100, 100), (300, 260), (0, 0, 255), -1)
    return cv2.imencode(".jpg", image)[1].tobytes()


async def server_rss(client: httpx.AsyncClient) -> float | None:
    text = (await client.get("/metrics")).text
    match = re.search(r"^process_resident_memory_bytes (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else None


@dataclass
class Report:
    sent: Counter = field(default_factory=Counter)
    unexpected: Counter = field(default_factory=Counter)
    rss_start: float | None = None
    rss_end: float | None = None

    @property
    def rss_growth(self) -> float | None:
        if not self.rss_start or self.rss_end is None:
            return None
        return (self.rss_end - self.rss_start) / self.rss_start


async def soak(url: str, model: str, concurrency: int, duration: float, image: bytes) -> Report:
    cases = build_cases(image)
    report = Report()
    endpoint = f"/v2/models/{model}/infer"
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        for case in cases:  # warm every path before measuring memory
            await client.post(endpoint, content=case.body, headers=case.headers)
        report.rss_start = await server_rss(client)
        deadline = time.monotonic() + duration
        rotation = itertools.cycle(cases)

        async def worker() -> None:
            while time.monotonic() < deadline:
                case = next(rotation)
                report.sent[case.name] += 1
                try:
                    response = await client.post(endpoint, content=case.body, headers=case.headers)
                except httpx.HTTPError as error:
                    report.unexpected[f"{case.name}: {type(error).__name__}"] += 1
                    continue
                ok = response.status_code == 200
                if response.status_code >= 500 or ok != case.expect_ok:
                    report.unexpected[f"{case.name}: HTTP {response.status_code}"] += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        report.rss_end = await server_rss(client)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m predictor.soak",
        description=__doc__.split("\n\n")[1],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--url", default="http://localhost:8080")
    parser.add_argument("--model", default="yolov5")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=600, help="seconds")
    parser.add_argument("--image", type=Path, help="a valid image to send (default: generated)")
    parser.add_argument(
        "--max_rss_growth", type=float, default=0.05, help="fail above this RSS growth fraction"
    )
    args = parser.parse_args(argv)
    image = args.image.read_bytes() if args.image else sample_image()
    print(f"soak: {args.concurrency} clients for {args.duration:.0f}s against {args.url}")
    report = asyncio.run(soak(args.url, args.model, args.concurrency, args.duration, image))
    total = sum(report.sent.values())
    print(f"requests: {total} ({total / args.duration:.1f}/s), by case: {dict(report.sent)}")
    print(f"unexpected responses: {sum(report.unexpected.values())} {dict(report.unexpected)}")
    growth = report.rss_growth
    if growth is not None:
        print(
            f"server RSS: {report.rss_start / 2**20:.1f} MiB -> {report.rss_end / 2**20:.1f} MiB "
            f"({growth:+.1%})"
        )
    failed = bool(report.unexpected) or (growth is not None and growth > args.max_rss_growth)
    print("soak: FAILED" if failed else "soak: passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
