"""BackgroundLoad against a real local server: start/stop, self-stop, failure counting."""
import multiprocessing
import time

import pytest

from loadtest import BackgroundLoad, ConfigError, LoopbackError


def wait_until(cond, timeout=10.0) -> bool:
    """Poll cond() until it holds (True) or the timeout passes (False)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.fixture
def started():
    """Start BackgroundLoads through this; any left running are stopped even if the test fails."""
    loads = []

    def start(*args, **kwargs):
        bg = BackgroundLoad(*args, **kwargs)
        loads.append(bg)
        return bg.start()

    yield start
    for bg in loads:
        if bg.running:
            bg.stop()


@pytest.mark.integration   # real servers or processes, about a second or more: the full suite runs it
def test_start_stop_counts_ok(server, started):
    # an hour's limit: only the stop request can end it (stop() raises if it does not end soon)
    bg = started(f"{server.base}/ok", users=5, duration_limit=3600, think_ms=5)  # not at full speed
    assert multiprocessing.active_children()  # the load runs in a subprocess
    assert bg.wait_for_ok(50, timeout=10)  # live counts (the other tests wait on the server's)
    result = bg.stop()
    assert result.wall_s < 3600  # stopped on request, not at the limit
    assert result.failed == 0
    assert result.ok >= 50
    assert result.cancelled == 0
    assert result.status_counts == {200: result.ok}
    assert server.requests == result.ok  # every request the server answered was counted
    assert not bg.running


@pytest.mark.integration   # real servers or processes, about a second or more: the full suite runs it
def test_stops_by_itself_at_duration_limit(server, started):
    bg = started(f"{server.base}/ok", users=2, duration_limit=0.4, think_ms=5)
    assert wait_until(lambda: not bg.running)
    result = bg.stop()
    assert result.ok > 0 and result.failed == 0
    assert result.wall_s > 0.35  # ended at its limit by itself (wait_until), not before it


def test_failures_counted_by_status_and_kind(server, started):
    bg = started(f"{server.base}/", users=4, duration_limit=30,
                 paths=[("/ok", 1), ("/500", 1), ("/404", 1)])
    assert wait_until(lambda: server.requests >= 60)  # some of each path (seeded choice)
    result = bg.stop()
    assert result.ok == result.status_counts[200]
    assert result.failed == result.status_counts[500] + result.status_counts[404]
    assert result.error_counts == {"http_4xx": result.status_counts[404],
                                   "http_5xx": result.status_counts[500]}
    assert result.error_samples and result.error_samples[0]["kind"] in ("http_4xx", "http_5xx")


@pytest.mark.integration   # real servers or processes, about a second or more: the full suite runs it
def test_stop_lets_in_flight_requests_finish(server, started):
    server.slow_seconds = 0.4
    bg = started(f"{server.base}/slow", users=3, duration_limit=30, timeout=2)
    assert wait_until(lambda: server.requests >= 3)  # every user is now waiting for a slow answer
    result = bg.stop()
    assert result.cancelled == 0
    assert result.failed == 0
    assert result.ok >= 3  # the in-flight requests completed and were counted


def test_requests_limit(server, started):
    bg = started(f"{server.base}/ok", users=3, duration_limit=30, requests_limit=25)
    assert wait_until(lambda: not bg.running)  # stopped by itself after 25 requests
    result = bg.stop()
    assert result.total == 25 and result.ok == 25


def test_refuses_bad_config_before_starting():
    with pytest.raises(LoopbackError):
        BackgroundLoad("http://192.168.0.1/", users=1)
    with pytest.raises(ConfigError, match="--users"):
        BackgroundLoad("http://127.0.0.1:1/", users=0)
    assert not multiprocessing.active_children()


def test_context_manager_stops_workers(server):
    with BackgroundLoad(f"{server.base}/ok", users=2, duration_limit=30) as bg:
        assert wait_until(lambda: server.requests >= 5)
    assert not bg.running
    assert not multiprocessing.active_children()
