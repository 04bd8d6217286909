"""The service's errors and the one table that turns them into HTTP statuses and gRPC codes
(REST V2, V1 and gRPC alike). kserve's own error types are translated into these in
`kserve_compat`; anything else is a server fault: 500 / INTERNAL, logged with its traceback.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc


class ServingError(Exception):
    """An error with a reason a client may read."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


class InvalidRequest(ServingError):
    """The request is malformed: its body, a tensor, a parameter or an image."""


class LimitExceeded(InvalidRequest):
    """The request is over one of the configured limits."""


class UnknownModel(ServingError):
    """No such model, or no such version of it."""


class UnknownVersion(UnknownModel):
    """The model exists but has no such version (TorchServe's body tells them apart)."""


class Unavailable(ServingError):
    """The model or the server exists but cannot serve now (loading or draining)."""


class UnservableModel(InvalidRequest):
    """A repository load asked for a model that cannot be served: a bad checkpoint or
    config.yaml, or one model too many."""


class NotSupported(ServingError):
    """An API this server does not offer."""


@dataclass(frozen=True)
class Status:
    http: int
    grpc: grpc.StatusCode

    @property
    def client_fault(self) -> bool:
        return self.http < 500


# Most specific first: the first class the error is an instance of decides.
TABLE: tuple[tuple[type[ServingError], Status], ...] = (
    (LimitExceeded, Status(413, grpc.StatusCode.INVALID_ARGUMENT)),
    (InvalidRequest, Status(400, grpc.StatusCode.INVALID_ARGUMENT)),
    (UnknownModel, Status(404, grpc.StatusCode.NOT_FOUND)),
    (Unavailable, Status(503, grpc.StatusCode.UNAVAILABLE)),
    (NotSupported, Status(501, grpc.StatusCode.UNIMPLEMENTED)),
)
SERVER_FAULT = Status(500, grpc.StatusCode.INTERNAL)


def status_of(error: BaseException) -> Status:
    for kind, status in TABLE:
        if isinstance(error, kind):
            return status
    return SERVER_FAULT


def client_message(error: BaseException) -> str:
    """What the response says: the reason of our errors; nothing internal for the rest."""
    if isinstance(error, ServingError):
        return error.reason
    return f"internal server error ({type(error).__name__})"
