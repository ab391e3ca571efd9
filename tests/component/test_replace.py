"""Restarts by replacement (the daemon holds the port's socket): a second master starts on the
same socket, takes over once its private probe answers, then the old one is told to stop; the
upstream never changes and capacity never drops below N. A replacement that cannot start leaves
the old master serving, is retried with backoff and given up with an alert."""
from __future__ import annotations

import asyncio
import functools
import signal

from fakes import Harness
from ultrascaled.core.seams import ProbeResult


def component(fn):
    @functools.wraps(fn)
    def wrapper(tmp_path, *a, **kw):
        return asyncio.run(fn(tmp_path, *a, **kw))
    return wrapper


async def up(tmp_path) -> Harness:
    h = Harness(tmp_path)
    await h.start()
    assert h.states() == {8001: "running", 8002: "running"} and h.rec.instances[8001].handoff
    return h


@component
async def test_a_rolling_restart_replaces_each_master_in_place_without_touching_nginx(tmp_path):
    h = await up(tmp_path)
    publishes = len(h.upstream.applied)
    old = {p: h.rec.instances[p].pid for p in (8001, 8002)}
    h.sup.restart(None)
    serving = []
    for _ in range(40):
        await h.advance(0.05, step=0.05)
        serving.append(sum(1 for p in (8001, 8002) if h.states()[p] == "running" and p in h.rec.applied))
        if all(h.rec.instances[p].pid != old[p] for p in old) and not any(
                i.restart_requested for i in h.rec.instances.values()):
            break
    assert all(h.rec.instances[p].pid != old[p] for p in old)
    assert min(serving) == 2, "never fewer than N serving"
    assert len(h.upstream.applied) == publishes, "no upstream change, so no nginx reload"
    sigterms = [c for c in h.runner.calls if c[0] == "signal" and c[2] == signal.SIGTERM]
    assert [c[1] for c in sigterms] == [8001, 8002]
    replaced = h.events_named("instance.replaced")
    assert [(e["old_pid"], e["port"]) for e in replaced] == [(old[8001], 8001), (old[8002], 8002)]
    # the successor's spawn came before the old master's SIGTERM, on the same socket (fd)
    spawns = [c[1] for c in h.runner.calls if c[0] == "spawn"]
    binds = [a[a.index("--bind") + 1] for a in spawns if a[a.index("--name") + 1].endswith("-8001")]
    assert len(binds) == 2 and binds[0] == binds[1] and binds[0].startswith("fd://")
    assert len(h.events_named("instance.retired")) == 2


@component
async def test_a_replacement_that_cannot_start_leaves_the_old_master_serving_and_gives_up_with_an_alert(tmp_path):
    h = await up(tmp_path)
    old = h.rec.instances[8001].pid
    h.runner.exit_on_spawn[8001] = 1
    h.sup.restart(8001)
    for _ in range(200):
        await h.advance(0.25, step=0.25)
        assert h.states()[8001] == "running" and h.rec.instances[8001].pid == old
        if not h.rec.instances[8001].restart_requested:
            break
    del h.runner.exit_on_spawn[8001]
    failed = h.events_named("instance.replace_failed")
    assert [e["gave_up"] for e in failed] == [False] * 4 + [True]
    assert "instance_replace_failed,port=8001" in h.alerts()
    assert not h.rec.instances[8001].restart_requested
    # an operator restart later, with a working app, succeeds and resolves the alert
    h.sup.restart(8001)
    await h.advance(2, step=0.05)
    assert h.rec.instances[8001].pid != old and "instance_replace_failed,port=8001" not in h.alerts()


@component
async def test_the_old_master_dying_while_its_replacement_boots_drops_the_replacement(tmp_path):
    h = await up(tmp_path)
    h.runner.answers[8001] = ProbeResult(None, "connection refused")
    h.sup.restart(8001)
    await h.advance(0.1, step=0.05)
    succ = h.rec.instances[8001].successor
    assert succ is not None
    del h.runner.answers[8001]
    h.runner.exit_proc(h.rec.instances[8001].handle, -9)
    await h.settle()
    assert h.rec.instances[8001].successor is None and h.events_named("instance.replacement_dropped")
    assert not succ.handle.alive
    await h.advance(1, step=0.05)
    assert h.states()[8001] == "running"


