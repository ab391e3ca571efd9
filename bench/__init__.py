"""The ultrascale benchmark suite: `scripts/bench` (see docs/benchmarks.md).

Modules:
  util       process tracking and cleanup, tiny HTTP probes, wrk output parsing, machine facts
  setups     the four setups (sync gunicorn, supervisord, hand-wired, ultrascaled)
  scenarios  the measurements (throughput, failures, recovery, footprint, cli)
  report     Markdown tables and the generated section of docs/benchmarks.md
"""
