"""A PNG of latency (p50/p90/p99) and throughput against concurrency, drawn with OpenCV."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from .load import LevelResult

WIDTH, HEIGHT = 1200, 580
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 80, 30, 85, 70
FONT = cv2.FONT_HERSHEY_SIMPLEX
BLACK, GREY, LIGHT = (30, 30, 30), (120, 120, 120), (225, 225, 225)
COLOURS = {  # BGR
    "p50": (180, 119, 31),
    "p90": (14, 127, 255),
    "p99": (40, 39, 214),
    "grpc": (44, 160, 44),
    "rest": (189, 103, 148),
}
DASHES = {"grpc": False, "rest": True}


def plot(levels: Sequence[LevelResult], path: str | Path, title: str = "") -> None:
    """Two panels: latency percentiles (left) and images/s (right) per concurrency level,
    one line per protocol (REST dashed)."""
    canvas = np.full((HEIGHT, WIDTH, 3), 255, np.uint8)
    half = WIDTH // 2
    concurrencies = sorted({level.concurrency for level in levels})
    protocols = sorted({level.protocol for level in levels})
    _text(canvas, title or "yolov5-kserve benchmark", (MARGIN_LEFT, 30), 0.7, BLACK, 2)

    latency_series = []
    for protocol in protocols:
        by_level = {lv.concurrency: lv for lv in levels if lv.protocol == protocol}
        for q in ("p50", "p90", "p99"):
            points = [
                (c, by_level[c].percentile(float(q[1:]))) for c in concurrencies if c in by_level
            ]
            latency_series.append((f"{protocol} {q}", COLOURS[q], DASHES[protocol], points))
    _panel(canvas, (0, half), concurrencies, latency_series, "latency (ms)")

    throughput_series = []
    for protocol in protocols:
        points = [(lv.concurrency, lv.throughput) for lv in levels if lv.protocol == protocol]
        throughput_series.append((protocol, COLOURS[protocol], DASHES[protocol], sorted(points)))
    _panel(canvas, (half, WIDTH), concurrencies, throughput_series, "images / s")
    if not cv2.imwrite(str(path), canvas):
        raise OSError(f"could not write {path}")


def _panel(
    canvas: np.ndarray,
    span: tuple[int, int],
    concurrencies: list[int],
    series: list[tuple[str, tuple[int, int, int], bool, list[tuple[int, float]]]],
    label: str,
) -> None:
    left, right = span[0] + MARGIN_LEFT, span[1] - MARGIN_RIGHT
    top, bottom = MARGIN_TOP, HEIGHT - MARGIN_BOTTOM
    values = [v for *_, points in series for _, v in points if math.isfinite(v)]
    ymax = _nice_ceiling(max(values, default=1.0))

    def x_of(concurrency: int) -> int:
        if len(concurrencies) == 1:
            return (left + right) // 2
        i = concurrencies.index(concurrency)  # evenly spaced levels (1, 8, 64 ...)
        return int(left + i * (right - left) / (len(concurrencies) - 1))

    def y_of(value: float) -> int:
        return int(bottom - (bottom - top) * value / ymax)

    for i in range(6):  # horizontal grid and y ticks
        value = ymax * i / 5
        y = y_of(value)
        cv2.line(canvas, (left, y), (right, y), LIGHT, 1)
        _text(canvas, f"{value:g}", (left - 60, y + 5), 0.45, GREY)
    cv2.line(canvas, (left, top), (left, bottom), BLACK, 1)
    cv2.line(canvas, (left, bottom), (right, bottom), BLACK, 1)
    for concurrency in concurrencies:
        x = x_of(concurrency)
        cv2.line(canvas, (x, bottom), (x, bottom + 5), BLACK, 1)
        _text(canvas, str(concurrency), (x - 8, bottom + 22), 0.5, BLACK)
    _text(canvas, "concurrent clients", ((left + right) // 2 - 80, bottom + 50), 0.55, BLACK)
    _text(canvas, label, (left, top - 12), 0.55, BLACK)

    for index, (name, colour, dashed, points) in enumerate(series):
        xy = [(x_of(c), y_of(v)) for c, v in points if math.isfinite(v)]
        for a, b in itertools.pairwise(xy):
            _line(canvas, a, b, colour, dashed)
        for point in xy:
            cv2.circle(canvas, point, 4, colour, -1, cv2.LINE_AA)
        legend_y = top + 18 + 20 * index
        _line(canvas, (right - 150, legend_y - 5), (right - 120, legend_y - 5), colour, dashed)
        _text(canvas, name, (right - 112, legend_y), 0.45, BLACK)


def _line(
    canvas: np.ndarray,
    a: tuple[int, int],
    b: tuple[int, int],
    colour: tuple[int, int, int],
    dashed: bool,
) -> None:
    if not dashed:
        cv2.line(canvas, a, b, colour, 2, cv2.LINE_AA)
        return
    length = math.dist(a, b)
    steps = max(1, int(length // 8))
    for i in range(0, steps, 2):
        start = (a[0] + (b[0] - a[0]) * i / steps, a[1] + (b[1] - a[1]) * i / steps)
        end_t = min(i + 1, steps) / steps
        end = (a[0] + (b[0] - a[0]) * end_t, a[1] + (b[1] - a[1]) * end_t)
        cv2.line(canvas, _int(start), _int(end), colour, 2, cv2.LINE_AA)


def _int(point: tuple[float, float]) -> tuple[int, int]:
    return round(point[0]), round(point[1])


def _text(
    canvas: np.ndarray,
    text: str,
    origin: tuple[int, int],
    scale: float,
    colour: tuple[int, int, int],
    thickness: int = 1,
) -> None:
    cv2.putText(canvas, text, origin, FONT, scale, colour, thickness, cv2.LINE_AA)


def _nice_ceiling(value: float) -> float:
    """The next 1, 2, 2.5 or 5 x 10^k at or above `value`."""
    if value <= 0:
        return 1.0
    exponent = math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        candidate = step * 10**exponent
        if candidate >= value:
            return candidate
    return 10 ** (exponent + 1)
