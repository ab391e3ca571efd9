"""core/worker_plan.py: the worker types' decisions, as tables over plain values."""
import dataclasses
import json
import signal

import pytest

from ultrascaled.core import worker_plan as wp
from ultrascaled.core.states import State, check_transition
from ultrascaled.core.worker_plan import Forget, Kill, Promote, Slot, Spawn, Stop, WorkerPolicy

S = State
P = WorkerPolicy(start_seconds=1.0, graceful_timeout=5.0, backoff_initial=0.5, backoff_max=4.0,
                 fatal_crashes=3, fatal_window=60.0)
POL = {"w": P}


def slots(*ss: Slot) -> dict:
    return {s.key: s for s in ss}


def test_a_new_type_spawns_each_index():
    assert wp.plan({}, {"w": 2}, POL, 0.0) == [Spawn(("w", 0), "wanted"), Spawn(("w", 1), "wanted")]


def test_nothing_to_do_when_the_slots_run_as_wanted():
    running = Slot("w", 0, S.RUNNING, started_at=0.0, fingerprint="f")
    assert wp.plan(slots(running), {"w": 1}, POL, 100.0, {"w": "f"}) == []


@pytest.mark.parametrize("age, expected", [(0.999, []), (1.0, [Promote(("w", 0))])])
def test_starting_becomes_running_after_start_seconds(age, expected):
    s = Slot("w", 0, S.STARTING, started_at=10.0)
    assert wp.plan(slots(s), {"w": 1}, POL, 10.0 + age) == expected


def test_scale_down_stops_the_highest_index_with_the_stop_signal_and_a_deadline():
    ss = slots(Slot("w", 0, S.RUNNING, started_at=0.0), Slot("w", 1, S.RUNNING, started_at=0.0))
    assert wp.plan(ss, {"w": 1}, POL, 50.0) == [Stop(("w", 1), signal.SIGTERM, 55.0, "scaled down")]


def test_a_removed_type_and_shutdown_stop_everything():
    ss = slots(Slot("w", 0, S.STARTING, started_at=0.0), Slot("w", 1, S.BACKOFF, next_start=9.0),
               Slot("w", 2, S.FATAL))
    assert wp.plan(ss, {}, POL, 0.5) == [Stop(("w", 0), signal.SIGTERM, 5.5, "scaled down"),
                                         Forget(("w", 1)), Forget(("w", 2))]


@pytest.mark.parametrize("now, killed, expected", [
    (4.999, False, []), (5.0, False, [Kill(("w", 0))]), (9.0, True, [])])
def test_sigkill_at_graceful_timeout_once(now, killed, expected):
    s = Slot("w", 0, S.STOPPING, stop_deadline=5.0, killed=killed)
    assert wp.plan(slots(s), {}, POL, now) == expected


def test_a_stopped_slot_still_wanted_starts_again_and_one_not_wanted_is_forgotten():
    assert wp.plan(slots(Slot("w", 0, S.STOPPED, spawns=1)), {"w": 1}, POL, 0.0) == \
        [Spawn(("w", 0), "restart after its stop")]
    assert wp.plan(slots(Slot("w", 0, S.STOPPED, spawns=1)), {"w": 0}, POL, 0.0) == [Forget(("w", 0))]


@pytest.mark.parametrize("now, expected", [(1.49, []), (1.5, [Spawn(("w", 0), "restart after backoff")])])
def test_backoff_waits_until_next_start(now, expected):
    assert wp.plan(slots(Slot("w", 0, S.BACKOFF, next_start=1.5)), {"w": 1}, POL, now) == expected


def test_fatal_stays_fatal_until_retried():
    fatal = Slot("w", 0, S.FATAL, start_failures=3)
    assert wp.plan(slots(fatal), {"w": 1}, POL, 1e6) == []
    again = wp.retried(fatal)
    assert (again.state, again.start_failures) == (S.BACKOFF, 0)
    assert wp.plan(slots(again), {"w": 1}, POL, 0.0) == [Spawn(("w", 0), "restart after backoff")]


