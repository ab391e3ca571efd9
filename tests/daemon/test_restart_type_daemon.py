"""`ultrascalectl restart TYPE` on a real daemon: a worker type's processes are restarted one at
a time (each gets SIGTERM and is started again before the next), the other type is untouched,
and a job is refused."""
from __future__ import annotations

import pytest

from support.process_types import pid_of, processes, running, wait_processes
from test_workers_daemon import LOOP, notes, started  # noqa: F401 (started is a fixture)

pytestmark = pytest.mark.integration


@pytest.mark.timeout(120)
def test_restart_type_rolls_one_process_at_a_time_and_leaves_the_other_type(make_daemon, tmp_path, started):
    script = tmp_path / "loop.py"
    script.write_text(LOOP)
    out = tmp_path / "notes.txt"
    d = make_daemon({"processes": {
        "worker": {"command": ["python", str(script), str(out)], "count": 2, "graceful_timeout": 5,
                   "start_seconds": 0.5},
        "other": {"command": ["python", str(script), str(out)], "count": 1, "start_seconds": 0.5},
        "tick": {"kind": "job", "command": ["true"], "schedule": "0 0 1 1 *"},
    }}, nginx=False).start()
    body = wait_processes(d, lambda b: running(b, "worker", 2) and running(b, "other", 1), what="workers running")
    old = {i: pid_of(body, "worker", i) for i in (0, 1)}
    other = pid_of(body, "other", 0)
    started.update([*old.values(), other])
    r = d.ctl("restart", "worker", "--timeout", "60")
    assert r.returncode == 0 and "worker: restarted 2 processes" in r.stdout, (r.stdout, r.stderr)
    body = processes(d)
    new = {i: pid_of(body, "worker", i) for i in (0, 1)}
    started.update(new.values())
    assert set(new.values()).isdisjoint(old.values()) and pid_of(body, "other", 0) == other
    lines = [n[:2] for n in notes(out)]
    # one at a time: the second old process got its SIGTERM only after the first's replacement started
    order = [tuple(n) for n in lines if n[1] in {str(p) for p in (*old.values(), *new.values())}]
    assert order.index(("term", str(old[1]))) > order.index(("start", str(new[0])))
    r = d.ctl("restart", "tick")
    assert r.returncode == 4 and "is a job" in r.stderr, r.stderr
