"""The autoscaler's loop on the fake runner and clock: signals from the daemon's own samples,
changes only through Supervisor.scale (budgets veto), holds on stale data, the operator's
pause (also across a restart), events and /metrics families with the figures."""
from __future__ import annotations

import asyncio
import functools

import pytest

from fakes import Harness
from ultrascaled.spec import SpecError
from ultrascaled.supervise.autoscale_loop import Autoscaler

AUTO = """autoscale:
  enabled: true
  min_replicas: 1
  max_replicas: 5
  sync_period_seconds: 2
  metrics_window_seconds: 4
  behavior: {scale_down: {stabilization_window_seconds: 10}}
"""


def component(fn):
    @functools.wraps(fn)
    def wrapper(tmp_path, *a, **kw):
        return asyncio.run(fn(tmp_path, *a, **kw))
    return wrapper


async def no_app_metrics(dirs):
    return []


async def fleet(tmp_path, extra=AUTO, host=10.0):
    h = Harness(tmp_path, extra, autoscale=dict(host_cpu=lambda: host, app_families=no_app_metrics,
                                                 cores=lambda: 2))
    await h.start()
    return h, h.sup.autoscaler


def burn(h, load: float, seconds: float):
    """The fleet's load, `load` percent of one core in all, is shared by the workers of the
    running instances for `seconds` (the fake clock moves)."""
    workers = [w for p, i in h.rec.instances.items() if i.state.value == "running"
               for w in h.runner.procs[i.pid].workers]
    for w in workers:
        h.runner.cpu[w] = h.runner.cpu.get(w, 0.0) + load / len(workers) / 100 * seconds


async def run_for(h, auto, seconds, load, period=1.0, sample=True):
    """Move time in steps of `period`: the workers burn CPU, the sampler samples, the
    autoscaler decides every sync period."""
    decisions = []
    next_tick = h.clock.t
    end = h.clock.t + seconds
    while h.clock.t < end:
        burn(h, load, period)
        await h.advance(period, step=period)
        if sample:
            await h.sample()
        if h.clock.t >= next_tick:
            d = await auto.tick()
            decisions.append(d)
            next_tick = h.clock.t + auto.policy.sync_period_seconds
            await h.settle()
    return decisions


@component
async def test_load_over_target_scales_up_through_the_scale_path(tmp_path):
    h, auto = await fleet(tmp_path)
    await run_for(h, auto, 6, load=60)
    assert h.sup.count == 2                        # 30 % each < 70 %: nothing to do
    await run_for(h, auto, 8, load=280)           # 140 % each: twice the target
    assert h.sup.count == 4
    scale = [e for e in h.events_named("fleet.scale")]
    assert scale[-1]["source"] == "autoscale" and scale[-1]["desired"] == 4
    up = h.events_named("autoscale.scale_up")[-1]
    assert up["signals"]["cpu_utilization"]["target"] == 70
    assert up["signals"]["cpu_utilization"]["value"] > 100
    assert auto.status()["signals"]["cpu_utilization"]["value"] < 80   # 4 share it now
    assert "cpu_utilization" in up["reason"] and up["current"] == 2 and up["desired"] == 4
    assert h.states() == {p: "running" for p in (8001, 8002, 8003, 8004)}


def test_a_max_replicas_over_the_spec_budget_is_refused_with_the_count_that_fits(tmp_path):
    # memory: 1000 MiB budget, 1 worker + master at 100 MiB each: 5 instances at most; an
    # autoscaler allowed 6 would have every step to 6 vetoed at run time
    with pytest.raises(SpecError) as info:
        Harness(tmp_path, AUTO.replace("max_replicas: 5", "max_replicas: 6"))
    (err,) = [e for e in info.value.errors if e.startswith("autoscale.max_replicas")]
    assert "the budgets hold at most 5" in err and "1200 MiB exceeds the budget of 1000 MiB" in err
    assert "set autoscale.max_replicas to at most 5" in err


@component
async def test_the_fleet_reaches_the_max_replicas_the_budget_holds(tmp_path):
    h, auto = await fleet(tmp_path)
    await run_for(h, auto, 20, load=600)
    assert h.sup.count == 5
    assert not any(d["vetoes"] for d in auto.decisions)    # the budget never had to veto
    assert any("bounded to 5" in d["reason"] for d in auto.decisions)


@component
async def test_a_stalled_sampler_holds_and_never_lowers_the_count(tmp_path):
    h, auto = await fleet(tmp_path, AUTO.replace("sync_period_seconds: 2",
                                                 "sync_period_seconds: 2\n  stale_after_seconds: 3"))
    await run_for(h, auto, 4, load=140)
    decisions = await run_for(h, auto, 30, load=0, sample=False)   # the sampler stopped
    assert h.sup.count == 2
    assert "stale" in decisions[-1].reason and decisions[-1].action == "hold"


