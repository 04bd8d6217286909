"""Prometheus metrics, JSON logs, and the HTTP middleware that ties a request id to both."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import logging.config
import time
import uuid
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from . import errors

REQUEST_ID_HEADER = "x-request-id"
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
access_log = logging.getLogger("predictor.access")
logger = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

HTTP_REQUESTS = Counter(
    "yolov5_http_requests", "HTTP requests by route group and status code", ["path", "status"]
)
INFERENCES = Counter(
    "yolov5_inference_requests", "Inference requests by model and outcome", ["model", "outcome"]
)
STAGE_SECONDS = Histogram(
    "yolov5_stage_seconds",
    "Seconds per image and pipeline stage: decode, letterbox, queue_wait (queued until its "
    "batch starts), nms; per batch: forward; per request: encode (the response)",
    ["model", "stage"],
    buckets=_LATENCY_BUCKETS,
)
BATCH_SIZE = Histogram(
    "yolov5_batch_size",
    "Images per network forward",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64),
)
INFLIGHT_IMAGES = Gauge(
    "yolov5_inflight_images",
    "Images admitted or waiting for admission and not yet answered (the autoscaling signal)",
    ["model"],
)
IMAGES = Counter("yolov5_images", "Images processed", ["model"])
MODEL_INFO = Gauge(
    "yolov5_model_info",
    "Loaded model (value 1) with its properties as labels (the backend's reason is in the "
    "model metadata and the start-up log: free text makes unbounded label values)",
    ["model", "version", "classes", "device", "precision", "backend", "input_shape", "letterbox"],
)
INT8_AGREEMENT = Gauge(
    "yolov5_int8_agreement",
    "INT8 model versions: F1 of their detections against fp32's on held-back calibration images",
    ["model", "version"],
)
# Every series of these is labelled by model first; `forget_model` removes them.
PER_MODEL = (
    INFERENCES,
    STAGE_SECONDS,
    BATCH_SIZE,
    INFLIGHT_IMAGES,
    IMAGES,
    MODEL_INFO,
    INT8_AGREEMENT,
)
DESCRIPTIONS = (MODEL_INFO, INT8_AGREEMENT)  # what a model version is, not what it did


def forget_model(name: str, metrics: tuple[Any, ...] = PER_MODEL) -> None:
    """Remove model `name`'s series from `metrics` (an unloaded model is not exported)."""
    for metric in metrics:
        for labels in _label_values(metric):
            if labels[0] == name:
                metric.remove(*labels)


def _label_values(metric: Any) -> set[tuple[str, ...]]:
    """The label values of each series of `metric`, in its label order. Samples list the
    metric's labels in that order, then a histogram bucket's own `le`."""
    return {
        tuple(value for label, value in sample.labels.items() if label != "le")
        for family in metric.collect()
        for sample in family.samples
    }


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the current request id."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": request_id.get(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_json_logging(level: str = "INFO") -> None:
    logging.Formatter.converter = time.gmtime
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {"json": {"()": JsonFormatter}},
            "handlers": {
                "stderr": {
                    "class": "logging.StreamHandler",
                    "formatter": "json",
                    "stream": "ext://sys.stderr",
                }
            },
            "root": {"handlers": ["stderr"], "level": level},
            "loggers": {
                # replaced by our access log, which carries the request id
                "uvicorn.access": {"handlers": [], "propagate": False},
                "kserve.trace": {"handlers": [], "propagate": False},
                "kserve": {"handlers": [], "propagate": True},
                "uvicorn": {"handlers": [], "propagate": True},
            },
        }
    )


def log_outcome(error: BaseException, status: errors.Status, where: str) -> None:
    """A client's mistake is its access-log line's reason (INFO); a fault of ours is an
    ERROR with the traceback."""
    if status.client_fault:
        note_reason(errors.client_message(error))
    else:
        logger.error("%s failed", where, exc_info=error)


def _route_group(path: str) -> str:
    """A low-cardinality label for a request path."""
    parts = path.strip("/").split("/")
    if path.startswith("/v2/models/") and len(parts) >= 4:
        return "/v2/models/{name}/" + parts[-1]
    if path.startswith("/v1/models/"):
        return "/v1/models/{name}" + (":" + path.rsplit(":", 1)[-1] if ":" in path else "")
    if path.startswith("/v2/models/"):
        return "/v2/models/{name}"
    if path.startswith(("/predictions/", "/models/")):  # TorchServe's, by model [and version]
        return "/" + parts[0] + ("/{name}/{version}" if len(parts) > 2 else "/{name}")
    return path if len(path) < 40 else "other"


