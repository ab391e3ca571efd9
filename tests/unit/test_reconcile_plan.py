"""The planner's decisions as tables: (wanted, instances, upstream, now) -> actions."""
import pytest

from ultrascaled.core.plan import (APP_LOAD_ERROR, InstanceView, KillWorker, Policy, Probe, Publish, UpstreamView,
                              WorkerRecycle, backoff_delay, describe_exit, kind, on_exit, plan, probe_delay,
                              reload_diff, upstream_retry_delay)
from ultrascaled.core.states import State as S

P = Policy(start_timeout=10, drain_seconds=1, stop_timeout=5, drain_max_wait=8,
           backoff_initial=0.5, backoff_max=4, fatal_crashes=3, fatal_window=60)


def v(port, state, **kw):
    return InstanceView(port, state, **kw)


def kinds(p, every=False):
    """The lifecycle actions of a plan (probes and upstream publishes have tables of their own)."""
    return [(kind(a), a.port) for a in p.actions if every or not isinstance(a, (Probe, Publish))]


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


def test_upstream_lists_running_instances_that_are_not_on_their_way_out():
    inst = {1: v(1, S.RUNNING), 2: v(2, S.STARTING), 3: v(3, S.DRAINING), 4: v(4, S.RUNNING)}
    # 4 is unwanted but nothing has replaced it yet (1 serving of 3 wanted): it keeps serving
    assert plan((1, 2, 3), inst, frozenset({1, 4}), P, 0).upstream == (1, 4)
    # with the wanted ones serving, it is drained and leaves
    inst.update({2: v(2, S.RUNNING), 3: v(3, S.RUNNING)})
    p = plan((1, 2, 3), inst, frozenset({1, 2, 3, 4}), P, 0)
    assert ("drain", 4) in kinds(p) and p.upstream == (1, 2, 3)


def test_regression_a_port_change_keeps_the_old_instances_serving_until_the_new_ones_are():
    """issue 12: base_port 18001 -> 18011 emptied the upstream for a second (3,792 x 503)."""
    old = {1: v(1, S.RUNNING), 2: v(2, S.RUNNING)}
    p = plan((11, 12), old, frozenset({1, 2}), P, 0)
    assert kinds(p) == [("spawn", 11), ("spawn", 12)] and p.upstream == (1, 2)
    both = {**old, 11: v(11, S.RUNNING), 12: v(12, S.RUNNING)}
    p = plan((11, 12), both, frozenset({1, 2}), P, 1)
    assert kinds(p) == [] and p.upstream == (1, 2, 11, 12), "new ones join before old ones leave"
    p = plan((11, 12), both, frozenset({1, 2, 11, 12}), P, 2)
    assert kinds(p) == [("drain", 1), ("drain", 2)] and p.upstream == (11, 12)


def test_on_shutdown_everything_drains_at_once():
    inst = {1: v(1, S.RUNNING), 2: v(2, S.RUNNING)}
    assert kinds(plan((), inst, frozenset({1, 2}), P, 0, keep_serving=0)) == [("drain", 1), ("drain", 2)]


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
    d = on_exit(S.RUNNING, -9, (), 0, P, now=100)
    assert (d.state, d.next_start, d.reason) == (S.BACKOFF, 100, "killed by SIGKILL")


def test_regression_crashes_after_serving_back_off_and_alert_but_never_go_fatal():
    """issue 10, defect 11: the fifth kill -9 of a serving instance raised TransitionError
    (running -> fatal) inside the exit callback and wedged the instance."""
    d = on_exit(S.RUNNING, -9, (50.0, 90.0), 0, P, now=100)
    assert d.state is S.BACKOFF and d.crash_loop and "3 crashes within 60s" in d.reason
    assert d.next_start == 100 + backoff_delay(3, P)


def test_old_crashes_outside_the_window_do_not_count():
    d = on_exit(S.RUNNING, 1, (10.0, 20.0), 0, P, now=100)
    assert d.state is S.BACKOFF and d.crashes == (100,) and not d.crash_loop


def test_failures_to_start_in_a_row_make_it_fatal_whatever_the_window():
    """issue 10, defect 10: each attempt took start_timeout (30 s), so 5 crashes in 60 s never
    happened and the instance looped for ever. Start failures count in a row."""
    d = on_exit(S.STARTING, -9, (), 1, P, now=1000, why="not ready after 10s (last probe: HTTP 404)")
    assert d.state is S.BACKOFF and d.start_failures == 2 and d.next_start == 1000 + backoff_delay(2, P)
    assert "HTTP 404" in d.reason
    d = on_exit(S.STARTING, -9, (), 2, P, now=5000)
    assert d.state is S.FATAL and "failed to start 3 times in a row" in d.reason


def test_app_that_cannot_load_is_permanent_not_a_restart_loop():
    d = on_exit(S.STARTING, APP_LOAD_ERROR, (), 0, P, now=1)
    assert d.state is S.FATAL and "app failed to load" in d.reason


def test_exit_while_stopping_is_a_clean_stop():
    d = on_exit(S.STOPPING, 0, (5.0,), 0, P, now=10)
    assert d.state is S.STOPPED and d.crashes == (5.0,)


def test_backoff_never_overflows():
    assert backoff_delay(10_000, P) == P.backoff_max


# ---- probes ----------------------------------------------------------------------------------