@component
async def test_idle_fleet_steps_down_only_after_the_window(tmp_path):
    h, auto = await fleet(tmp_path, AUTO.replace("count: 2", "count: 2"))
    h.sup.scale(4, source="autoscale")   # as an earlier step up left it (an operator's scale would pause)
    await h.settle()
    start = h.clock.t
    await run_for(h, auto, 8, load=10)
    assert h.sup.count == 4                         # inside the 10 s window
    await run_for(h, auto, 10, load=10)
    assert h.sup.count == 1
    down = h.events_named("autoscale.scale_down")[-1]
    assert down["desired"] == 1 and h.clock.t - start >= 10


@component
async def test_manual_scale_pauses_and_the_pause_survives_a_restart(tmp_path):
    h, auto = await fleet(tmp_path)
    said = h.sup.scale(3)                # an operator's scale: the supervisor applies the pause rule
    assert "paused until `ultrascalectl autoscale resume`" in said
    decisions = await run_for(h, auto, 6, load=600)
    assert h.sup.count == 3 and all(d.action == "hold" for d in decisions)
    assert decisions[-1].reason == "paused until resumed (manual scale to 3)"
    again = Autoscaler(h.sup, host_cpu=lambda: 10.0, app_families=no_app_metrics)   # a daemon restart
    assert again.status()["paused"] is True
    again.resume()
    assert again.status()["paused"] is False
    await run_for(h, again, 6, load=600)
    assert h.sup.count > 3


@component
async def test_a_timed_pause_ends_by_itself(tmp_path):
    h, auto = await fleet(tmp_path)
    auto.pause(5, "operator")
    await run_for(h, auto, 4, load=600)
    assert h.sup.count == 2
    await run_for(h, auto, 6, load=600)
    assert h.sup.count > 2


@component
async def test_a_saturated_host_holds_and_says_why(tmp_path):
    h, auto = await fleet(tmp_path, host=99.0)
    await run_for(h, auto, 8, load=600)
    assert h.sup.count == 2
    held = h.events_named("autoscale.hold")
    assert held and "host CPU 99%" in held[-1]["reason"] and held[-1]["level"] == "warning"


@component
async def test_disabled_autoscaler_decides_nothing(tmp_path):
    h, auto = await fleet(tmp_path, extra="")
    assert await auto.tick() is None
    assert auto.status()["enabled"] is False


@component
async def test_metric_families_carry_signal_target_and_recommendation(tmp_path):
    h, auto = await fleet(tmp_path)
    await run_for(h, auto, 6, load=280)
    fams = {f.name: f for f in auto.metric_families()}
    sig = {s.labels["signal"]: s.value for s in fams["ultrascale_autoscale_signal"].samples}
    assert sig["cpu_utilization"] > 60
    assert fams["ultrascale_autoscale_target"].samples[0].value == 70
    assert fams["ultrascale_autoscale_recommendation"].samples[0].value >= 4


@component
async def test_app_signals_in_flight_and_p95(tmp_path):
    from prometheus_client.metrics_core import GaugeMetricFamily, HistogramMetricFamily, CounterMetricFamily
    h = Harness(tmp_path, AUTO + "  target: {cpu_utilization: null, in_flight_per_worker: 0.8, "
                                 "p95_latency_seconds: 0.5}\n")
    await h.start()
    served = {"n": 0}

    async def app(dirs):
        served["n"] += 100
        n = served["n"]
        g = GaugeMetricFamily("ultrascale_http_requests_in_flight", "", labels=["instance"])
        for p in dirs:
            g.add_metric([str(p)], 3.0)
        c = CounterMetricFamily("ultrascale_http_requests", "", labels=["status"])
        c.add_metric(["2xx"], n)
        hist = HistogramMetricFamily("ultrascale_http_request_duration_seconds", "", labels=[])
        hist.add_metric([], [("0.5", n * 0.5), ("1.0", n * 0.9), ("+Inf", n)], n * 0.8)
        return [g, c, hist]
    auto = Autoscaler(h.sup, host_cpu=lambda: 10.0, app_families=app)
    await run_for(h, auto, 6, load=20)
    s = auto.status()["signals"]
    assert s["in_flight_per_worker"]["value"] == 3.0
    assert 0.9 < s["p95_latency_seconds"]["value"] <= 1.0
    assert h.sup.count > 2


