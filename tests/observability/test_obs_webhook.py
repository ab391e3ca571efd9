"""WebhookSink against real aiohttp receivers on loopback, and the AlertManager loop."""
import asyncio
import contextlib
import dataclasses
import time

import pytest
from aiohttp import web

from obs_helpers import write_many
from ultrascaled.observe import metrics
from ultrascaled.observe.alert_rules import MetricSample
from ultrascaled.observe.alerts import AlertManager, Sampler, WebhookSink
from ultrascaled.spec import AlertsSection

pytestmark = pytest.mark.timeout(30)


class Receiver:
    """A real HTTP server on 127.0.0.1:<free port>; `mode` is accept, hang, fail or reject."""

    def __init__(self, mode="accept"):
        self.mode = mode
        self.bodies = []
        self.release = asyncio.Event()
        self.runner = None

    async def handle(self, request):
        self.bodies.append(await request.json())
        if self.mode == "hang":
            await self.release.wait()
        if self.mode == "fail":
            return web.Response(status=500)
        if self.mode == "reject":
            return web.Response(status=404)
        return web.json_response({"ok": True})

    async def __aenter__(self):
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/hook"
        return self

    async def __aexit__(self, *exc):
        self.release.set()
        await self.runner.cleanup()


async def until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.01)


PAYLOAD = {"alert": "cpu", "status": "firing", "value": 91.0, "threshold": 80.0,
           "message": "fleet CPU 91%", "fleet": "shop", "time": 1.0}


@contextlib.asynccontextmanager
async def sink_on(mode: str, **kw):
    """A real receiver in `mode` and a WebhookSink posting to it (closed at the end)."""
    async with Receiver(mode) as rx:
        sink = WebhookSink(rx.url, **kw)
        try:
            yield rx, sink
        finally:
            await sink.close()


def test_accepting_receiver_gets_the_json_payload():
    async def main():
        async with sink_on("accept", timeout=1.0, retries=2, backoff=0.01) as (rx, sink):
            assert sink.send(PAYLOAD) is True
            await until(lambda: sink.sent == 1)
            assert rx.bodies == [PAYLOAD]
            assert (sink.attempts, sink.failed, sink.dropped) == (1, 0, 0)
    asyncio.run(main())


def test_hanging_receiver_times_out_retries_and_never_blocks_the_caller():
    async def main():
        async with sink_on("hang", timeout=0.2, retries=2, backoff=0.05) as (rx, sink):
            ticks = 0

            async def ticker():  # the "supervision" loop: it must keep running meanwhile
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.01)
                    ticks += 1

            tick = asyncio.create_task(ticker())
            try:
                sink.send(PAYLOAD)
                assert sink.attempts == 0, "send() only queues: nothing went out before it returned"
                await until(lambda: sink.failed == 1)
                assert len(rx.bodies) == 3 and sink.attempts == 3 and sink.sent == 0
                # three 0.2 s timeouts went by: a sink that blocked the loop would leave ~0 ticks
                assert ticks >= 10, ticks
            finally:
                tick.cancel()
    asyncio.run(main())


def test_failing_receiver_gets_retries_then_the_sink_gives_up_and_counts():
    async def main():
        async with sink_on("fail", timeout=1.0, retries=3, backoff=0.01) as (rx, sink):
            sink.send(PAYLOAD)
            sink.send({**PAYLOAD, "status": "resolved"})
            assert sink.attempts == 0, "send() only queues"
            await until(lambda: sink.failed == 2)
            assert len(rx.bodies) == 8 and sink.sent == 0
            assert sink.counters() == {"alerts_webhook_sent": 0, "alerts_webhook_failed": 2,
                                       "alerts_webhook_dropped": 0}
    asyncio.run(main())


def test_4xx_is_permanent_no_retry():
    async def main():
        async with sink_on("reject", timeout=1.0, retries=3, backoff=0.01) as (rx, sink):
            sink.send(PAYLOAD)
            await until(lambda: sink.failed == 1)
            await asyncio.sleep(0.05)
            assert len(rx.bodies) == 1
    asyncio.run(main())


def test_full_queue_drops_and_counts_without_waiting():
    async def main():
        async with sink_on("hang", timeout=5.0, retries=0, queue_size=2) as (rx, sink):
            results = [sink.send({**PAYLOAD, "n": i}) for i in range(10)]
            assert results == [True, True] + [False] * 8 and sink.dropped == 8
            assert sink.attempts == 0, "send() returned without waiting for the hanging receiver"
    asyncio.run(main())


def test_unreachable_receiver_is_a_counted_failure():
    async def main():
        sink = WebhookSink("http://127.0.0.1:9/hook", timeout=0.5, retries=1, backoff=0.01)
        try:
            sink.send(PAYLOAD)
            await until(lambda: sink.failed == 1)
            assert sink.attempts == 2
        finally:
            await sink.close()
    asyncio.run(main())


class Clock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


def ms(**kw):
    base = dict(interval=5.0, requests=1000, errors_5xx=0, p95_latency=0.1, cpu_seconds=1,
                cpu_percent=10.0, memory_bytes=1.0, memory_budget_bytes=10.0, cache_hits=90,
                cache_misses=10, db_connections=None)
    base.update(kw)
    return MetricSample(**base)


