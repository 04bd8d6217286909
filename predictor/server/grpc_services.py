"""gRPC methods of Triton's V2 service that kserve 0.21's proto lacks, served beside kserve's
servicer on the same port: RepositoryIndex (tritonclient's `get_model_repository_index`).

kserve's generated module has no such messages, so they are encoded by hand in Triton's
numbering (`predictor.protowire`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc

from .. import protowire

SERVICE = "inference.GRPCInferenceService"

# RepositoryIndexRequest: repository_name = 1, ready = 2 (bool).
# RepositoryIndexResponse: repeated ModelIndex models = 1;
# ModelIndex: name = 1, version = 2, state = 3, reason = 4.
_INDEX_FIELDS = ("name", "version", "state", "reason")


def add_repository_index(index: Callable[[bool], list[dict[str, str]]]) -> None:
    """Answer RepositoryIndex from `index(ready_only)` on the gRPC server kserve starts."""

    async def repository_index(request: bytes, context: Any) -> bytes:
        ready_only = any(
            number == 2 and wire_type == 0 and value
            for number, wire_type, value in protowire.entries(request)
        )
        return b"".join(protowire.field(1, _model_index(row)) for row in index(ready_only))

    handler = grpc.method_handlers_generic_handler(
        SERVICE, {"RepositoryIndex": grpc.unary_unary_rpc_method_handler(repository_index)}
    )
    add_kserve_servicer = grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server

    def add_servicers(servicer: Any, server: Any) -> None:
        add_kserve_servicer(servicer, server)
        server.add_generic_rpc_handlers((handler,))

    grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server = add_servicers


def _model_index(row: dict[str, str]) -> bytes:
    return b"".join(
        protowire.field(number, row[key].encode())
        for number, key in enumerate(_INDEX_FIELDS, start=1)
        if row.get(key)
    )