def test_a_changed_command_restarts_live_processes():
    s = Slot("w", 0, S.RUNNING, started_at=0.0, fingerprint="old")
    assert wp.plan(slots(s), {"w": 1}, POL, 3.0, {"w": "new"}) == \
        [Stop(("w", 0), signal.SIGTERM, 8.0, "its command, environment or folder changed")]


def test_a_changed_folder_rolls_a_types_processes_one_at_a_time():
    """A deploy (a new release folder) or a reload: one live process of a type is stopped, and
    the next only once none of that type is starting or stopping; other types roll alongside."""
    live = {k: Slot(*k, S.RUNNING, started_at=0.0, fingerprint="old")
            for k in [("w", 0), ("w", 1), ("w", 2), ("m", 0)]}
    first = wp.plan(live, {"w": 3, "m": 1}, POL, 3.0, {"w": "new", "m": "new"})
    assert [a.key for a in first] == [("m", 0), ("w", 0)]
    live[("w", 0)] = Slot("w", 0, S.STARTING, started_at=4.0, fingerprint="new")
    live[("m", 0)] = Slot("m", 0, S.RUNNING, started_at=4.0, fingerprint="new")
    both = {"w": 3, "m": 1}, POL
    assert wp.plan(live, *both, 4.5, {"w": "new", "m": "new"}) == [], "w/0 is still starting"
    live[("w", 0)] = Slot("w", 0, S.RUNNING, started_at=4.0, fingerprint="new")
    assert [a.key for a in wp.plan(live, *both, 6.0, {"w": "new", "m": "new"})] == [("w", 1)]


def test_start_failures_back_off_and_turn_fatal_at_fatal_crashes():
    s, delays = Slot("w", 0), []
    for i in range(3):
        s = wp.spawned(s, float(i * 10), "f")
        s, loop = wp.on_exit(s, 1, P, i * 10 + 0.2)
        assert not loop
        delays.append(s.next_start - (i * 10 + 0.2) if s.state is S.BACKOFF else None)
    assert s.state is S.FATAL and s.start_failures == 3 and "failed to start 3 times in a row" in s.reason
    assert delays[:2] == [0.0, 0.5]
    assert "exit 1 after 0.2s, before start_seconds (1s)" in s.reason


def test_running_resets_the_start_failures():
    s = wp.spawned(Slot("w", 0, start_failures=2), 0.0, "f")
    assert wp.promoted(s).start_failures == 0


def test_crashes_after_running_back_off_growing_capped_and_raise_the_crash_loop_never_fatal():
    s, delays, loops = Slot("w", 0), [], []
    for i in range(6):
        s = wp.promoted(wp.spawned(s, float(i), "f"))
        s, loop = wp.on_exit(s, -9, P, i + 0.5)
        delays.append(s.next_start - (i + 0.5))
        loops.append(loop)
        assert s.state is S.BACKOFF and "killed by SIGKILL" in s.reason
    assert delays == [0.0, 0.5, 1.0, 2.0, 4.0, 4.0]
    assert loops == [False, False, True, True, True, True]
    assert s.restarts == 5 and s.spawns == 6


def test_crashes_outside_fatal_window_are_forgotten():
    s = wp.promoted(wp.spawned(Slot("w", 0, crashes=(0.0, 1.0)), 100.0, "f"))
    s, loop = wp.on_exit(s, 1, P, 100.5)
    assert s.crashes == (100.5,) and not loop and s.next_start == 100.5


@pytest.mark.parametrize("killed, words", [(False, "stopped (exit 0)"), (True, "SIGKILLed at graceful_timeout")])
def test_an_exit_while_stopping_is_stopped(killed, words):
    s = Slot("w", 0, S.STOPPING, stop_deadline=5.0, killed=killed)
    after, loop = wp.on_exit(s, 0 if not killed else -9, P, 3.0)
    assert after.state is S.STOPPED and words in after.reason and not loop and after.stop_deadline is None


