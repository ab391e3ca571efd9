"""The RQ job `scripts/bench-processes` enqueues; the worker type imports it from its release
folder, so it imports nothing but redis."""
import os
import time

import redis


def record(n: int) -> None:
    """Wait 20 ms, then note job `n` done and count its runs (a job run twice shows)."""
    r = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])
    time.sleep(0.02)
    pipe = r.pipeline()
    pipe.sadd("bench:done", n)
    pipe.hincrby("bench:runs", str(n), 1)
    pipe.execute()
