"""Unit tests for app.cache with an injected clock and a hand-written fake Redis tier."""
from __future__ import annotations

import subprocess
import textwrap
import threading
import time

import pytest

from app.cache import CircuitBreaker, MemoryLRU, TwoTierCache

from app_helpers import PYTHON, REPO


class FakeClock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class FakeRedisTier:
    """Records calls; ``fail`` makes every call raise like a dead Redis."""

    def __init__(self):
        self.data: dict = {}
        self.calls: list[tuple] = []
        self.fail = False

    def _maybe_fail(self):
        if self.fail:
            raise ConnectionError("redis down (fake)")

    def get(self, key):
        self.calls.append(("get", key))
        self._maybe_fail()
        from app.cache import _MISSING
        return self.data.get(key, _MISSING)

    def set(self, key, value, ttl):
        self.calls.append(("set", key, ttl))
        self._maybe_fail()
        self.data[key] = value

    def delete(self, key):
        self.calls.append(("delete", key))
        self._maybe_fail()
        self.data.pop(key, None)

    def ping(self):
        self.calls.append(("ping",))
        self._maybe_fail()

    def reset(self):
        self.calls.append(("reset",))


def sync_spawn(fn):
    fn()


def make_cache(**kw):
    clock = kw.pop("clock", FakeClock())
    return TwoTierCache(clock=clock, spawn=kw.pop("spawn", sync_spawn), **kw), clock


# -- memory tier ---------------------------------------------------------------------------

def test_loader_runs_once_then_memory_answers():
    cache, _ = make_cache()
    calls = []
    loader = lambda: calls.append(1) or "v"  # noqa: E731
    assert cache.fetch("k", loader) == ("v", "loader")
    assert cache.fetch("k", loader) == ("v", "memory")
    assert cache.get_or_load("k", loader) == "v"
    assert len(calls) == 1
    s = cache.stats.as_dict()
    assert (s["misses"], s["loads"], s["hits_memory"], s["hits_redis"]) == (1, 1, 2, 0)
    assert s["hit_rate_memory"] == pytest.approx(2 / 3, abs=1e-3)


def test_lru_evicts_least_recently_used_and_counts_evictions():
    lru = MemoryLRU(max_items=3, ttl=60, clock=FakeClock())
    for k in "abc":
        lru.set(k, k.upper())
    assert lru.get("a") == "A"          # a becomes most recently used
    lru.set("d", "D")                   # evicts b, the least recently used
    assert "b" not in lru
    assert [k for k in "acd" if k in lru] == ["a", "c", "d"]
    assert lru.stats.evictions == 1
    assert len(lru) == 3


def test_default_capacity_is_50000_items_and_ttl_300s():
    cache = TwoTierCache()
    assert cache.memory.max_items == 50_000
    assert cache.ttl == 300.0
    assert cache.redis_state == "not_configured"


def test_ttl_expiry_reloads_after_ttl_with_injected_clock():
    cache, clock = make_cache(ttl=10)
    n = iter(range(100))
    loader = lambda: next(n)  # noqa: E731
    assert cache.get_or_load("k", loader) == 0
    clock.advance(9.9)
    assert cache.get_or_load("k", loader) == 0          # still fresh
    clock.advance(0.2)
    assert cache.get_or_load("k", loader) == 1          # expired: loaded again
    assert cache.stats.expirations == 1


def test_per_call_ttl_overrides_default():
    cache, clock = make_cache(ttl=300)
    cache.get_or_load("k", lambda: "a", ttl=1)
    clock.advance(1.5)
    assert cache.fetch("k", lambda: "b") == ("b", "loader")


def test_from_env_reads_cache_ttl_and_rejects_bad_values():
    cache = TwoTierCache.from_env({"CACHE_TTL": "42", "CACHE_MAX_ITEMS": "7"})
    assert (cache.ttl, cache.memory.max_items, cache.redis) == (42.0, 7, None)
    with pytest.raises(ValueError, match="CACHE_TTL"):
        TwoTierCache.from_env({"CACHE_TTL": "soon"})


# -- Redis tier (fake) -------------------------------------------------------------------------

def test_redis_hit_fills_memory_and_is_counted_per_tier():
    fake = FakeRedisTier()
    fake.data["k"] = "from-redis"
    cache, _ = make_cache(redis_tier=fake)
    assert cache.fetch("k", lambda: pytest.fail("loader must not run")) == ("from-redis", "redis")
    assert cache.fetch("k", lambda: pytest.fail("loader must not run")) == ("from-redis", "memory")
    s = cache.stats.as_dict()
    assert (s["hits_redis"], s["hits_memory"], s["misses"]) == (1, 1, 0)
    assert cache.redis_state == "ok"


def test_loaded_value_is_written_to_both_tiers_with_ttl():
    fake = FakeRedisTier()
    cache, _ = make_cache(redis_tier=fake, ttl=30)
    cache.get_or_load("k", lambda: 5)
    assert fake.data["k"] == 5
    assert ("set", "k", 30) in fake.calls
    assert cache.memory.get("k") == 5


def test_redis_errors_open_breaker_then_redis_is_skipped_without_errors():
    fake = FakeRedisTier()
    fake.fail = True
    cache, _ = make_cache(redis_tier=fake, breaker_failures=2, breaker_retry=5)
    for i in range(2):                     # get fails (+1), set fails (+1) -> open after the first key
        assert cache.get_or_load(f"k{i}", lambda i=i: i) == i
    assert cache.redis_state == "down"
    calls_when_open = len(fake.calls)
    for i in range(2, 50):
        assert cache.get_or_load(f"k{i}", lambda i=i: i) == i
    assert len(fake.calls) == calls_when_open, "an open breaker must not touch Redis"
    s = cache.stats.as_dict()
    assert s["errors_redis"] == 2
    assert s["skipped_redis"] >= 48