def test_spawn_errors_count_unless_transient():
    s = wp.on_spawn_error(Slot("w", 0), "too many open files", True, P, 10.0)
    assert (s.state, s.start_failures, s.next_start) == (S.BACKOFF, 0, 10.5)
    for _ in range(3):
        s = wp.on_spawn_error(s, "No such file or directory: 'celery'", False, P, 10.0)
    assert s.state is S.FATAL and "failed 3 times in a row" in s.reason


def test_next_wakeup_is_the_earliest_timer():
    ss = slots(Slot("w", 0, S.STARTING, started_at=2.0), Slot("w", 1, S.BACKOFF, next_start=2.5),
               Slot("w", 2, S.STOPPING, stop_deadline=2.2), Slot("w", 3, S.RUNNING),
               Slot("w", 4, S.STOPPING, stop_deadline=1.0, killed=True))
    assert wp.next_wakeup(ss, POL) == 2.2
    assert wp.next_wakeup({}, POL) is None


def test_every_move_the_plan_makes_is_an_allowed_transition():
    moves = [(S.STOPPED, S.STARTING), (S.STARTING, S.RUNNING), (S.STARTING, S.BACKOFF),
             (S.STARTING, S.FATAL), (S.STARTING, S.STOPPING), (S.RUNNING, S.BACKOFF),
             (S.RUNNING, S.STOPPING), (S.STOPPING, S.STOPPED), (S.BACKOFF, S.STARTING),
             (S.BACKOFF, S.FATAL), (S.FATAL, S.BACKOFF)]
    for old, new in moves:
        check_transition(old, new)


def test_a_workers_environment_is_app_env_file_then_app_env_then_its_own_then_the_markers():
    from ultrascaled.core import command
    from ultrascaled.spec import parse_spec
    spec = parse_spec("name: f\napp: {env: {A: app, B: app}, python: /venv/bin/python}\n"
                      "processes:\n  w:\n    command: [x]\n    env: {B: type, ULTRASCALE_PROCESS: mine}\n")
    env = command.process_env(spec, "w", 2)
    assert (env["A"], env["B"], env["ULTRASCALE_PROCESS"], env["ULTRASCALE_FLEET"]) == ("app", "type", "f/w/2", "f")
    assert env["PATH"].startswith("/venv/bin")
    fp = command.process_fingerprint(spec, "w", "/srv/r1")
    assert fp == command.process_fingerprint(spec, "w", "/srv/r1") and "mine" in fp
    assert fp != command.process_fingerprint(spec, "w", "/srv/r2"), "a deploy's new folder restarts them"


def test_check_finds_a_worker_types_missing_program_and_folder(tmp_path):
    from ultrascaled.effects.host_checks import process_problems
    from ultrascaled.spec import parse_spec
    (tmp_path / "run.sh").write_text("#!/bin/sh\n")
    (tmp_path / "run.sh").chmod(0o755)
    spec = parse_spec("processes:\n"
                      "  ok: {command: [python, w.py]}\n"
                      "  script: {command: [./run.sh], max: 1}\n"
                      "  gone: {command: [no-such-program-here], directory: nowhere, max: 1}\n"
                      "  lost: {command: [./missing.sh], max: 1}\n"
                      "  probed: {command: [python, w.py], ready: {command: [no-such-check, ping]}}\n"
                      "  job: {kind: job, command: [no-such-job], every: 1m}\n", base_dir=tmp_path)
    spec = spec.__class__(**{**spec.__dict__, "app": spec.app.__class__(directory=str(tmp_path))})
    assert process_problems(spec) == [
        f"processes.gone.directory: {tmp_path / 'nowhere'} does not exist",
        "processes.gone.command: 'no-such-program-here' is not an executable file on the PATH it "
        "starts with (app.python's folder, then the daemon's PATH)",
        "processes.job.command: 'no-such-job' is not an executable file on the PATH it starts with "
        "(app.python's folder, then the daemon's PATH)",
        "processes.lost.command: './missing.sh' is not an executable file",
        "processes.probed.ready.command: 'no-such-check' is not an executable file on the PATH it "
        "starts with (app.python's folder, then the daemon's PATH)"]