@component
async def test_an_adopted_master_whose_socket_cannot_be_taken_restarts_the_old_way_once(tmp_path):
    from ultrascaled.core import command
    from ultrascaled.core.seams import Leftover
    h = Harness(tmp_path)
    h.runner.takeable = False        # pidfd_getfd refused (Yama, another user)
    argv = command.with_binds(command.gunicorn_argv(h.spec, 8001, str(h.rec.log_path(8001))), ["fd://5", "fd://6"])
    h.runner.leftovers = [Leftover(500, 8001, tuple(argv), True, True)]
    await h.start()
    inst = h.rec.instances[8001]
    assert inst.pid == 500 and not inst.restart_requested, "the same command whatever its fds: adopted as is"
    assert not inst.handoff and h.events_named("adopt.socket_not_taken")
    h.sup.restart(8001)
    await h.advance(2, step=0.05)
    assert inst.pid != 500 and inst.handoff and 8001 in h.rec.listeners
    moves = [e["new"] for e in h.events_named("instance.state") if e["port"] == 8001]
    assert moves[-5:] == ["draining", "stopping", "stopped", "starting", "running"], moves
    assert not h.events_named("instance.replaced"), "no replacement without the socket"


@component
async def test_a_daemon_killed_mid_replacement_keeps_the_master_that_holds_the_socket(tmp_path):
    from ultrascaled.core import command
    from ultrascaled.core.seams import Leftover

    def leftovers(h):
        argv = tuple(command.with_binds(command.gunicorn_argv(h.spec, 8001, str(h.rec.log_path(8001))),
                                        ["fd://5", "fd://6"]))
        return [Leftover(500, 8001, argv, True, True), Leftover(510, 8001, argv, True, True)]
    # after the hand-over: the old master (500) got SIGTERM and closed its listener; keep 510
    h = Harness(tmp_path)
    h.runner.leftovers = leftovers(h)
    h.runner.not_holding = {500}
    await h.start()
    assert h.rec.instances[8001].pid == 510 and not h.rec.instances[8001].restart_requested
    assert [e["pid"] for e in h.events_named("adopt.duplicate_stopped")] == [500]
    # before it: both hold the socket, the replacement was not ready yet: keep the older one
    (tmp_path / "b").mkdir()
    h2 = Harness(tmp_path / "b")
    h2.runner.leftovers = leftovers(h2)
    await h2.start()
    assert h2.rec.instances[8001].pid == 500
    assert [e["pid"] for e in h2.events_named("adopt.duplicate_stopped")] == [510]


async def gated(tmp_path) -> Harness:
    """A fleet behind a static upstream (nginx.upstream_servers: range): gates decide."""
    h = Harness(tmp_path)
    h.upstream.gated = True
    await h.start()
    return h


@component
async def test_with_a_static_upstream_ports_join_and_leave_by_their_gate_before_nginx_is_asked(tmp_path):
    # nginx.upstream_servers: range -- nginx lists the whole range; a port takes new connections
    # only while its gate is open: closed from its listen until the instance is ready, closed
    # before a drain's stop, and the order is gate first when leaving, nginx first when joining.
    h = Harness(tmp_path)
    h.upstream.gated = True
    order: list = []
    apply = h.upstream.apply

    async def recording_apply(servers):
        order.append(("apply", sorted(p for _, p in servers), dict(h.runner.gates())))
        return await apply(servers)

    h.upstream.apply = recording_apply
    await h.start()
    assert h.runner.gates() == {8001: True, 8002: True}
    assert order[0][2] == {8001: False, 8002: False}, "both listened with closed gates until published"
    h.runner.answers[8003] = ProbeResult(503, "HTTP 503")
    h.sup.scale(3)
    await h.settle()
    assert h.states()[8003] == "starting" and h.runner.gates()[8003] is False
    del h.runner.answers[8003]
    await h.advance(0.1, step=0.02)
    assert h.states()[8003] == "running" and h.runner.gates() == {8001: True, 8002: True, 8003: True}
    assert order[-1][:2] == ("apply", [8001, 8002, 8003]) and order[-1][2][8003] is False
    h.sup.scale(2)
    await h.settle()
    assert h.states()[8003] == "draining" and h.runner.gates()[8003] is False
    assert order[-1][:2] == ("apply", [8001, 8002]) and order[-1][2][8003] is False, "gate closed before"
    assert ("signal", 8003, signal.SIGTERM) not in h.runner.calls
    await h.advance(0.5)
    assert ("signal", 8003, signal.SIGTERM) in h.runner.calls
    await h.advance(1)
    assert 8003 not in h.rec.instances and 8003 not in h.runner.gates(), "its socket is closed"
    # a restart is a replacement on the same socket: the gate stays open, nothing is published
    gate_calls = [c for c in h.runner.calls if c[0] == "gate"]
    publishes = len(order)
    h.sup.restart(8001)
    await h.advance(1, step=0.05)
    assert [c for c in h.runner.calls if c[0] == "gate"] == gate_calls and len(order) == publishes
    assert h.runner.gates() == {8001: True, 8002: True}


