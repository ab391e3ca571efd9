"""The job types' loop (supervise/jobs_loop.py) with the fake runner, clock and locks: when runs
start, concurrency, timeouts, history, the job_failed alert, a daemon restart that adopts a run
going (or finds only its lock), missed runs, run now, shutdown and detach, in milliseconds."""
from __future__ import annotations

import asyncio
import functools
import json
import signal

import pytest

from fakes import Harness
from ultrascaled.core.control import ScaleRefused


def component(fn):
    @functools.wraps(fn)
    def wrapper(tmp_path, *a, **kw):
        return asyncio.run(fn(tmp_path, *a, **kw))
    return wrapper


def job(name="tick", every="2s", extra=""):
    return f"""
processes:
  {name}:
    kind: job
    command: [python, -m, myapp.clean]
    every: {every}
    graceful_timeout: 5
    env: {{JOBVAR: "yes"}}
{extra}"""


async def up(tmp_path, text=None, **kw) -> Harness:
    h = Harness(tmp_path, text if text is not None else job(), **kw)
    await h.start()
    return h


def runs_alive(h: Harness, name="tick"):
    return [p for p in h.runner.procs.values() if p.alive and p.label.startswith(f"comp/{name}/")]


def alert(h: Harness, name="job_failed") -> dict | None:
    return next((a for a in h.alerts().values() if a["alert"] == name), None)


def started(h: Harness) -> list[int]:
    return [e["run"] for e in h.events_named("job.started")]


async def finish(h: Harness, rc=0, name="tick"):
    for p in runs_alive(h, name):
        h.runner.exit_proc(p, rc)
    await h.settle()


@component
async def test_a_job_first_runs_at_its_next_due_time_not_at_start_with_its_env_folder_and_log(tmp_path):
    h = await up(tmp_path)
    assert started(h) == []                               # not at once (PM2 #6030)
    await h.advance(2.0)
    assert started(h) == [1]
    (p,) = runs_alive(h)
    assert p.argv == ["python", "-m", "myapp.clean"] and p.env["JOBVAR"] == "yes"
    assert p.env["ULTRASCALE_PROCESS"] == "comp/tick/1" and p.cwd == str(tmp_path)
    assert p.log_path == str(tmp_path / "logs" / "comp-job-tick.log")
    assert h.events_named("job.started")[0]["late"] <= 0.25
    await finish(h, 0)
    (r,) = h.sup.job_runs("tick")
    assert (r["run"], r["outcome"], r["returncode"], r["why"]) == (1, "succeeded", 0, "schedule")
    saved = json.loads((tmp_path / "state" / "jobs.json").read_text())
    assert saved["jobs"]["tick"]["seq"] == 1 and saved["jobs"]["tick"]["live"] == []


@component
async def test_forbid_skips_a_due_run_while_one_goes_and_never_runs_two_at_once(tmp_path):
    """every 2s with a 3 s body: a run at every other due time, the ones between skipped."""
    h = await up(tmp_path)
    most = 0
    for _ in range(60):                                   # 30 s of fake time in 0.5 s steps
        await h.advance(0.5)
        for p in runs_alive(h):
            r = h.sup.jobs.live["tick"][int(p.label.rsplit("/", 1)[1])]
            if h.clock.now() - r.started >= 3.0:
                h.runner.exit_proc(p, 0)
        await h.settle()
        most = max(most, len(runs_alive(h)))
    assert most == 1
    runs = started(h)
    assert runs == list(range(1, len(runs) + 1)) and 6 <= len(runs) <= 8
    skipped = h.events_named("job.skipped")
    assert skipped and all("concurrency: forbid" in e["reason"] for e in skipped)


@component
async def test_replace_stops_the_run_going_then_starts_the_new_one(tmp_path):
    h = await up(tmp_path, job(extra="    concurrency: replace\n"))
    await h.advance(2.0)
    (first,) = runs_alive(h)
    h.runner.deaf_labels.add(first.label)                 # it takes its time to stop
    await h.advance(2.0)
    assert ("signal", first.label, signal.SIGTERM) in h.runner.calls
    assert runs_alive(h) == [first]                       # not two at once
    h.runner.exit_proc(first, -15)
    await h.settle()
    (second,) = runs_alive(h)
    assert second.label == "comp/tick/2"
    assert h.sup.job_runs("tick")[-1]["outcome"] == "replaced"
    h.runner.deaf_labels.add(second.label)
    assert h.sup.run_job("tick")["action"] == "replace"     # run now under replace: the same way
    await h.settle()
    h.runner.exit_proc(second, -15)
    await h.settle()
    assert [e["why"] for e in h.events_named("job.started")][-1] == "operator"