# ---- adoption across a daemon restart ------------------------------------------------------------

REC = wp.Record("w", 1, 4242, 1000.0, wp.digest("fp"), "/srv/app", restarts=2, stop_signal=int(signal.SIGINT),
                graceful_timeout=7.0)


def test_records_round_trip_through_their_json():
    assert wp.records_from(wp.records_json([REC])) == ([REC], [])


@pytest.mark.parametrize("data, error", [
    ([], "not {"), ({"version": 2, "processes": []}, "version 2"),
    ({"version": 1, "processes": [{"name": "w"}]}, "not a process record"),
    ({"version": 1, "processes": [dict(REC.to_json(), pid=0)]}, "not a process record"),
    ({"version": 1, "processes": [dict(REC.to_json(), index=True)]}, "not a process record"),
])
def test_a_bad_record_file_or_entry_is_said_and_adopts_nothing_of_it(data, error):
    records, errors = wp.records_from(data)
    assert records == [] and len(errors) == 1 and error in errors[0]


def test_one_bad_entry_keeps_the_others_and_a_second_record_of_a_slot_is_refused():
    data = {"version": 1, "processes": [REC.to_json(), "junk", dict(REC.to_json(), pid=99)]}
    records, errors = wp.records_from(data)
    assert records == [REC] and len(errors) == 2 and "a second record for w/1 (pid 99)" in errors[1]


@pytest.mark.parametrize("now, recorded, expected", [
    (1000.0, 1000.0, None), (1000.9, 1000.0, None),
    (None, 1000.0, "gone"), (1040.0, 1000.0, "pid 4242 now belongs to another process"),
    (1000.0, None, "its start time was not recorded")])
def test_only_the_same_pid_with_the_same_start_time_is_our_process(now, recorded, expected):
    why = wp.not_same_process(dataclasses.replace(REC, start_time=recorded), now)
    assert why is None if expected is None else why.startswith(expected)


def test_an_adopted_slot_starts_where_its_process_did_with_its_restarts_fingerprint_and_folder():
    slot = wp.adopted(REC, 50.0, "fp")
    assert (slot.state, slot.started_at, slot.restarts, slot.spawns, slot.fingerprint, slot.folder) == \
        (S.STARTING, 50.0, 2, 1, "fp", "/srv/app")
    assert wp.plan({slot.key: wp.promoted(slot)}, {"w": 2}, POL, 60.0, {"w": "fp"}) == [Spawn(("w", 0), "wanted")]


@pytest.mark.parametrize("then", ["fp with another env", ""])
def test_an_adopted_process_started_otherwise_than_the_spec_would_is_rolled(then):
    slot = wp.promoted(wp.adopted(REC, 50.0, then))
    assert slot.fingerprint != then
    actions = wp.plan({slot.key: slot}, {"w": 2}, POL, 60.0, {"w": then})
    assert [a.reason for a in actions if isinstance(a, Stop)] == ["its command, environment or folder changed"]


def test_the_record_holds_a_digest_of_the_fingerprint_not_its_env_values():
    assert "fp" not in json.dumps(wp.records_json([REC])) and len(REC.fingerprint) == 64


# ---- readiness and start order ------------------------------------------------------------------

CHECKED = WorkerPolicy(start_seconds=1.0, ready_check=True, ready_timeout=10.0, ready_interval=0.5)