@component
async def test_with_a_static_upstream_a_port_of_the_range_another_program_holds_leaves_nginx(tmp_path):
    # A second fleet (or anything) listening on a port of this fleet's range where this fleet
    # runs nothing would get a share of its traffic: it is taken out of the upstream, loudly.
    from ultrascaled.core.seams import PortHolder
    h = await gated(tmp_path)
    h.runner.busy[8005] = PortHolder(4242, "gunicorn")
    h.runner.busy[8001] = PortHolder(4243, "ours anyway")     # a port this fleet runs: not a concern
    await h.advance(11, step=1)
    taken = h.events_named("upstream.port_taken")
    assert [(e["port"], e["holder"]) for e in taken] == [(8005, "pid 4242 (gunicorn)")]
    assert "port_taken,port=8005" in h.alerts() and h.upstream.excluded == frozenset({8005})
    assert h.upstream.applied[-1] == [8001, 8002], "published again with the same instances"
    del h.runner.busy[8005]
    await h.advance(11, step=1)
    assert h.upstream.excluded == frozenset() and "port_taken,port=8005" not in h.alerts()
    assert [e["port"] for e in h.events_named("upstream.port_free")] == [8005]


@component
async def test_a_spec_reload_that_leaves_the_static_upstream_republishes_and_opens_every_gate(tmp_path):
    import dataclasses
    h = await gated(tmp_path)
    h.runner.answers[8003] = ProbeResult(503, "HTTP 503")
    h.sup.scale(3)
    await h.settle()
    assert h.runner.gates() == {8001: True, 8002: True, 8003: False}
    publishes = len(h.upstream.applied)
    ready = dataclasses.replace(h.spec, nginx=dataclasses.replace(h.spec.nginx, upstream_servers="ready"))
    h.sup.reload_spec(ready)
    await h.settle()
    assert h.upstream.reconfigured == 1 and not h.upstream.gated
    assert len(h.upstream.applied) == publishes + 1 and h.upstream.applied[-1] == [8001, 8002]
    assert h.runner.gates() == {8001: True, 8002: True, 8003: True}, "nginx lists only the ready ones now"
    # instances.max alone changes the range: nginx is told too
    wider = dataclasses.replace(ready, instances=dataclasses.replace(ready.instances, max=9))
    h.sup.reload_spec(wider)
    await h.settle()
    assert h.upstream.reconfigured == 2


@component
async def test_a_master_over_its_limit_at_every_boot_is_held_with_an_alert_and_health_says_so(tmp_path):
    """issue 24: memory.worker_limit_mb below what a master needs at boot replaced every master
    for memory every ~3 s for ever, /alerts empty and /health 200. Replacements keep the
    count, so the hold comes after restart.fatal_crashes, with the alert and /health."""
    h = await up(tmp_path)
    replaced = 0
    for _ in range(40):
        inst = h.rec.instances[8001]
        h.runner.rss[inst.pid] = 900 << 20          # every master of 8001 is over the limit at once
        await h.sample()
        await h.sample()
        await h.advance(0.3, step=0.05)
        replaced = len([e for e in h.events_named("instance.replaced") if e["port"] == 8001])
        if "memory_recycle_loop,port=8001" in h.alerts():
            break
    assert "memory_recycle_loop,port=8001" in h.alerts(), (replaced, h.events_named("watchdog.recycled")[-2:])
    assert replaced <= h.spec.restart.fatal_crashes
    held = len(h.events_named("watchdog.held"))
    ok, reasons = h.sup.health()
    assert not ok and any("recycling is held" in r and "8001" in r for r in reasons), reasons
    # held: no more replacements however long it stays over
    before = len(h.events_named("instance.replaced"))
    for _ in range(10):
        await h.sample()
        await h.advance(0.5, step=0.1)
    assert len(h.events_named("instance.replaced")) == before and len(h.events_named("watchdog.held")) == held
    # under the limit again: the hold ends and the alert resolves
    h.runner.rss[h.rec.instances[8001].pid] = 10 << 20
    await h.sample()
    assert "memory_recycle_loop,port=8001" not in h.alerts() and h.sup.health()[0]
