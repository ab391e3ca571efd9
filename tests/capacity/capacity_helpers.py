"""Test helpers: specs built directly from the dataclasses (no YAML, no host), for the planner's tests."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from ultrascaled.core import capacity
from ultrascaled.spec.nginx import NginxSettings
from ultrascaled.spec import (GunicornSection, InstancesSection, MemorySection, MongoSection, Spec)


@dataclass(frozen=True)
class PoolSpec(Spec):
    """A Spec whose MongoDB pool is fixed by the test (None: spec.py's own formula)."""
    pool: Optional[int] = None

    def mongo_pool_per_process(self) -> int:
        return super().mongo_pool_per_process() if self.pool is None else self.pool


def make_spec(*, count=2, min=1, max=4, workers=1, worker_connections=1000, limit_mb=500,
              budget_mb=8192, mongo_budget=1000, min_pool=0, pool="fits", nginx=None,
              worker_class="gevent", threads=1, concurrency=None) -> PoolSpec:
    """worker_class: gevent unless given (the reference app's; the spec's default is sync).
    pool: an int, "fits" (the largest pool within the budget, monitoring included) or
    "daemon" (whatever spec.py's mongo_pool_per_process hands out)."""
    spec = PoolSpec(
        instances=InstancesSection(count=count, min=min, max=max),
        gunicorn=GunicornSection(workers=workers, worker_connections=worker_connections,
                                 worker_class=worker_class, threads=threads,
                                 concurrency=concurrency),
        memory=MemorySection(worker_limit_mb=limit_mb, fleet_budget_mb=budget_mb),
        mongodb=MongoSection(connection_budget=mongo_budget, min_pool_size=min_pool),
        nginx=NginxSettings(**({"mode": "managed", "prefix": "/tmp/x", "worker_processes": "8"}
                               | (nginx or {}))),
    )
    if pool == "fits":
        return dataclasses.replace(spec, pool=capacity.mongo_pool_that_fits(spec))
    if pool == "daemon":
        return spec
    return dataclasses.replace(spec, pool=pool)
