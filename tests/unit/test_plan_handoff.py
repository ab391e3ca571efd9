"""plan() with sockets the daemon holds (issue 13): a restart is a replacement, not a drain; a
replacement's life (probe, hand over, give up); a crashed instance restarting at once stays in
the upstream for at most hold_upstream_max."""
from __future__ import annotations

from ultrascaled.core.plan import (Drain, Handover, InstanceView, KillRetired, KillSuccessor, Policy, ProbeSuccessor,
                              Publish, Replace, SuccessorView, UpstreamView, WorkerRecycle, plan)
from ultrascaled.core.states import State

S = State
P = Policy(start_timeout=30.0, hold_upstream_max=5.0)
UP = UpstreamView(applied=frozenset({8001, 8002}))


def kinds(p, port=8001):
    return [type(a) for a in p.actions if getattr(a, "port", None) == port]


def test_a_restart_with_the_socket_held_replaces_and_without_it_drains():
    held = {8001: InstanceView(8001, S.RUNNING, restart_requested=True, handoff=True, next_probe=99),
            8002: InstanceView(8002, S.RUNNING, next_probe=99)}
    assert kinds(plan((8001, 8002), held, UP, P, 10.0)) == [Replace]
    not_held = {**held, 8001: InstanceView(8001, S.RUNNING, restart_requested=True, next_probe=99)}
    assert kinds(plan((8001, 8002), not_held, UP, P, 10.0)) == [Drain]


def test_one_replacement_at_a_time_and_a_failed_one_waits_for_its_retry_time():
    both = {p: InstanceView(p, S.RUNNING, restart_requested=True, handoff=True, next_probe=99) for p in (8001, 8002)}
    p = plan((8001, 8002), both, UP, P, 10.0)
    assert [type(a) for a in p.actions] == [Replace]
    busy = {**both, 8001: InstanceView(8001, S.RUNNING, restart_requested=True, handoff=True, next_probe=99,
                                        successor=SuccessorView(since=9.0, next_probe=99))}
    assert not any(isinstance(a, Replace) for a in plan((8001, 8002), busy, UP, P, 10.0).actions)
    waiting = {8001: InstanceView(8001, S.RUNNING, restart_requested=True, handoff=True, next_probe=99,
                                  replace_retry_at=12.0), 8002: InstanceView(8002, S.RUNNING, next_probe=99)}
    p = plan((8001, 8002), waiting, UP, P, 10.0)
    assert kinds(p) == [] and p.wake_at == 12.0


def test_a_successor_is_probed_handed_over_when_ready_and_killed_when_never_ready():
    def with_successor(**kw):
        return {8001: InstanceView(8001, S.RUNNING, restart_requested=True, handoff=True, next_probe=99,
                                   successor=SuccessorView(**{"since": 10.0, **kw})),
                8002: InstanceView(8002, S.RUNNING, next_probe=99)}
    assert kinds(plan((8001, 8002), with_successor(next_probe=10.0), UP, P, 10.5)) == [ProbeSuccessor]
    assert kinds(plan((8001, 8002), with_successor(probing=True), UP, P, 10.5)) == []
    assert kinds(plan((8001, 8002), with_successor(ready=True), UP, P, 10.5)) == [Handover]
    assert kinds(plan((8001, 8002), with_successor(next_probe=99), UP, P, 40.0)) == [KillSuccessor]
    assert kinds(plan((8001, 8002), with_successor(kill_sent=True), UP, P, 40.0)) == []


def test_a_replaced_master_that_outlives_its_stop_is_killed():
    v = {8001: InstanceView(8001, S.RUNNING, handoff=True, next_probe=99, retiring=(WorkerRecycle(77, 20.0),)),
         8002: InstanceView(8002, S.RUNNING, next_probe=99)}
    assert kinds(plan((8001, 8002), v, UP, P, 19.0)) == []
    assert [(type(a), a.pid) for a in plan((8001, 8002), v, UP, P, 20.0).actions] == [(KillRetired, 77)]


def test_a_crashed_instance_restarting_on_its_held_socket_stays_in_the_upstream_for_a_while():
    v = {8001: InstanceView(8001, S.STARTING, since=10.0, handoff=True, hold_upstream=True, next_probe=99),
         8002: InstanceView(8002, S.RUNNING, next_probe=99)}
    p = plan((8001, 8002), v, UP, P, 12.0)
    assert p.upstream == (8001, 8002) and not any(isinstance(a, Publish) for a in p.actions)
    assert p.wake_at <= 15.0
    p = plan((8001, 8002), v, UP, P, 15.0)
    assert p.upstream == (8002,) and any(isinstance(a, Publish) for a in p.actions)
    not_held = {**v, 8001: InstanceView(8001, S.STARTING, since=10.0, handoff=True, next_probe=99)}
    assert plan((8001, 8002), not_held, UP, P, 12.0).upstream == (8002,)


def test_with_gates_a_crashed_instance_is_held_only_when_no_other_serves():
    # upstream_servers: range: leaving is a closed gate, not a reload, so new connections go to
    # the instance that serves rather than wait in the crashed one's queue for its next master ...
    gated = Policy(start_timeout=30.0, hold_upstream_max=5.0, gates=True)
    crashed = InstanceView(8001, S.STARTING, since=10.0, handoff=True, hold_upstream=True, next_probe=99)
    v = {8001: crashed, 8002: InstanceView(8002, S.RUNNING, next_probe=99)}
    assert plan((8001, 8002), v, UP, gated, 12.0).upstream == (8002,)
    # ... but the only instance is held: its queue is the only place a request can wait
    assert plan((8001,), {8001: crashed}, frozenset({8001}), gated, 12.0).upstream == (8001,)
