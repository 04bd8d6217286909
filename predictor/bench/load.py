"""Closed-loop load: N concurrent clients, each sending its next request when the last
returns, over V2 gRPC or V2 REST (binary extension), from one asyncio process.

Payloads are serialised once up front (a ready protobuf message, a ready HTTP body) and
responses are only parsed when checked, so the client spends its CPU on the network, not
on encoding: it shares the machine with the server it measures.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import resource
import struct
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .. import protowire

OUTPUTS = ("num_detections", "boxes", "scores", "classes", "labels")
GRPC_METHOD = "/inference.GRPCInferenceService/ModelInfer"


@dataclass
class Sample:
    started: float
    finished: float
    ok: bool


@dataclass
class LevelResult:
    protocol: str
    concurrency: int
    images_per_request: int
    seconds: float  # measured window
    requests: int  # completed in the window
    errors: int
    latencies_ms: list[float] = field(repr=False, default_factory=list)
    client_cpu_seconds: float = 0.0
    server_rss_peak_mb: float | None = None
    first_error: str | None = None

    @property
    def throughput(self) -> float:
        """Images per second."""
        return self.requests * self.images_per_request / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    def summary(self) -> dict[str, float | int | str | None]:
        return {
            "protocol": self.protocol,
            "concurrency": self.concurrency,
            "images_per_s": round(self.throughput, 2),
            "p50_ms": round(self.percentile(50), 1),
            "p90_ms": round(self.percentile(90), 1),
            "p99_ms": round(self.percentile(99), 1),
            "requests": self.requests,
            "errors": self.errors,
            "client_cpu_pct": round(100 * self.client_cpu_seconds / self.seconds, 1)
            if self.seconds
            else 0.0,
            "server_rss_peak_mb": self.server_rss_peak_mb,
            "first_error": self.first_error,
        }


# -- payloads ---------------------------------------------------------------------------


def grpc_request(model: str, images: Sequence[bytes]) -> bytes:
    """A serialised V2 ModelInferRequest carrying `images` as one BYTES [N] tensor.

    Encoded by hand (`predictor.protowire`): importing either copy of the V2 protos would
    break the other in the same process (kserve's and tritonclient's both declare
    `inference.*`), and importing kserve parses this command's flags as its own.
    """
    raw = b"".join(struct.pack("<I", len(image)) + image for image in images)
    tensor = (
        protowire.field(1, b"image")
        + protowire.field(2, b"BYTES")
        + protowire.field(3, protowire.varint(len(images)))  # shape
    )
    return protowire.field(1, model.encode()) + protowire.field(5, tensor) + protowire.field(7, raw)


def rest_request(images: Sequence[bytes]) -> tuple[bytes, dict[str, str]]:
    """A V2 REST body with the binary tensor extension: JSON header, then raw bytes."""
    raw = b"".join(struct.pack("<I", len(image)) + image for image in images)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [len(images)],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [{"name": name, "parameters": {"binary_data": True}} for name in OUTPUTS],
        }
    ).encode()
    headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }
    return header + raw, headers


@dataclass
class Detections:
    """What the server returned for one image."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray


_NUMPY_TYPES = {"INT32": np.int32, "FP32": np.float32, "INT64": np.int64, "FP64": np.float64}


def parse_grpc(response: bytes) -> list[Detections]:
    """The numeric outputs of a serialised ModelInferResponse (outputs = field 5, their raw
    contents = field 6, in the same order)."""
    outputs, contents = [], []
    for number, value in protowire.fields(response):
        if number == 5:
            tensor = dict(protowire.fields(value))  # 1 name, 2 datatype, 3 packed shape
            shape = list(protowire.varints(tensor.get(3, b"")))
            outputs.append((tensor[1].decode(), tensor[2].decode(), shape))
        elif number == 6:
            contents.append(value)
    arrays = {}
    for (name, datatype, shape), raw in zip(outputs, contents, strict=False):
        if datatype in _NUMPY_TYPES:
            dtype = np.dtype(_NUMPY_TYPES[datatype]).newbyteorder("<")
            arrays[name] = np.frombuffer(raw, dtype).reshape(shape)
    return _detections(arrays.get)


def parse_rest(body: bytes, header_length: str | None) -> list[Detections]:
    from tritonclient.http import InferResult

    length = int(header_length) if header_length else None
    result = InferResult.from_response_body(body, header_length=length)
    return _detections(result.as_numpy)


def _detections(as_numpy: Callable[[str], np.ndarray | None]) -> list[Detections]:
    counts, boxes, scores, classes = (
        as_numpy(name) for name in ("num_detections", "boxes", "scores", "classes")
    )
    assert counts is not None and boxes is not None and scores is not None and classes is not None
    return [
        Detections(boxes[i, :n], scores[i, :n], classes[i, :n])
        for i, n in enumerate(counts.tolist())
    ]


# -- transports -------------------------------------------------------------------------


class Transport:
    """Sends pre-built payloads; `send(i)` returns the raw response of payload i."""

    protocol: str

    async def send(self, index: int) -> bytes:
        raise NotImplementedError

    async def parsed(self, index: int) -> list[Detections]:
        raise NotImplementedError

    async def close(self) -> None:
        pass