def test_manager_emits_events_notifies_the_webhook_and_lists_what_fires():
    async def main():
        async with Receiver("accept") as rx:
            section = dataclasses.replace(AlertsSection(), webhook_url=rx.url, webhook_backoff=0.01,
                                          cpu_for=10)
            samples = [None, ms(cpu_percent=95.0), ms(cpu_percent=95.0), ms(cpu_percent=20.0)]
            events = []
            mono, wall = Clock(50.0), Clock(1_700_000_000.0)
            mgr = AlertManager(section, lambda: samples.pop(0),
                               lambda name, level="info", **f: events.append((name, level, f)),
                               fleet="shop", clock=mono, wall=wall)
            try:
                assert await mgr.tick() == []
                assert await mgr.tick() == [] and mgr.firing() == []
                mono.t += 10; wall.t += 10
                (t,) = await mgr.tick()
                assert t.status == "firing" and events[0][:2] == ("alert.firing", "warning")
                assert events[0][2]["alert"] == "cpu" and events[0][2]["value"] == 95.0
                mono.t += 5; wall.t += 5
                (f,) = mgr.firing()
                assert f["alert"] == "cpu" and f["threshold"] == 80.0 and f["value"] == 95.0
                assert f["since"] == 1_700_000_010.0 and f["for"] == 10
                await mgr.tick()
                assert events[1][:2] == ("alert.resolved", "info") and mgr.firing() == []
                await until(lambda: len(rx.bodies) == 2)
                assert [b["status"] for b in rx.bodies] == ["firing", "resolved"]
                assert rx.bodies[0]["fleet"] == "shop" and rx.bodies[0]["time"] == 1_700_000_010.0
                assert set(rx.bodies[0]) == {"alert", "status", "value", "threshold", "message",
                                             "fleet", "time"}
                assert mgr.counters() == {"alerts_fired": 1, "alerts_webhook_sent": 2,
                                          "alerts_webhook_failed": 0, "alerts_webhook_dropped": 0}
            finally:
                await mgr.close()
    asyncio.run(main())


def test_run_loop_survives_a_failing_sample_and_keeps_its_interval():
    async def main():
        calls = []

        def sample():
            calls.append(time.monotonic())
            if len(calls) == 2:
                raise RuntimeError("scrape broke")
            return ms(cpu_percent=99.0)
        section = dataclasses.replace(AlertsSection(), evaluation_interval=0.05, cpu_for=0)
        events = []
        mgr = AlertManager(section, sample, lambda n, **f: events.append(n), fleet="shop")
        task = asyncio.create_task(mgr.run(), name="alerts")
        try:
            await until(lambda: len(calls) >= 5)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert events == ["alert.firing"]
        assert [r["alert"] for r in mgr.firing()] == ["cpu"]
        gaps = [b - a for a, b in zip(calls, calls[1:])]
        assert min(gaps) > 0.03
    asyncio.run(main())


def test_sampler_over_real_metric_folders_fires_the_error_rate_rule(tmp_path):
    """End to end: app files -> metrics.families -> Sampler -> evaluate."""
    d = tmp_path / "8001"
    write_many([d], workers=2, requests=100)
    snap = {"fleet": "shop", "instances": [], "memory": {"total_rss_bytes": 1, "budget_bytes": 10}}
    clock = Clock(0.0)
    renderer = metrics.Renderer(cache_ttl=0)  # read the folder on every call
    sampler = Sampler(lambda: asyncio.to_thread(renderer.families, snap, {}, {}, {8001: str(d)}),
                      clock=clock, cpu_count=1)

    async def main():
        assert await sampler() is None
        write_many([d], workers=2, requests=100, errors_per_100=10)  # new worker pids, more files
        clock.t = 5.0
        s = await sampler()
        assert s.requests == 200 and s.errors_5xx == 20 and s.interval == 5.0
        section = dataclasses.replace(AlertsSection(), error_rate_for=0)
        events = []
        mgr = AlertManager(section, lambda: s, lambda n, **f: events.append((n, f["alert"])),
                           fleet="shop")
        await mgr.tick()
        assert ("alert.firing", "error_rate") in events
    asyncio.run(main())


def test_the_alerts_subset_of_the_families_gives_the_same_sample_as_every_family(tmp_path):
    """metrics.families(only=SAMPLE_SERIES), what the alerts read, against the whole exposition."""
    from ultrascaled.observe.alert_rules import SAMPLE_SERIES, sample_from
    d = tmp_path / "8001"
    write_many([d], workers=2, requests=100)
    snap = {"fleet": "shop", "memory": {"total_rss_bytes": 7, "budget_bytes": 10, "worker_limit_bytes": 3},
            "instances": [{"port": 8001, "state": "running", "cpu_seconds": 1.5, "master_rss": 5,
                           "workers": [{"pid": 11, "rss": 2, "cpu_seconds": 0.5}]}]}
    renderer = metrics.Renderer(cache_ttl=0)
    full0 = renderer.families(snap, {}, {"alerts_fired": 1}, {8001: str(d)})
    part0 = renderer.families(snap, {}, {"alerts_fired": 1}, {8001: str(d)}, only=SAMPLE_SERIES)
    write_many([d], workers=2, requests=100, errors_per_100=10)
    snap["instances"][0]["cpu_seconds"] = 2.5
    full1 = renderer.families(snap, {}, {"alerts_fired": 1}, {8001: str(d)})
    part1 = renderer.families(snap, {}, {"alerts_fired": 1}, {8001: str(d)}, only=SAMPLE_SERIES)
    assert len(part1) < len(full1)
    whole, subset = sample_from(full0, full1, 5.0, 2), sample_from(part0, part1, 5.0, 2)
    assert whole == subset
    assert subset.requests == 200 and subset.errors_5xx == 20 and subset.cpu_seconds == 1.0
    assert subset.memory_bytes == 7 and subset.memory_budget_bytes == 10
    assert metrics.Renderer(cache_ttl=0).render(snap, {}, {}, {8001: str(d)}).count(b"instance_state{") == 7
