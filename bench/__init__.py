"""The ultrascale benchmark suite: `scripts/bench` (see docs/benchmarks.md).

Modules:
  util       process tracking and cleanup, tiny HTTP probes, wrk output parsing, machine facts
  setups     the four setups (sync gunicorn, supervisord, hand-wired, ultrascaled)
  scenarios  the measurements (throughput, failures, recovery, footprint, cli)
  report     Markdown tables and the generated section of docs/benchmarks.md
  figures    the fleet figures (scripts/bench-fleet)
  chaos      random kill -9 under load (scripts/chaos)
  redis_failover  a Redis primary killed under load, three topologies (scripts/redis-failover)
  queue      a queue burst: a worker type autoscaled on its depth vs one worker (scripts/bench-queue)

The daemon is launched the way the tests launch it, by `support.harness` (tests/support/):
appended to sys.path here so that `python -m bench` works from the checkout's root.
"""
import sys
from pathlib import Path

_SUPPORT_PARENT = str(Path(__file__).resolve().parent.parent / "tests")
if _SUPPORT_PARENT not in sys.path:
    sys.path.append(_SUPPORT_PARENT)