@component
async def test_unreadable_app_metrics_are_a_missing_signal_and_one_event(tmp_path):
    h = Harness(tmp_path, AUTO + "  target: {cpu_utilization: null, in_flight_per_worker: 0.8}\n")
    await h.start()

    async def broken(dirs):
        raise OSError("metrics folder vanished")
    auto = Autoscaler(h.sup, host_cpu=lambda: 10.0, app_families=broken)
    decisions = await run_for(h, auto, 8, load=600)
    assert h.sup.count == 2 and all(d.action == "hold" for d in decisions)
    assert "in_flight_per_worker missing" in decisions[-1].reason
    assert len(h.events_named("autoscale.metrics_unreadable")) == 1


@component
async def test_run_queue_wait_scales_a_starved_fleet_that_uses_little_cpu(tmp_path):
    h = Harness(tmp_path, AUTO + "  target: {cpu_utilization: 70, cpu_wait_percent: 20}\n")
    await h.start()
    waited: dict[int, float] = {}

    def wait_of(pid):       # every process waits 60 % of the time for a CPU
        return waited.get(pid)
    auto = Autoscaler(h.sup, host_cpu=lambda: 99.0, app_families=no_app_metrics, cores=lambda: 4,
                      run_queue_wait=wait_of)
    for _ in range(6):
        for proc in h.runner.procs.values():
            for pid in [proc.pid, *proc.workers]:
                waited[pid] = waited.get(pid, 0.0) + 0.3
        await run_for(h, auto, 1, load=40)      # 20 % CPU per worker: cpu_utilization says idle
    assert h.sup.count > 2
    up = h.events_named("autoscale.scale_up")[-1]
    assert up["signals"]["cpu_wait_percent"]["value"] > 20 and "cpu_wait_percent" in up["reason"]


@component
async def test_every_autoscaler_metric_is_documented(tmp_path):
    import re
    from pathlib import Path
    doc = (Path(__file__).resolve().parents[2] / "docs" / "observability.md").read_text()
    h, auto = await fleet(tmp_path)
    await run_for(h, auto, 4, load=100)
    names = {f.name + ("_total" if f.type == "counter" else "") for f in auto.metric_families()}
    assert names and names <= set(re.findall(r"`(ultrascale_autoscale_[a-z_]+)`", doc))


@component
async def test_a_hostile_pause_file_is_ignored_and_never_hangs_the_start(tmp_path):
    import os
    h = Harness(tmp_path, AUTO)
    await h.start()
    path = h.rec.state_dir / "autoscale.json"
    for content in (b"[1, 2]", b"{\"paused\": true, \"until_wall\": NaN}", b"\xff\xfe",
                    b"{\"paused\": \"yes\"}"):
        path.write_bytes(content)
        assert Autoscaler(h.sup, app_families=no_app_metrics).state.paused_until is None
    path.unlink()
    os.mkfifo(path)                       # would block a plain open() for ever
    auto = Autoscaler(h.sup, app_families=no_app_metrics)
    assert auto.state.paused_until is None
    assert "not a regular file" in h.events_named("autoscale.state_ignored")[-1]["error"]
    path.unlink()
    path.write_bytes(b"{\"paused\": true, \"until_wall\": 1e400, \"reason\": \"x\"}")
    assert Autoscaler(h.sup, app_families=no_app_metrics).status()["paused"] is True


def test_run_queue_wait_reads_schedstat_and_none_for_a_gone_pid():
    import os

    from ultrascaled.supervise.autoscale_loop import _run_queue_wait
    assert _run_queue_wait(os.getpid()) >= 0.0
    assert _run_queue_wait(2 ** 22 + 12345) is None      # above pid_max: no such process


@component
async def test_app_metrics_are_read_only_when_a_signal_needs_them(tmp_path):
    h = Harness(tmp_path, AUTO)            # cpu_utilization only
    await h.start()
    reads = []

    async def app(dirs):
        reads.append(dirs)
        return []
    auto = Autoscaler(h.sup, host_cpu=lambda: 10.0, app_families=app, cores=lambda: 2)
    await run_for(h, auto, 6, load=100)
    assert reads == [] and auto.last is not None


@component
async def test_cpu_is_measured_on_the_samples_times_not_the_ticks(tmp_path):
    h, auto = await fleet(tmp_path)
    values = []
    for i in range(12):                   # a sample, then a decision 0.3 or 0.9 s after it
        burn(h, 140, 1.0)
        await h.advance(1.0, step=1.0)
        await h.sample()
        lag = 0.3 if i % 2 else 0.9
        burn(h, 140, lag)                 # CPU goes on being used after the sample
        await h.advance(lag, step=lag)
        d = await auto.tick()
        sig = {s.name: s.value for s in d.signals}
        if sig.get("cpu_utilization") is not None:
            values.append(sig["cpu_utilization"])
    assert values and all(abs(v - 70) < 1 for v in values[1:]), values