@component
async def test_allow_runs_them_side_by_side(tmp_path):
    h = await up(tmp_path, job(extra="    concurrency: allow\n"))
    await h.advance(6.0)
    assert len(runs_alive(h)) == 3 and started(h) == [1, 2, 3]


@component
async def test_a_run_past_its_timeout_is_stopped_then_killed_and_fires_job_failed(tmp_path):
    h = await up(tmp_path, job(every="1h", extra="    timeout: 10\n"))
    h.sup.run_job("tick")
    await h.settle()
    (p,) = runs_alive(h)
    h.runner.deaf_labels.add(p.label)
    await h.advance(10.0)
    assert ("signal", p.label, signal.SIGTERM) in h.runner.calls and p.alive
    await h.advance(5.0)                                  # graceful_timeout
    assert not p.alive and ("kill_group", p.pgid, signal.SIGKILL) in h.runner.calls
    (r,) = h.sup.job_runs("tick")
    assert r["outcome"] == "timed_out" and r["why"] == "operator"
    assert alert(h) is not None
    h.sup.run_job("tick")
    await h.settle()
    await finish(h, 0)
    assert alert(h) is None                               # the next success resolves it


@component
async def test_a_failed_run_fires_job_failed_naming_its_log_offset(tmp_path):
    h = await up(tmp_path)
    h.runner.log_sizes[str(tmp_path / "logs" / "comp-job-tick.log")] = 1234
    await h.advance(2.0)
    await finish(h, 3)
    (r,) = h.sup.job_runs("tick")
    assert (r["outcome"], r["returncode"], r["log_offset"]) == ("failed", 3, 1234)
    assert "exited with 3" in alert(h)["message"]
    assert "from byte 1234" in alert(h)["message"]


@component
async def test_a_restarted_daemon_adopts_the_run_going_and_never_starts_it_twice(tmp_path):
    h = await up(tmp_path)
    await h.advance(2.0)
    (p,) = runs_alive(h)
    # the daemon is SIGKILLed: its run goes on; a new daemon starts on the same host
    h2 = Harness(tmp_path, job(), runner=h.runner, clock=h.clock, locks=h.locks)
    await h2.start()
    assert h2.events_named("job.adopted")[0]["pid"] == p.pid
    assert [r["outcome"] for r in h2.sup.job_runs("tick")] == ["running"]
    await h2.advance(4.0)                                 # two due times while it goes: skipped
    assert runs_alive(h2) == [p] and started(h2) == []
    h2.runner.exit_proc(p, 0)
    await h2.settle()
    r = h2.sup.job_runs("tick")[0]
    assert (r["run"], r["outcome"], r["returncode"]) == (1, "unknown", None)   # its code went to the dead daemon
    await h2.advance(2.0)
    assert started(h2) == [2]                             # numbering goes on


@component
async def test_a_run_whose_record_was_lost_still_holds_its_lock_and_is_not_doubled(tmp_path):
    h = await up(tmp_path)
    await h.advance(2.0)
    (p,) = runs_alive(h)
    (tmp_path / "state" / "jobs.json").unlink()           # killed between the spawn and the write
    h2 = Harness(tmp_path, job(), runner=h.runner, clock=h.clock, locks=h.locks)
    await h2.start()
    await h2.advance(2.0)
    assert started(h2) == [] and runs_alive(h2) == [p]
    assert "holds the job's lock" in h2.events_named("job.skipped")[0]["reason"]
    with pytest.raises(ScaleRefused) as exc:
        h2.sup.run_job("tick")
    assert exc.value.code == "job_running"
    h2.runner.exit_proc(p, 0)
    await h2.settle()
    await h2.advance(2.0)
    assert len(started(h2)) == 1                          # the lock is free: runs go on


@component
async def test_a_recorded_pid_now_another_process_is_not_adopted(tmp_path):
    h = await up(tmp_path)
    await h.advance(2.0)
    (p,) = runs_alive(h)
    h.runner.start_times[p.pid] = 1_650_000_000.0         # the pid was reused
    h.locks.paths.clear()                                 # and the stranger holds no lock of ours
    h2 = Harness(tmp_path, job(), runner=h.runner, clock=h.clock, locks=h.locks)
    await h2.start()
    assert h2.events_named("job.adopted") == []
    assert h2.events_named("job.lost")[0]["reason"] == "its pid is another process now"
    assert h2.sup.job_runs("tick")[0]["outcome"] == "unknown"


