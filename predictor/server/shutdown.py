"""Graceful shutdown for Kubernetes: on SIGTERM, stop being ready, finish what is in
flight, then exit 0.

kserve 0.21's own handler unloads every model at once (in-flight requests then fail) and,
with one worker, never stops the REST server, so the process lingers until SIGKILL.
"""

from __future__ import annotations

import asyncio
import logging

from kserve import ModelServer

logger = logging.getLogger(__name__)


class GracefulModelServer(ModelServer):
    def stop(self, sig: int) -> None:
        logger.info("signal %s: draining (readiness now false)", sig)
        for model in self.registered_models.get_models().values():
            model.ready = False
        asyncio.get_running_loop().create_task(self._drain_and_exit())

    async def _drain_and_exit(self) -> None:
        # uvicorn stops accepting connections and waits for in-flight requests to finish.
        if self._rest_server is not None:
            self._rest_server._server.should_exit = True
        if self._grpc_server is not None:
            await self._grpc_server.stop()
        logger.info("in-flight requests drained; exiting")
