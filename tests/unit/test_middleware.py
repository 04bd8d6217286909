"""The request middleware in-process: body limit with lingering, faults as one JSON 500."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from predictor.server.observability import RequestMiddleware


def http_scope(headers: list[tuple[bytes, bytes]]) -> dict:
    return {"type": "http", "method": "POST", "path": "/v2/models/m/infer", "headers": headers}


def call(app, scope: dict, chunks: list[bytes]) -> tuple[list[dict], list[str]]:
    """Run the middleware (limit 100 bytes); return what it sent and the events in order."""
    events: list[str] = []
    sent: list[dict] = []
    pending = list(chunks)

    async def receive() -> dict:
        body = pending.pop(0)
        events.append(f"read {len(body)}")
        return {"type": "http.request", "body": body, "more_body": bool(pending)}

    async def send(message: dict) -> None:
        events.append(message["type"])
        sent.append(message)

    asyncio.run(RequestMiddleware(app, max_body_bytes=100)(scope, receive, send))
    return sent, events


async def echo(scope, receive, send) -> None:
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


def test_a_declared_over_limit_body_is_read_before_the_413() -> None:
    chunks = [b"x" * 60] * 5
    sent, events = call(echo, http_scope([(b"content-length", b"300")]), chunks)
    assert sent[0]["status"] == 413 and (b"connection", b"close") in sent[0]["headers"]
    assert "--max_request_bytes=100" in json.loads(sent[1]["body"])["error"]
    assert events == ["read 60"] * 5 + ["http.response.start", "http.response.body"]


def test_an_undeclared_over_limit_body_is_refused_once_it_passes_the_limit() -> None:
    sent, events = call(echo, http_scope([]), [b"x" * 60] * 4)
    assert sent[0]["status"] == 413
    assert events[:4] == ["read 60"] * 4  # the rest was drained, then the answer


def test_a_client_waiting_for_100_continue_is_answered_at_once() -> None:
    headers = [(b"content-length", b"300"), (b"expect", b"100-continue")]
    sent, events = call(echo, http_scope(headers), [b"x" * 60] * 5)
    assert sent[0]["status"] == 413 and events[0] == "http.response.start"


def test_a_body_within_the_limit_passes() -> None:
    sent, _ = call(echo, http_scope([(b"content-length", b"100")]), [b"x" * 100])
    assert sent[0]["status"] == 200


def test_a_fault_is_a_json_500_with_one_traceback(caplog: pytest.LogCaptureFixture) -> None:
    async def broken(scope, receive, send) -> None:
        raise RuntimeError("/internal/detail")

    with caplog.at_level(logging.INFO):
        sent, _ = call(broken, http_scope([]), [b"{}"])
    assert sent[0]["status"] == 500
    assert json.loads(sent[1]["body"]) == {"error": "internal server error (RuntimeError)"}
    assert len([r for r in caplog.records if r.exc_info]) == 1
    [access] = [r for r in caplog.records if r.name == "predictor.access"]
    assert access.levelno == logging.ERROR