@pytest.mark.parametrize("slot_fields, now, expected", [
    ({}, 100.0, [wp.Check(("w", 0))]),                                   # checked from the spawn
    ({"checking": True}, 100.4, []),                                     # one check at a time
    ({"next_check": 100.5, "check_detail": "connection refused"}, 100.4, []),
    ({"next_check": 100.5}, 100.5, [wp.Check(("w", 0))]),                # every ready_interval
    ({"checked": True}, 100.5, []),                                      # passed, start_seconds not over
    ({"checked": True}, 101.0, [Promote(("w", 0))]),                     # both: RUNNING
    ({"next_check": 109.0}, 101.0, []),                                  # alive 1 s, not ready: STARTING
    ({"check_detail": "HTTP 503", "next_check": 111.0}, 110.0, [wp.NotReady(("w", 0), "HTTP 503")]),
    ({"not_ready": True}, 120.0, []),                                    # SIGKILLed: its exit decides
])
def test_a_checked_type_is_promoted_only_once_the_check_passed_and_start_seconds_are_over(slot_fields, now, expected):
    slot = Slot("w", 0, S.STARTING, started_at=100.0, spawns=1, **slot_fields)
    assert wp.plan({slot.key: slot}, {"w": 1}, {"w": CHECKED}, now) == expected


def test_not_ready_then_exit_is_a_start_failure_naming_the_last_answer():
    slot = wp.not_ready(Slot("w", 0, S.STARTING, started_at=100.0, spawns=1), "connection refused")
    after, _ = wp.on_exit(slot, -9, CHECKED, 110.0)
    assert after.state is S.BACKOFF and after.start_failures == 1 and not after.not_ready
    assert after.reason.startswith("not ready within ready_timeout (10s): connection refused; SIGKILLed")


def test_next_wakeup_of_a_checked_slot_is_its_next_check_or_its_ready_timeout():
    slot = Slot("w", 0, S.STARTING, started_at=100.0, next_check=100.5)
    assert wp.next_wakeup({slot.key: slot}, {"w": CHECKED}) == 100.5
    busy = dataclasses.replace(slot, checking=True)
    assert wp.next_wakeup({slot.key: busy}, {"w": CHECKED}) == 110.0


def test_a_held_type_spawns_nothing_but_keeps_what_it_runs():
    live = Slot("w", 0, S.RUNNING, started_at=0.0, spawns=1)
    backoff = Slot("w", 1, S.BACKOFF, next_start=0.0, spawns=1)
    assert wp.plan({live.key: live, backoff.key: backoff}, {"w": 3}, {}, 10.0, held={"w"}) == []
    assert wp.plan({live.key: live}, {"w": 0}, {}, 10.0, held={"w"})[0] == \
        Stop(("w", 0), int(signal.SIGTERM), 40.0, "scaled down")


@pytest.mark.parametrize("after, ready, requires, up, expected", [
    (["web"], {"web": True}, [], {}, []),
    (["web"], {"web": False}, [], {}, ["web"]),
    ([], {"web": False}, [], {}, []),
    (["web", "a"], {"web": True, "a": False}, ["tcp://h:1"], {}, ["a", "tcp://h:1"]),
    (["a"], {"a": True}, ["tcp://h:1", "tcp://h:2"], {"tcp://h:1": True}, ["tcp://h:2"]),
])
def test_start_blockers(after, ready, requires, up, expected):
    assert wp.start_blockers(after, ready, requires, up) == expected


def test_type_ready_is_every_wanted_process_running():
    slots = {("a", 0): Slot("a", 0, S.RUNNING), ("a", 1): Slot("a", 1, S.STARTING)}
    assert not wp.type_ready(slots, "a", 2) and wp.type_ready(slots, "a", 1) and wp.type_ready({}, "a", 0)


def test_waiting_is_said_first_on_a_change_and_every_10s():
    assert wp.announce_waiting(None, ["web"], 0.0)
    assert not wp.announce_waiting((0.0, ("web",)), ["web"], 9.9)
    assert wp.announce_waiting((0.0, ("web",)), ["web"], 10.0)
    assert wp.announce_waiting((0.0, ("web", "a")), ["a"], 1.0)
