"""One table decides every status code."""

from __future__ import annotations

import grpc
import pytest

from predictor.server import errors


@pytest.mark.parametrize(
    ("error", "http", "code"),
    [
        (errors.InvalidRequest("x"), 400, grpc.StatusCode.INVALID_ARGUMENT),
        (errors.LimitExceeded("x"), 413, grpc.StatusCode.INVALID_ARGUMENT),
        (errors.UnservableModel("x"), 400, grpc.StatusCode.INVALID_ARGUMENT),
        (errors.UnknownModel("x"), 404, grpc.StatusCode.NOT_FOUND),
        (errors.UnknownVersion("x"), 404, grpc.StatusCode.NOT_FOUND),
        (errors.Unavailable("x"), 503, grpc.StatusCode.UNAVAILABLE),
        (errors.NotSupported("x"), 501, grpc.StatusCode.UNIMPLEMENTED),
        (ValueError("a bug"), 500, grpc.StatusCode.INTERNAL),
        (KeyError("a bug"), 500, grpc.StatusCode.INTERNAL),
    ],
)
def test_status_of(error: Exception, http: int, code: grpc.StatusCode) -> None:
    status = errors.status_of(error)
    assert (status.http, status.grpc) == (http, code)
    assert status.client_fault == (http < 500)


def test_client_messages_keep_our_reasons_and_hide_internals() -> None:
    assert errors.client_message(errors.LimitExceeded("over --max_images=3")) == (
        "over --max_images=3"
    )
    assert errors.client_message(ValueError("/secret/path")) == "internal server error (ValueError)"
