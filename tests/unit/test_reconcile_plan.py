"""The planner's decisions as tables: (wanted, instances, upstream, now) -> actions."""
import pytest

from ultrascaled.plan import (APP_LOAD_ERROR, InstanceView, Policy, backoff_delay, describe_exit,
                              on_exit, plan)
from ultrascaled.states import State as S

P = Policy(start_timeout=10, drain_seconds=1, stop_timeout=5, drain_max_wait=8,
           backoff_initial=0.5, backoff_max=4, fatal_crashes=3, fatal_window=60)


def v(port, state, **kw):
    return InstanceView(port, state, **kw)


def kinds(p):
    return [(a.kind, a.port) for a in p.actions]


@pytest.mark.parametrize("name,wanted,instances,upstream,now,expected", [
    ("fresh fleet spawns every port", (1, 2), {}, (), 0, [("spawn", 1), ("spawn", 2)]),
    ("scale down drains the highest ports, not the lowest", (1,),
     {1: v(1, S.RUNNING), 2: v(2, S.RUNNING)}, (1, 2), 0, [("drain", 2)]),
    ("draining waits until the upstream without it took effect", (1,),
     {1: v(1, S.RUNNING), 2: v(2, S.DRAINING, since=0)}, (1, 2), 0.5, []),
    ("drained after drain_seconds outside the upstream", (1,),
     {1: v(1, S.RUNNING), 2: v(2, S.DRAINING, since=0, left_upstream_at=0.2)}, (1,), 1.2, [("stop", 2)]),
    ("not yet drained", (1,),
     {1: v(1, S.RUNNING), 2: v(2, S.DRAINING, since=0, left_upstream_at=0.2)}, (1,), 1.0, []),
    ("nginx never confirmed: stop after drain_max_wait", (1,),
     {1: v(1, S.RUNNING), 2: v(2, S.DRAINING, since=0)}, (1, 2), 8.0, [("stop", 2)]),
    ("stopping past its timeout is killed", (),
     {1: v(1, S.STOPPING, since=0, stop_sent_at=0)}, (), 5.0, [("kill", 1)]),
    ("regression: a kill already sent is not sent again while the exit is awaited", (1,),
     {1: v(1, S.STARTING, since=0, kill_sent=True)}, (), 50, []),
    ("regression: nor for a stopping instance", (),
     {1: v(1, S.STOPPING, since=0, stop_sent_at=0, kill_sent=True)}, (), 50, []),
    ("stopped and unwanted is forgotten", (), {1: v(1, S.STOPPED)}, (), 0, [("forget", 1)]),
    ("stopped while its old group is still exiting waits", (1,),
     {1: v(1, S.STOPPED, group_alive=True)}, (), 0, []),
    ("backoff waits for next_start", (1,), {1: v(1, S.BACKOFF, next_start=3)}, (), 2.9, []),
    ("backoff spawns at next_start", (1,), {1: v(1, S.BACKOFF, next_start=3)}, (), 3, [("spawn", 1)]),
    ("a starting instance that never gets ready is killed", (1,),
     {1: v(1, S.STARTING, since=0)}, (), 10, [("kill", 1)]),
    ("scale down of a starting instance stops it (it is not in the upstream)", (),
     {1: v(1, S.STARTING, since=0)}, (), 1, [("stop", 1)]),
    ("fatal stays fatal", (1,), {1: v(1, S.FATAL)}, (), 100, []),
    ("operator restart of a fatal instance spawns it", (1,),
     {1: v(1, S.FATAL, restart_requested=True)}, (), 100, [("spawn", 1)]),
    ("scaled back up while draining: undrain", (1, 2),
     {1: v(1, S.RUNNING), 2: v(2, S.DRAINING, since=0)}, (1,), 0.1, [("undrain", 2)]),
])
def test_plan_table(name, wanted, instances, upstream, now, expected):
    assert kinds(plan(wanted, instances, frozenset(upstream), P, now)) == expected, name


def test_rolling_restart_takes_one_instance_out_at_a_time():
    inst = {p: v(p, S.RUNNING, restart_requested=True) for p in (1, 2, 3)}
    assert kinds(plan((1, 2, 3), inst, frozenset((1, 2, 3)), P, 0)) == [("drain", 1)]
    inst[1] = v(1, S.STARTING, since=0)  # the first one is on its way back
    assert kinds(plan((1, 2, 3), inst, frozenset((2, 3)), P, 1)) == []
    inst[1] = v(1, S.RUNNING)
    assert kinds(plan((1, 2, 3), inst, frozenset((2, 3)), P, 2)) == [], "running, but not yet in nginx"
    assert kinds(plan((1, 2, 3), inst, frozenset((1, 2, 3)), P, 2)) == [("drain", 2)]


def test_upstream_lists_only_running_wanted_instances():
    inst = {1: v(1, S.RUNNING), 2: v(2, S.STARTING), 3: v(3, S.DRAINING), 4: v(4, S.RUNNING)}
    assert plan((1, 2, 3), inst, frozenset(), P, 0).upstream == (1,)


def test_settled_only_when_every_wanted_instance_runs_and_nothing_else_lives():
    assert plan((1,), {1: v(1, S.RUNNING)}, frozenset({1}), P, 0).settled
    assert not plan((1,), {1: v(1, S.RUNNING), 2: v(2, S.STOPPING)}, frozenset({1}), P, 0).settled
    assert not plan((1,), {1: v(1, S.RUNNING, restart_requested=True)}, frozenset({1}), P, 0).settled


def test_wake_at_is_the_nearest_timer():
    inst = {1: v(1, S.BACKOFF, next_start=7), 2: v(2, S.STARTING, since=0)}
    assert plan((1, 2), inst, frozenset(), P, 1).wake_at == 7


@pytest.mark.parametrize("crashes,expected", [(1, 0.0), (2, 0.5), (3, 1.0), (4, 2.0), (5, 4.0), (9, 4.0)])
def test_backoff_is_immediate_then_exponential_and_capped(crashes, expected):
    assert backoff_delay(crashes, P) == expected


def test_first_crash_restarts_at_once():
    d = on_exit(S.RUNNING, -9, (), P, now=100)
    assert (d.state, d.next_start, d.reason) == (S.BACKOFF, 100, "killed by SIGKILL")


def test_repeated_crashes_within_the_window_make_it_fatal():
    d = on_exit(S.RUNNING, 1, (50.0, 90.0), P, now=100)
    assert d.state is S.FATAL and "3 crashes within 60s" in d.reason


def test_old_crashes_outside_the_window_do_not_count():
    d = on_exit(S.RUNNING, 1, (10.0, 20.0), P, now=100)
    assert d.state is S.BACKOFF and d.crashes == (100,)


def test_app_that_cannot_load_is_permanent_not_a_restart_loop():
    d = on_exit(S.STARTING, APP_LOAD_ERROR, (), P, now=1)
    assert d.state is S.FATAL and "app failed to load" in d.reason


def test_exit_while_stopping_is_a_clean_stop():
    d = on_exit(S.STOPPING, 0, (5.0,), P, now=10)
    assert d.state is S.STOPPED and not d.counted and d.crashes == (5.0,)


@pytest.mark.parametrize("rc,text", [(0, "exit 0"), (-15, "killed by SIGTERM"), (None, "status unknown")])
def test_describe_exit(rc, text):
    assert text in describe_exit(rc)