class GrpcTransport(Transport):
    protocol = "grpc"

    def __init__(self, target: str, model: str, payloads: Sequence[Sequence[bytes]], channels: int):
        import grpc

        options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
        self._channels = [
            grpc.aio.insecure_channel(target, options=options) for _ in range(channels)
        ]
        self._calls = [
            channel.unary_unary(GRPC_METHOD, request_serializer=None, response_deserializer=None)
            for channel in self._channels
        ]
        self._payloads = [grpc_request(model, images) for images in payloads]
        self._next = 0

    async def send(self, index: int) -> bytes:
        self._next = (self._next + 1) % len(self._calls)
        return await self._calls[self._next](self._payloads[index % len(self._payloads)])

    async def parsed(self, index: int) -> list[Detections]:
        return parse_grpc(await self.send(index))

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()


class RestTransport(Transport):
    protocol = "rest"

    def __init__(self, url: str, model: str, payloads: Sequence[Sequence[bytes]], connections: int):
        import httpx

        base = url if url.startswith(("http://", "https://")) else f"http://{url}"
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        self._client = httpx.AsyncClient(base_url=base, limits=limits, timeout=300)
        self._path = f"/v2/models/{model}/infer"
        self._payloads = [rest_request(images) for images in payloads]

    async def _post(self, index: int):
        body, headers = self._payloads[index % len(self._payloads)]
        response = await self._client.post(self._path, content=body, headers=headers)
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
        return response

    async def send(self, index: int) -> bytes:
        return (await self._post(index)).content

    async def parsed(self, index: int) -> list[Detections]:
        response = await self._post(index)
        return parse_rest(response.content, response.headers.get("inference-header-content-length"))

    async def close(self) -> None:
        await self._client.aclose()


# -- the load loop ----------------------------------------------------------------------


async def run_level(
    transport: Transport,
    concurrency: int,
    images_per_request: int,
    duration: float | None,
    requests: int | None,
    warmup: float,
    rss: Callable[[], Awaitable[float | None]] | None = None,
) -> LevelResult:
    """`concurrency` closed-loop clients; measured over `duration` seconds after `warmup`
    seconds of the same load, or over exactly `requests` requests.

    In duration mode a request counts where it completes: throughput is the completions
    inside the window over its length. Counting only requests that also started inside it
    would drop one latency's worth of completions at the window's start (at 64 clients
    and 2.8 s per request, 14% of a 20 s window)."""
    samples: list[Sample] = []
    errors: list[str] = []
    counter = iter(range(1 << 62))
    remaining = [requests] if requests is not None else None
    start = time.perf_counter()
    window_start = start + warmup
    window_end = window_start + (duration or 0.0)

    async def client(offset: int) -> None:
        while True:
            now = time.perf_counter()
            if remaining is None:
                if now >= window_end:
                    return
            else:
                if remaining[0] <= 0:
                    return
                remaining[0] -= 1
            index = next(counter) + offset
            began = time.perf_counter()
            ok = True
            try:
                await transport.send(index)
            except Exception as error:
                ok = False
                if not errors:
                    errors.append(f"{type(error).__name__}: {str(error)[:300]}")
            samples.append(Sample(began, time.perf_counter(), ok))

    peak: list[float] = []

    async def watch_memory() -> None:
        while True:
            value = await rss() if rss is not None else None
            if value is not None:
                peak.append(value)
            await asyncio.sleep(1.0)

    if requests is not None and warmup > 0:  # count mode: warm up on its own first
        warm_until = time.perf_counter() + warmup
        while time.perf_counter() < warm_until:
            await asyncio.gather(*(_quiet(transport.send(i)) for i in range(concurrency)))
    watcher = asyncio.create_task(watch_memory()) if rss is not None else None
    cpu_before = _cpu_seconds()
    began_at = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(concurrency)))
    ended_at = time.perf_counter()
    cpu = _cpu_seconds() - cpu_before
    if watcher is not None:
        watcher.cancel()
    if requests is not None:
        window = samples
        seconds = ended_at - began_at
    else:
        window = [s for s in samples if window_start <= s.finished <= window_end]
        seconds = duration or 0.0
        cpu *= seconds / max(ended_at - began_at, 1e-9)
    good = [s for s in window if s.ok]
    return LevelResult(
        protocol=transport.protocol,
        concurrency=concurrency,
        images_per_request=images_per_request,
        seconds=seconds,
        requests=len(good),
        errors=sum(1 for s in window if not s.ok),
        latencies_ms=[(s.finished - s.started) * 1000 for s in good],
        client_cpu_seconds=cpu,
        server_rss_peak_mb=round(max(peak) / 2**20, 1) if peak else None,
        first_error=errors[0] if errors else None,
    )


async def _quiet(awaitable: Awaitable[object]) -> None:
    with contextlib.suppress(Exception):
        await awaitable


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def metrics_rss(url: str) -> float | None:
    """The server's resident memory from its Prometheus /metrics, in bytes."""
    import httpx

    base = url if url.startswith(("http://", "https://")) else f"http://{url}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=5) as client:
            text = (await client.get("/metrics")).text
    except httpx.HTTPError:
        return None
    match = re.search(r"^process_resident_memory_bytes (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else None