@pytest.mark.parametrize("catch_up", [False, True])
@component
async def test_runs_missed_while_the_daemon_was_down_are_said_and_caught_up_once_when_asked(tmp_path, catch_up):
    extra = "    catch_up: true\n" if catch_up else ""
    h = await up(tmp_path, job(every="10s", extra=extra))
    await h.advance(10.0)
    await finish(h, 0)
    await h.sup.shutdown(timeout=1)
    h.clock.t += 55.0                                     # down for five due times
    h2 = Harness(tmp_path, job(every="10s", extra=extra), runner=h.runner, clock=h.clock, locks=h.locks)
    await h2.start()
    (missed,) = h2.events_named("job.missed")
    assert missed["missed"] == 5 and missed["catch_up"] is catch_up
    assert [e["why"] for e in h2.events_named("job.started")] == (["catch_up"] if catch_up else [])


@component
async def test_run_now_respects_concurrency_and_names_what_is_wrong(tmp_path):
    h = await up(tmp_path, job(every="1h"))
    with pytest.raises(ScaleRefused) as exc:
        h.sup.run_job("nope")
    assert exc.value.code == "not_found" and "tick" in str(exc.value)
    assert h.sup.run_job("tick") == {"job": "tick", "run": 1, "action": "start"}
    await h.settle()
    with pytest.raises(ScaleRefused) as exc:
        h.sup.run_job("tick")
    assert exc.value.code == "job_running" and "run 1 still going" in str(exc.value)
    with pytest.raises(ScaleRefused) as exc:
        h.sup.scale_process("tick", 3)
    assert "is a job" in str(exc.value) and "jobs tick --run" in str(exc.value)
    procs = h.sup.processes()
    assert procs["tick"]["kind"] == "job" and procs["tick"]["ready"] == 1
    assert procs["tick"]["instances"][0]["state"] == "running"
    listing = h.sup.jobs_listing()["tick"]
    assert listing["every"] == "1h" and listing["next_run"] > h.clock.wall()


@component
async def test_shutdown_stops_the_runs_and_detach_leaves_them_to_the_next_daemon(tmp_path):
    h = await up(tmp_path, job(every="1h"))
    h.sup.run_job("tick")
    await h.settle()
    (p,) = runs_alive(h)
    await h.sup.detach()
    assert p.alive
    saved = json.loads((tmp_path / "state" / "jobs.json").read_text())
    assert [r["pid"] for r in saved["jobs"]["tick"]["live"]] == [p.pid]
    h2 = Harness(tmp_path, job(every="1h"), runner=h.runner, clock=h.clock, locks=h.locks)
    await h2.start()
    await h2.sup.shutdown(timeout=1)
    assert not p.alive and h2.sup.job_runs("tick")[0]["outcome"] == "stopped"


@component
async def test_a_run_that_cannot_start_is_in_the_history_and_fires_job_failed(tmp_path):
    h = await up(tmp_path)
    h.runner.spawn_error = FileNotFoundError(2, "No such file or directory", "python")
    await h.advance(2.0)
    (r,) = h.sup.job_runs("tick")
    assert r["outcome"] == "spawn_failed" and "No such file" in r["note"]
    assert "could not start" in alert(h)["message"]
    assert not h.locks.taken                              # the daemon's copy of the lock was let go


@component
async def test_workers_and_jobs_each_see_only_their_kind(tmp_path):
    h = await up(tmp_path, job() + """  worker:
    command: [rq, worker]
    count: 1
    max: 2
""")
    assert set(h.sup.workers.spec.processes) == {"worker"} and set(h.sup.jobs.spec.processes) == {"tick"}
    procs = h.sup.processes()
    assert (procs["worker"]["kind"], procs["tick"]["kind"]) == ("worker", "job")
    await h.advance(2.0)
    assert h.runner.workers_alive() == ["comp/tick/1", "comp/worker/0"]


@component
async def test_the_metrics_count_runs_by_outcome_and_say_the_last_success(tmp_path):
    h = await up(tmp_path, job() + "  worker:\n    command: [rq, worker]\n    count: 2\n    max: 2\n")
    await h.advance(2.0)
    await finish(h, 0)
    await h.advance(2.0)
    await finish(h, 1)
    fams = {f.name: f for f in h.sup.process_metric_families()}
    runs = {s.labels["outcome"]: s.value for s in fams["ultrascale_job_runs"].samples if s.name.endswith("_total")}
    assert runs == {"succeeded": 1, "failed": 1}
    (last,) = fams["ultrascale_job_last_success_timestamp_seconds"].samples
    assert last.labels == {"job": "tick"} and abs(last.value - (h.clock.wall() - 2.0)) < 0.5
    desired = {s.labels["type"]: s.value for s in fams["ultrascale_process_desired"].samples}
    assert desired == {"tick": 0, "worker": 2}


