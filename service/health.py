"""The ``grpc.health.v1.Health`` service: grpcio-health-checking's asyncio servicer, with two fixes.

* **Watchers of one service share their condition safely.** The upstream ``Watch``
  (``grpc_health/v1/_async.py``) deletes the service's condition when *any* of its watchers
  leaves, while the others still wait on it; the next ``set()`` then finds no condition and
  notifies nobody, so a remaining watcher never hears a later change (NOT_SERVING on SIGTERM, a
  model going down) until it is cut off. Here each condition is reference-counted by its watchers
  and dropped with the last one.
* **Watch streams are capped** (``max_health_watches``): health calls need no token and are not
  counted in ``max_concurrent_rpcs`` (probes must always be answered), so without a cap anyone who
  can reach the port could hold any number of them open (about 15 KiB each). Beyond the cap a new
  Watch gets RESOURCE_EXHAUSTED; ``Check`` is never limited, so probes keep working.

Otherwise the behaviour is upstream's: the first response carries the current status (or
SERVICE_UNKNOWN), each later one a changed status (intermediate ones may be skipped), and
:meth:`enter_graceful_shutdown` turns every service NOT_SERVING for good; a Watch then ends once it
has written that, so open Watch streams do not hold the shutdown for its grace. A response is written
after the condition's lock is released, so a client that does not read its Watch stream cannot
hold up ``set()`` (which the server waits on while loading models and shutting down).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer as _UpstreamHealthServicer

WATCH_METHOD = "/grpc.health.v1.Health/Watch"


class HealthServicer(_UpstreamHealthServicer):
    """The asyncio health servicer with reference-counted watch conditions and a Watch cap.

    Create it on the event loop that serves it (its conditions belong to that loop).

    Args:
        max_watches: most Watch streams open at once; 0 = no limit.
        on_reject: called with (method, status code name) for each refused Watch (metrics).
    """

    def __init__(self, max_watches: int = 0, on_reject: Callable[[str, str], None] | None = None) -> None:
        super().__init__()
        # A plain dict (upstream's is a defaultdict): a condition exists exactly while its service
        # has watchers, and _set() (upstream's) notifies through it when it exists.
        self._server_watchers: dict[str, asyncio.Condition] = {}
        self._watcher_counts: dict[str, int] = {}
        self._max_watches = max_watches
        self._on_reject = on_reject
        self._watches = 0

    @property
    def watches(self) -> int:
        """Watch streams open now."""
        return self._watches

    async def Watch(self, request: health_pb2.HealthCheckRequest, context) -> None:
        if self._max_watches and self._watches >= self._max_watches:
            if self._on_reject is not None:
                self._on_reject(WATCH_METHOD, grpc.StatusCode.RESOURCE_EXHAUSTED.name)
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"server has {self._watches} open health Watch streams (max_health_watches); "
                "retry later or poll with Check",
            )
        service = request.service
        condition = self._server_watchers.get(service)
        if condition is None:
            condition = self._server_watchers[service] = asyncio.Condition()
        self._watcher_counts[service] = self._watcher_counts.get(service, 0) + 1
        self._watches += 1
        last_status = None
        try:
            while True:
                async with condition:
                    status = self._status(service)
                    while status == last_status:
                        await condition.wait()
                        status = self._status(service)
                await context.write(health_pb2.HealthCheckResponse(status=status))
                last_status = status
                if self._gracefully_shutting_down:
                    # NOT_SERVING for good: the stream has nothing more to say, and an open one would
                    # hold the shutdown for its whole grace period. Ending it (OK) makes a
                    # client-side health checker call again, which the draining server refuses.
                    return
        finally:
            self._watches -= 1
            left = self._watcher_counts[service] - 1
            if left:
                self._watcher_counts[service] = left
            else:
                del self._watcher_counts[service]
                del self._server_watchers[service]

    def _status(self, service: str) -> health_pb2.HealthCheckResponse.ServingStatus.ValueType:
        return self._server_status.get(service, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)
