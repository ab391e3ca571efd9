"""Jobs on a real daemon: real processes, a real flock, a real SIGKILL of the daemon.

A job due every 2 s whose body takes 3 s, under `concurrency: forbid`, over at least 30 runs,
through a SIGKILL of the daemon while a run goes and a restart: never two runs at once, never a
run started twice, the run going adopted by the next daemon. Then run-now, a failing run and
the job_failed alert, and the daemon's stop stopping the run going."""
from __future__ import annotations

import os
import signal
import textwrap
import time

import psutil
import pytest

pytestmark = pytest.mark.integration

BODY = textwrap.dedent("""\
    import os, sys, time
    out, seconds = sys.argv[1], float(sys.argv[2])
    def note(what):
        with open(out, "a") as f:
            f.write(f"{what} {os.environ['ULTRASCALE_PROCESS'].rsplit('/', 1)[1]} {os.getpid()} {time.time():.3f}\\n")
    note("start")
    time.sleep(seconds)
    note("end")
    sys.exit(int(os.environ.get("EXIT", "0")))
""")


def notes(path) -> list[tuple[str, int, int, float]]:
    try:
        return [(w, int(r), int(p), float(t)) for w, r, p, t in
                (line.split() for line in path.read_text().splitlines())]
    except FileNotFoundError:
        return []


def wait(cond, timeout, what, d=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}\n{d.log_tail() if d else ''}")


@pytest.fixture
def runs_seen():
    """Pids of runs the test saw: killed by process group afterwards if one is still there."""
    pids: set[int] = set()
    yield pids
    for pid in pids:
        try:
            if any("body.py" in part for part in psutil.Process(pid).cmdline()):
                os.killpg(pid, signal.SIGKILL)
        except (psutil.Error, OSError):
            pass


@pytest.mark.timeout(300)
def test_every_2s_with_a_3s_body_under_forbid_through_a_daemon_sigkill_never_overlaps_nor_doubles(
        make_daemon, tmp_path, runs_seen):
    body = tmp_path / "body.py"
    body.write_text(BODY)
    out = tmp_path / "runs.txt"
    d = make_daemon({"processes": {"tick": {"kind": "job", "command": ["python", str(body), str(out), "3"],
                                            "every": "2s", "graceful_timeout": 2, "history": 100}}},
                    nginx=False).start()

    def started() -> list[tuple]:
        return [n for n in notes(out) if n[0] == "start"]

    # a run going: SIGKILL the daemon one second into it
    wait(lambda: len(started()) >= 3, 30, "three runs", d)
    going = wait(lambda: (lambda s, e: s[-1] if s and s[-1][1] not in e else None)(
        started(), {n[1] for n in notes(out) if n[0] == "end"}), 10, "a run going", d)
    runs_seen.update(n[2] for n in started())
    time.sleep(1.0)
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(10)
    assert psutil.pid_exists(going[2]), "the run died with the daemon"
    d.start()
    adopted = wait(lambda: [e for e in d.events("job.adopted")], 10, "the run adopted", d)
    assert adopted[0]["pid"] == going[2] and adopted[0]["run"] == going[1]

    wait(lambda: len(started()) >= 31, 200, "31 runs", d)
    runs_seen.update(n[2] for n in started())
    wait(lambda: sum(1 for n in notes(out) if n[0] == "end") >= len(started()) - 1, 10, "the runs to end", d)
    starts, ends = started(), {n[1]: n for n in notes(out) if n[0] == "end"}
    numbers = [n[1] for n in starts]
    assert numbers == list(range(1, len(starts) + 1)), numbers          # none twice, none skipped
    assert len({n[2] for n in starts}) == len(starts)
    for a, b in zip(starts, starts[1:]):                                # never two at once
        assert a[1] in ends and ends[a[1]][3] <= b[3], (a, ends.get(a[1]), b)
    skipped = d.events("job.skipped")
    assert skipped and all("concurrency: forbid" in e["reason"] for e in skipped)

    # the history: the adopted run's outcome is unknown, the others succeeded
    status, answer = d.api("GET", "/jobs/tick/runs?limit=100")
    assert status == 200
    by_run = {r["run"]: r for r in answer["runs"]}
    assert by_run[going[1]]["outcome"] == "unknown" and by_run[going[1]]["adopted"] is True
    done = [r for r in answer["runs"] if r["outcome"] not in ("running", "unknown")]
    assert done and {r["outcome"] for r in done} == {"succeeded"}

    # run now under forbid while a run goes: refused, nothing started
    wait(lambda: d.api("GET", "/jobs")[1]["tick"]["running"], 10, "a run going", d)
    r = d.ctl("jobs", "tick", "--run")
    assert r.returncode == 4 and "still going" in r.stderr, (r.stdout, r.stderr)

    # the daemon's stop stops the run going
    live = d.api("GET", "/jobs")[1]["tick"]["running"]
    pid = live[0]["pid"] if live else None
    assert d.stop() == 0
    if pid is not None:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


@pytest.mark.timeout(120)
def test_a_failing_run_fires_job_failed_and_the_cli_shows_the_history(make_daemon, tmp_path, runs_seen):
    body = tmp_path / "body.py"
    body.write_text(BODY)
    out = tmp_path / "runs.txt"
    d = make_daemon({"processes": {"report": {"kind": "job", "schedule": "0 0 1 1 *",
                                              "command": ["python", str(body), str(out), "0.2"],
                                              "env": {"EXIT": "3"}}}}, nginx=False).start()
    wait(lambda: d.api("GET", "/jobs")[0] == 200 and "report" in d.api("GET", "/jobs")[1], 20, "the job", d)
    r = d.ctl("jobs", "report", "--run")
    assert r.returncode == 0 and "report: run 1 starting" in r.stdout, r.stderr
    wait(lambda: any(e["alert"] == "job_failed" for e in d.events("alert.firing")), 20, "job_failed", d)
    runs_seen.update(n[2] for n in notes(out))
    r = d.ctl("jobs", "report")
    assert r.returncode == 0 and "operator" in r.stdout and "failed" in r.stdout, r.stdout
    assert str(tmp_path / "log" / f"{d.name}-job-report.log") + ":0" in r.stdout
    r = d.ctl("jobs")
    assert r.returncode == 1 and "report (job, schedule 0 0 1 1 *, forbid)" in r.stdout, r.stdout
    assert "last run 1 failed" in r.stdout
    r = d.ctl("status")
    assert "report (job" in r.stdout