def test_a_starting_instance_is_probed_fast_then_slower():
    assert probe_delay(0.1, P) == probe_delay(0.9, P) == P.probe_interval
    assert probe_delay(2.0, P) == pytest.approx(0.2)
    assert probe_delay(300.0, P) == P.probe_interval_max
    inst = {1: v(1, S.STARTING, since=0, next_probe=0.5)}
    p = plan((1,), inst, frozenset(), P, 0.4)
    assert kinds(p, every=True) == [] and p.wake_at == 0.5
    assert kinds(plan((1,), inst, frozenset(), P, 0.5), every=True) == [("probe", 1)]
    inst = {1: v(1, S.STARTING, since=0, probing=True)}
    assert kinds(plan((1,), inst, frozenset(), P, 5), every=True) == [], "one probe in flight at a time"


def test_a_starting_instance_that_never_gets_ready_is_killed_with_the_last_probe_result():
    p = plan((1,), {1: v(1, S.STARTING, since=0, last_probe="HTTP 500")}, frozenset(), P, 10)
    assert kinds(p) == [("kill", 1)] and "last probe: HTTP 500" in p.actions[0].reason


def test_failed_health_checks_drain_and_restart_the_instance():
    inst = {1: v(1, S.RUNNING, health_failures=3, last_probe="timed out after 1s"), 2: v(2, S.RUNNING)}
    p = plan((1, 2), inst, frozenset({1, 2}), P, 0)
    drain = [a for a in p.actions if kind(a) == "drain"]
    assert [(d.port, d.restart) for d in drain] == [(1, True)] and "timed out" in drain[0].reason


# ---- worker recycles ---------------------------------------------------------------------------

def test_a_recycled_worker_still_alive_at_its_deadline_is_killed():
    r = (WorkerRecycle(pid=77, deadline=10.0),)
    inst = {1: v(1, S.RUNNING, recycles=r, workers=frozenset({77}), next_probe=100)}
    p = plan((1,), inst, frozenset({1}), P, 9)
    assert p.actions == () and p.wake_at == 10.0
    assert plan((1,), inst, frozenset({1}), P, 10).actions == (KillWorker(1, 77, "worker still alive after "
                                                                             "graceful timeout"),)
    gone = {1: v(1, S.RUNNING, recycles=r, workers=frozenset({78}), next_probe=100)}
    assert plan((1,), gone, frozenset({1}), P, 10).actions == (), "it exited: nothing to kill"


# ---- the upstream ---------------------------------------------------------------------------

def up(**kw):
    return UpstreamView(**kw)


@pytest.mark.parametrize("name,view,now,publish", [
    ("in step", up(applied=frozenset({1})), 0, False),
    ("changed", up(applied=frozenset()), 0, True),
    ("one apply at a time", up(applied=frozenset(), in_flight=True), 0, False),
    ("temporary failure waits for its retry time", up(failed=frozenset({1}), retry_at=5), 4, False),
    ("temporary failure retried at its time", up(failed=frozenset({1}), retry_at=5), 5, True),
    ("permanent failure is not retried", up(failed=frozenset({1}), failed_temporary=False), 1000, False),
    ("a different set after a permanent failure is tried", up(failed=frozenset({2}), failed_temporary=False),
     0, True),
    ("adoption holds the last run's upstream", up(holding=True), 0, False),
])
def test_upstream_publish_table(name, view, now, publish):
    p = plan((1,), {1: v(1, S.RUNNING, next_probe=1e9)}, view, P, now)
    assert any(isinstance(a, Publish) for a in p.actions) is publish, name


def test_upstream_retries_back_off():
    assert [upstream_retry_delay(n, P) for n in (1, 2, 3, 8)] == [1.0, 2.0, 4.0, 60.0]


# ---- reloads -----------------------------------------------------------------------------------

def test_regression_a_reload_restarts_fatal_instances():
    """issue 10, defect 2: fix the spec after a bad app.module, reload: `restarting: []`."""
    d = reload_diff({1: (S.FATAL, "old"), 2: (S.RUNNING, "a"), 3: (S.RUNNING, "b"), 4: (S.RUNNING, "x")},
                    (1, 2, 3, 5), {1: "old", 2: "a", 3: "B", 5: "e"})
    assert d.changed == (1, 3) and d.unchanged == (2,) and d.added == (5,) and d.removed == (4,)


@pytest.mark.parametrize("rc,text", [(0, "exit 0"), (-15, "killed by SIGTERM"), (None, "status unknown")])
def test_describe_exit(rc, text):
    assert text in describe_exit(rc)


@pytest.mark.parametrize("state", [S.STARTING, S.RUNNING, S.DRAINING, S.STOPPING])
@pytest.mark.parametrize("rc", [0, 1, 3, 4, -9, -15, None])
@pytest.mark.parametrize("history", [((), 0), ((1.0, 2.0, 3.0, 4.0, 5.0), 4)])
def test_every_exit_is_an_allowed_move(state, rc, history):
    """issue 10, defect 11: a decision the state table forbids must not exist (it raised inside
    the exit callback and wedged the instance)."""
    from ultrascaled.core.states import TRANSITIONS
    crashes, start_failures = history
    d = on_exit(state, rc, crashes, start_failures, P, now=10.0)
    assert d.state in TRANSITIONS[state], (state, rc, d)


def test_running_instances_are_probed_on_a_common_grid():
    """One wake-up of the loop probes every running instance (not one per instance)."""
    from ultrascaled.core.plan import next_probe_at
    times = {next_probe_at(v(p, S.RUNNING), now, P) for p, now in ((1, 20.3), (2, 21.9), (3, 29.99))}
    assert times == {30.0}