# An over-limit body is read and dropped (up to this much more, for this long) before the
# 413 goes out: a client that writes its whole body before reading (urllib, raw sockets)
# would otherwise get a connection reset instead of the answer (nginx's lingering close).
LINGER_BYTES = 256 * 1024 * 1024
LINGER_SECONDS = 10.0


@dataclass
class Exchange:
    """What the error handlers tell the access log about the request being answered."""

    reason: str = ""


_exchange: contextvars.ContextVar[Exchange] = contextvars.ContextVar("exchange")


def note_reason(reason: str) -> None:
    """The reason of a refused request, for its access-log line."""
    with contextlib.suppress(LookupError):  # outside an HTTP request (gRPC)
        _exchange.get().reason = reason


class RequestMiddleware:
    """Pure ASGI: request id in and out, body size limit, one JSON access-log line per
    request (4xx at INFO with the reason, 5xx at ERROR), status metrics."""

    def __init__(self, app: Any, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        rid = (
            headers.get(REQUEST_ID_HEADER.encode(), b"").decode("latin-1")[:128] or uuid.uuid4().hex
        )
        token = request_id.set(rid)
        exchange = Exchange()
        exchange_token = _exchange.set(exchange)
        started = time.perf_counter()
        status = {"code": 500}
        response_started = {"yes": False}

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                response_started["yes"] = True
                status["code"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [
                    *message["headers"],
                    (REQUEST_ID_HEADER.encode(), rid.encode("latin-1")),
                ]
            await send(message)

        try:
            declared = headers.get(b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
                if headers.get(b"expect", b"").lower() != b"100-continue":  # else: not sent yet
                    await _linger(receive)
                await self._reject(send_with_id, int(declared), exchange)
                return
            await self.app(scope, self._limited(receive), send_with_id)
        except _BodyTooLarge as error:
            await _linger(receive)
            await self._reject(send_with_id, error.size, exchange)
        except Exception as error:  # a fault of ours: the traceback once, a JSON 500
            logger.error("%s %s failed", scope.get("method"), scope.get("path"), exc_info=error)
            if not response_started["yes"]:
                await _send_json(send_with_id, 500, {"error": errors.client_message(error)})
        finally:
            elapsed = time.perf_counter() - started
            path = scope.get("path", "")
            code = status["code"]
            HTTP_REQUESTS.labels(_route_group(path), str(code)).inc()
            quiet = path in ("/metrics", "/v2/health/live", "/ping") or path.endswith("/ready")
            if code >= 400 or not quiet:
                fields = {
                    "method": scope.get("method"),
                    "path": path,
                    "status": code,
                    "duration_ms": round(elapsed * 1000, 2),
                }
                if exchange.reason:
                    fields["reason"] = exchange.reason
                access_log.log(
                    logging.ERROR if code >= 500 else logging.INFO,
                    "%s %s %s",
                    scope.get("method"),
                    path,
                    code,
                    extra={"fields": fields},
                )
            _exchange.reset(exchange_token)
            request_id.reset(token)

    def _limited(self, receive: Any) -> Any:
        received = 0

        async def wrapped() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise _BodyTooLarge(received)
            return message

        return wrapped

    async def _reject(self, send: Any, size: int, exchange: Exchange) -> None:
        limit = self.max_body_bytes
        exchange.reason = f"request body of {size} bytes exceeds --max_request_bytes={limit}"
        await _send_json(send, 413, {"error": exchange.reason}, close=True)


async def _send_json(send: Any, status: int, content: dict, close: bool = False) -> None:
    headers = [(b"content-type", b"application/json")]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": json.dumps(content).encode()})


async def _linger(receive: Any) -> None:
    """Read and drop what is left of the request body, within LINGER_BYTES/LINGER_SECONDS."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + LINGER_SECONDS
    drained = 0
    while drained < LINGER_BYTES:
        try:
            message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0))
        except TimeoutError:
            return
        if message["type"] != "http.request":
            return
        drained += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


class _BodyTooLarge(Exception):
    def __init__(self, size: int) -> None:
        self.size = size