@component
async def test_a_jobs_log_is_rotated_between_runs_never_under_one(tmp_path):
    h = await up(tmp_path, job(extra="    concurrency: allow\n"))
    log = str(tmp_path / "logs" / "comp-job-tick.log")
    h.runner.log_sizes[log] = 60 << 20                      # over logs.max_bytes (50 MiB)
    await h.advance(2.0)
    assert h.runner.rotated == [log] and h.sup.jobs.live["tick"][1].log_offset == 0
    h.runner.log_sizes[log] = 60 << 20
    await h.advance(2.0)                                    # run 1 still writes: not now
    assert h.runner.rotated == [log] and h.sup.jobs.live["tick"][2].log_offset == 60 << 20


@component
async def test_worker_logs_are_written_through_a_rotating_pipe(tmp_path):
    h = await up(tmp_path, "processes:\n  worker:\n    command: [rq, worker]\n    max: 2\n")
    assert h.runner.rotations[str(tmp_path / "logs" / "comp-worker-0.log")] == (50 * 1024 * 1024, 5)
    web = [r for path, r in h.runner.rotations.items() if "instance-" in path]
    assert web and all(r is None for r in web)              # gunicorn reopens its own on SIGUSR1


@component
async def test_a_wall_clock_that_goes_back_neither_runs_a_job_twice_nor_stalls_it(tmp_path):
    h = await up(tmp_path, job(every="10s"))
    await h.advance(10.0)
    await finish(h, 0)
    assert started(h) == [1]
    wall = h.clock.wall
    h.clock.wall = lambda: wall() - 5.0                     # back by less than the period
    await h.advance(10.0)                                   # the due time that ran is not run again
    assert started(h) == [1] and h.events_named("job.clock_back") == []
    await h.advance(5.0)
    await finish(h, 0)
    assert started(h) == [1, 2]
    h.clock.wall = lambda: wall() - 3600.0                  # back by an hour: from now, not in an hour
    await h.advance(10.0)
    assert h.events_named("job.clock_back") and started(h) == [1, 2, 3]


@component
async def test_a_history_that_cannot_be_written_is_said_and_the_run_still_goes_singly(tmp_path):
    h = await up(tmp_path)
    state = tmp_path / "state" / "jobs.json"
    state.unlink()
    state.mkdir()                                           # what a full disk or a bad folder does to the write
    await h.advance(2.0)
    assert started(h) == [1] and h.events_named("state.write_failed")
    await h.advance(2.0)                                    # the lock still keeps it single
    assert started(h) == [1] and len(runs_alive(h)) == 1


@component
async def test_file_descriptors_exhausted_at_a_due_run_fail_that_run_alone(tmp_path):
    h = await up(tmp_path)
    take = h.locks.take

    def no_fds(path):
        raise OSError(24, "Too many open files")            # EMFILE while taking the run's lock
    h.locks.take = no_fds
    await h.advance(2.0)
    (r,) = h.sup.job_runs("tick")
    assert r["outcome"] == "spawn_failed" and "Too many open files" in r["note"] and runs_alive(h) == []
    h.locks.take = take                                     # the daemon has fds again: the next due run goes
    await h.advance(2.0)
    assert started(h) == [2] and len(runs_alive(h)) == 1 and not h.locks.taken


@component
async def test_two_fleets_sharing_a_log_folder_write_their_own_worker_and_job_logs(tmp_path):
    """The default paths.log_dir is one folder for every fleet of the host: a `worker` type and a
    `tick` job in each of two fleets must not write (and rotate) one file."""
    h = await up(tmp_path, job() + "  worker:\n    command: [rq, worker]\n")
    other = __import__("dataclasses").replace(h.spec, name="other")
    assert h.sup.workers.log_path(h.spec, "worker", 0) != h.sup.workers.log_path(other, "worker", 0)
    assert h.runner.worker("comp/worker/0").log_path.endswith("/comp-worker-0.log")
    await h.advance(2.0)
    assert h.runner.worker("comp/tick/1").log_path.endswith("/comp-job-tick.log")