@component
async def test_p95_comes_from_nginx_when_its_traffic_log_is_on(tmp_path):
    from ultrascaled.core.traffic import TrafficWindow
    h = Harness(tmp_path, AUTO + "  target: {cpu_utilization: null, p95_latency_seconds: 0.5}\n")
    await h.start()

    class Nginx:
        calls = []

        def window(self, port, seconds):
            self.calls.append((port, seconds))
            return TrafficWindow(400, 0, 1.5)     # queued at nginx: the app never sees it
    nginx = Nginx()
    auto = Autoscaler(h.sup, host_cpu=lambda: 10.0, app_families=no_app_metrics, traffic=nginx)
    await run_for(h, auto, 6, load=20)
    assert nginx.calls and nginx.calls[0] == (None, 4.0)
    assert h.sup.count == 5         # ceil(2 x 1.5 / 0.5) = 6, cut to 5 by the memory budget
    assert h.events_named("autoscale.scale_up")[0]["signals"]["p95_latency_seconds"]["value"] == 1.5


@component
async def test_an_app_without_the_in_flight_gauge_steps_down_after_the_grace_with_one_event(tmp_path):
    # issue 23: the app exports no in-flight gauge; before, every step down was held forever
    h = Harness(tmp_path, AUTO + "  target: {cpu_utilization: 70, in_flight_per_worker: 0.8}\n",
                autoscale=dict(host_cpu=lambda: 10.0, app_families=no_app_metrics, cores=lambda: 2))
    await h.start()
    auto = h.sup.autoscaler
    h.sup.scale(4, source="autoscale")
    await h.settle()
    start = h.clock.t
    grace = 30          # max(the 10 s scale-down window, 3 x stale_after_seconds 10 s)
    decisions = await run_for(h, auto, grace - 4, load=10)
    assert h.sup.count == 4
    assert all("in_flight_per_worker is missing" in d.reason for d in decisions if d.action == "hold"
               and not d.reason.startswith("held: no fresh"))
    assert h.events_named("autoscale.signal_never_seen") == []
    later = await run_for(h, auto, 20, load=10)
    assert h.sup.count == 1
    (told,) = h.events_named("autoscale.signal_never_seen")
    assert told["signal"] == "in_flight_per_worker" and told["seconds"] == grace
    assert "`ultrascale_http_requests_in_flight`" in told["needs"]
    down = next(d for d in later if d.action == "scale_down")
    assert down.at - start >= grace and down.never_seen == ("in_flight_per_worker",)
    assert h.events_named("autoscale.scale_down")[-1]["signals"]["in_flight_per_worker"][
        "note"].startswith("never seen in")


@component
async def test_the_host_guard_lets_a_starved_fleet_step_up_on_a_host_busy_with_other_work(tmp_path):
    # issue 23: 2 cores at 100 % (a load generator, other services), the fleet's 2 workers
    # (a worker per core) use 20 % of a core each but wait 60 % of the time for a CPU
    h = Harness(tmp_path, AUTO + "  target: {cpu_utilization: 70, cpu_wait_percent: 20}\n")
    await h.start()
    waited: dict[int, float] = {}
    auto = Autoscaler(h.sup, host_cpu=lambda: 100.0, app_families=no_app_metrics, cores=lambda: 2,
                      run_queue_wait=waited.get)
    for _ in range(6):
        for proc in h.runner.procs.values():
            for pid in [proc.pid, *proc.workers]:
                waited[pid] = waited.get(pid, 0.0) + 0.3
        await run_for(h, auto, 1, load=40)
    assert h.sup.count > 2
    up = h.events_named("autoscale.scale_up")[0]
    assert "host CPU 100% is over host_cpu_saturation_percent 90%, but the fleet's own processes " \
           "use 20% of the cores" in up["reason"] and "other work saturates it" in up["reason"]


@component
async def test_the_host_guard_holds_a_fleet_that_saturates_the_host_itself(tmp_path):
    h = Harness(tmp_path, AUTO, autoscale=dict(host_cpu=lambda: 100.0, app_families=no_app_metrics,
                                               cores=lambda: 2))
    await h.start()
    auto = h.sup.autoscaler
    await run_for(h, auto, 8, load=190)     # 95 % of a core per worker: 95 % of the 2 cores
    assert h.sup.count == 2 and h.events_named("autoscale.scale_up") == []
    assert 90 < auto.last_obs.fleet_cpu_percent <= 100
    held = [d for d in auto.decisions if d["action"] == "hold" and "host CPU" in d["reason"]]
    assert held and "(at least 50%): the fleet saturates it" in held[-1]["reason"]