def test_breaker_probes_on_timer_and_closes_when_redis_is_back():
    fake = FakeRedisTier()
    fake.fail = True
    cache, clock = make_cache(redis_tier=fake, breaker_failures=1, breaker_retry=2)
    cache.get_or_load("a", lambda: 1)
    assert cache.redis_state == "down"
    clock.advance(2.1)
    cache.get_or_load("b", lambda: 2)       # triggers one probe; still failing
    assert fake.calls.count(("ping",)) == 1
    assert cache.redis_state == "down"
    cache.get_or_load("c", lambda: 3)       # too soon for another probe
    assert fake.calls.count(("ping",)) == 1
    fake.fail = False
    clock.advance(2.1)
    cache.get_or_load("d", lambda: 4)       # probe succeeds: breaker closes
    assert cache.redis_state == "ok"
    cache.get_or_load("e", lambda: 5)
    assert fake.data["e"] == 5              # writes reach Redis again


def test_breaker_allow_never_runs_probe_inline_when_spawn_is_background():
    started, probed = [], []
    b = CircuitBreaker(probe=lambda: probed.append(1), failure_threshold=1, retry_interval=0,
                       clock=FakeClock(), spawn=lambda fn: started.append(fn))
    b.record_failure()
    assert b.allow() is False
    assert probed == [] and len(started) == 1   # handed to spawn, not run inline
    assert b.allow() is False and len(started) == 1, "one probe at a time"
    started[0]()
    assert probed == [1] and b.allow() is True  # what spawn was given is the probe; it closed the breaker


def test_reset_after_fork_drops_redis_client_and_closes_breaker():
    fake = FakeRedisTier()
    fake.fail = True
    cache, _ = make_cache(redis_tier=fake, breaker_failures=1)
    cache.get_or_load("a", lambda: 1)
    assert cache.redis_state == "down"
    cache.reset_after_fork()
    assert ("reset",) in fake.calls
    assert cache.redis_state == "ok"
    assert cache.memory.get("a") == 1


# -- single flight, errors, decorator, metrics hook ----------------------------------------------

def together(n, fn, gate):
    """Run fn in n threads at once while the loader waits at `gate`; open it once every thread
    is under way, then join them."""
    start = threading.Barrier(n + 1)

    def run():
        start.wait(5)
        fn()
    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    start.wait(5)
    time.sleep(0.2)  # past the barrier, each thread reaches the single-flight wait without I/O
    gate.set()
    for t in threads:
        t.join(5)


def test_single_flight_with_threads_calls_loader_once():
    cache = TwoTierCache()
    calls = []
    gate = threading.Event()

    def loader():
        calls.append(1)
        gate.wait(2)
        return "v"

    results = []
    together(16, lambda: results.append(cache.fetch("k", loader)), gate)
    assert len(calls) == 1
    assert sorted(r[0] for r in results) == ["v"] * 16
    assert cache.stats.coalesced == 15


def test_single_flight_with_gevent_greenlets_under_monkey_patching():
    # A fresh interpreter, patched the way gunicorn's gevent worker patches itself.
    script = textwrap.dedent("""
        from gevent import monkey; monkey.patch_all()
        import gevent
        from app.cache import TwoTierCache
        cache = TwoTierCache()
        calls = []
        def loader():
            calls.append(1)
            gevent.sleep(0.05)          # yields: the other greenlets run and must wait
            return "v"
        jobs = [gevent.spawn(cache.get_or_load, "k", loader) for _ in range(50)]
        gevent.joinall(jobs, timeout=5)
        print(len(calls), sum(j.value == "v" for j in jobs), cache.stats.coalesced)
    """)
    out = subprocess.run([PYTHON, "-c", script], cwd=str(REPO), capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "50", "49"]


def test_loader_error_reaches_every_waiter_and_is_not_cached():
    cache = TwoTierCache()
    gate = threading.Event()

    def bad():
        gate.wait(2)
        raise KeyError("boom")

    errors = []

    def call():
        try:
            cache.get_or_load("k", bad)
        except KeyError as exc:
            errors.append(exc)

    together(4, call, gate)
    assert len(errors) == 4
    assert cache.get_or_load("k", lambda: "ok") == "ok"
    assert cache.stats.load_errors == 1


def test_cached_decorator_uses_key_function():
    cache, _ = make_cache()
    calls = []

    @cache.cached(lambda x: f"sq:{x}")
    def square(x):
        calls.append(x)
        return x * x

    assert [square(3), square(3), square(4)] == [9, 9, 16]
    assert calls == [3, 4]
    assert cache.memory.get("sq:3") == 9


def test_none_is_a_cacheable_value():
    cache, _ = make_cache()
    calls = []
    assert cache.get_or_load("k", lambda: calls.append(1)) is None
    assert cache.get_or_load("k", lambda: calls.append(1)) is None
    assert calls == [1]


def test_on_event_hook_receives_every_counter_increment():
    events = []
    cache = TwoTierCache(max_items=1, on_event=lambda name, n: events.append((name, n)))
    cache.get_or_load("a", lambda: 1)
    cache.get_or_load("a", lambda: 1)
    cache.get_or_load("b", lambda: 2)       # evicts a
    assert ("misses", 1) in events and ("hits_memory", 1) in events and ("evictions", 1) in events
    assert events.count(("loads", 1)) == 2
