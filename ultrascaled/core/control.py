"""The seam between the control API and the reconciler: what the API may read and ask for.

The API reaches the fleet only through `FleetControl`; `Supervisor` provides it, and the API's
tests provide a small fake. Nothing here imports the reconciler (or aiohttp).
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol


class ScaleRefused(Exception):
    """A request the fleet refuses; `code` is one of the API's error codes (out_of_range,
    over_budget, spec_invalid), the message says why and by how much."""

    def __init__(self, code: str, message: str):
        self.code = code
        super().__init__(message)


class EventSource(Protocol):
    """The event log (`ultrascaled.observe.events.EventLog`)."""

    @property
    def last_seq(self) -> int: ...
    def since(self, seq: int = 0, limit: int | None = None) -> list[dict[str, Any]]: ...
    def follow(self) -> Any: ...            # an asyncio.Queue of event records
    def unfollow(self, q: Any) -> None: ...
    def emit(self, event: str, level: str = "info", log: bool = True, **fields: Any) -> dict[str, Any]: ...


class AlertSink(Protocol):
    """Where the daemon's own alerts go (`observe.alerts.AlertManager`, or events only)."""

    def fire(self, name: str, message: str, **labels: Any) -> None: ...
    def resolve(self, name: str, message: str = "", **labels: Any) -> None: ...


class UpstreamStatus(Protocol):
    def status(self) -> dict[str, Any]: ...


class AutoscaleControl(Protocol):
    """The autoscaler (`ultrascaled.supervise.autoscale_loop.Autoscaler`) as the faces use it:
    `FleetControl.autoscaler`, None when the daemon runs none (the /autoscale routes answer 404).
    An operator's scale pauses it; `FleetControl.scale` applies that rule and says so."""

    def status(self) -> dict[str, Any]: ...
    def pause(self, seconds: float | None, reason: str) -> dict[str, Any]: ...
    def resume(self) -> dict[str, Any]: ...
    def metric_families(self) -> list: ...


class QueueAutoscaleControl(Protocol):
    """The worker types' autoscaling on queue depth (`ultrascaled.supervise.queue_scale_loop.
    QueueScaler`): `GET /autoscale`'s `processes`, `POST /autoscale/resume {"process": NAME}`."""

    def status(self) -> dict[str, Any]: ...
    def resume(self, name: str) -> dict[str, Any]: ...   # KeyError: not such a type


class FleetControl(Protocol):
    """Everything the API handlers use. Handlers change wanted state; they never spawn, signal
    or stop anything themselves."""

    events: EventSource
    upstream: UpstreamStatus
    autoscaler: AutoscaleControl | None
    queues: QueueAutoscaleControl           # worker types on their queue's depth (may be absent in a fake)
    traffic: Any                            # core.traffic's TrafficSource, or None (no traffic log)
    count: int
    counters: dict[str, Any]
    shutting_down: bool

    @property
    def wanted(self) -> tuple[int, ...]: ...
    @property
    def instances(self) -> Mapping[int, Any]: ...   # keyed by port: only `in` and sorted() are used

    def snapshot(self) -> dict[str, Any]: ...
    def health(self) -> tuple[bool, list[str]]: ...
    def scale(self, n: int, source: str = "operator") -> str | None: ...
    # raises ScaleRefused; returns what to tell the operator besides (an operator's scale
    # pauses the autoscaler), or None
    def processes(self) -> dict[str, Any]: ...
    # `GET /processes`: type name -> kind, desired, ready, instances (web first, then the workers)
    def scale_process(self, name: str, n: int, source: str = "operator") -> dict[str, Any]: ...
    # raises ScaleRefused (not_found for an unknown type, out_of_range); `web` is scale()
    def restart_process(self, name: str) -> dict[str, Any]: ...
    # `POST /processes/{name}/restart`: raises ScaleRefused (not_found, a job); `web` is restart()
    def process_metric_families(self) -> list: ...
    # /metrics: the worker and job types (observe/metrics.py process_families)
    def jobs_listing(self) -> dict[str, Any]: ...
    # `GET /jobs`: job name -> schedule, concurrency, next_run, last_run, running
    def job_runs(self, name: str) -> list[dict[str, Any]]: ...
    # `GET /jobs/{name}/runs`: newest first; raises ScaleRefused(not_found)
    def run_job(self, name: str) -> dict[str, Any]: ...
    # `POST /jobs/{name}/run`: raises ScaleRefused (not_found, job_running, shutting_down)
    def restart(self, port: int | None = None) -> list[int]: ...
    def log_path(self, port: int) -> Path: ...
    def metrics_dirs(self) -> dict[int, str]: ...
    # releases (ultrascaled/supervise/rollout_loop.py): each raises ScaleRefused
    async def deploy(self, directory: str | None = None, release: str | None = None,
                     allow_data: bool = False) -> dict[str, Any]: ...
    def rollback(self) -> dict[str, Any]: ...
    def releases(self) -> list[dict[str, Any]]: ...
