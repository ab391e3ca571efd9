"""Smoke tests of the benchmark suite (scripts/bench): the generated configs and tables, and a
2-second micro-run of one setup. Fast (< 30 s); the real numbers come from scripts/bench."""
from __future__ import annotations

import configparser
import contextlib
import ctypes
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench import report  # noqa: E402
from bench.setups import bench_spec, render_supervisord_conf  # noqa: E402
from bench.util import parse_wrk  # noqa: E402
from support import needs  # noqa: E402
from ultrascaled.core.command import gunicorn_argv  # noqa: E402

WRK_OUT = """\
Running 5s test @ http://127.0.0.1:18580/
  2 threads and 1000 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   208.84ms   72.13ms    1.62s    82.60%
    Req/Sec     2.34k   507.72     3.41k    71.00%
  Latency Distribution
     50%  210.32ms
     75%  243.08ms
     90%  275.73ms
     99%    1.50s
  23461 requests in 5.10s, 4.00MB read
  Socket errors: connect 0, read 3, write 0, timeout 17
  Non-2xx or 3xx responses: 5
Requests/sec:   4600.23
Transfer/sec:    804.14KB
"""


def test_parse_wrk_reads_rate_percentiles_and_errors():
    r = parse_wrk(WRK_OUT)
    assert r.rps == 4600.23 and r.requests == 23461 and r.seconds == pytest.approx(5.1)
    assert r.p50_ms == pytest.approx(210.32) and r.p99_ms == pytest.approx(1500.0)
    assert r.socket_errors == {"connect": 0, "read": 3, "write": 0, "timeout": 17}
    assert r.non_2xx == 5 and r.errors == 25
    assert r.error_pct == pytest.approx(100 * 25 / (23461 + 17))


def test_supervisord_conf_runs_the_same_command_as_ultrascaled(tmp_path):
    from supervisor.datatypes import dict_of_key_value_pairs

    spec = bench_spec("bench-sv", 18601, 2, tmp_path)
    text = render_supervisord_conf(spec, count=2, max_instances=4, run_dir=tmp_path,
                                   base_env={"PATH": os.environ.get("PATH", "")})
    cp = configparser.RawConfigParser()
    cp.read_string(text)
    programs = [s for s in cp.sections() if s.startswith("program:")]
    assert programs == [f"program:i{18601 + i}" for i in range(4)]
    assert [cp[p]["autostart"] for p in programs] == ["true", "true", "false", "false"]
    for i, p in enumerate(programs):
        assert shlex.split(cp[p]["command"]) == gunicorn_argv(spec, 18601 + i)
        env = dict_of_key_value_pairs(cp[p]["environment"])
        assert env["PORT"] == str(18601 + i) and env["ULTRASCALE_INSTANCE"] == str(i)
        assert env["PROMETHEUS_MULTIPROC_DIR"].endswith(f"metrics/{18601 + i}")
    argv = shlex.split(cp["program:i18601"]["command"])
    assert argv[argv.index("--worker-class") + 1] == "ultrascale_gevent.GeventWorker"   # gevent, via the shim
    assert argv[argv.index("--workers") + 1] == "1"
    assert cp["supervisord"]["nodaemon"] == "true"


def _fake_results() -> dict:
    cell = {"rps": 5000.0, "p50_ms": 100.0, "p99_ms": 300.0, "errors": 0, "error_pct": 0.0,
            "timeouts": 0, "non_2xx": 0, "runs": 1, "rps_all": [5000]}
    slow = dict(cell, rps=1000.0, rps_all=[1000])
    return {
        "date": "2026-01-01 00:00 UTC", "quick": True, "command": "scripts/bench --quick",
        "elapsed_s": 60.0, "json_path": "/tmp/x.json", "leftovers": [],
        "machine": {"cores": 2, "cpu_model": "cpu", "memory_gib": 4, "os": "Debian", "kernel": "6",
                    "python": "3.11", "nginx": "1.22", "gunicorn": "27", "gevent": "26",
                    "supervisor": "4.3", "ultrascale": "0.1", "wrk": "wrk 4"},
        "loads": {"throughput": {"loadavg": [2.0, 1.0, 0.5], "host_cpu_pct": 50.0,
                                 "others": ["python 90%"]}},
        "throughput": {"conns": 1000, "runs": 1, "duration": 5,
                       "labels": {"sync": "(a) sync", "handwired": "(c) hand", "ultrascaled": "(d) us"},
                       "summary": {"sync": {"/": slow, "cached": slow},
                                   "handwired": {"/": cell, "cached": cell},
                                   "ultrascaled": {"/": cell, "cached": dict(cell, rps=6000.0)}}},
        "recovery": {"kills": 1, "labels": {"ultrascaled": "(d) us"},
                     "results": {"ultrascaled": {"samples": [{"back_s": 0.3}], "median_s": 0.3,
                                                 "min_s": 0.3, "max_s": 0.3, "missing": 0,
                                                 "old_answered_median_s": None}}},
    }


def test_report_states_goals_and_shared_machine():
    md = report.render(_fake_results())
    assert "| (d) us | 5,000 | 5.00x |" in md
    assert "≥ (c) met" in md and "5x" not in md  # a retired goal is not judged
    assert "**Shared machine:**" in md and "python" in md
    res = _fake_results()
    res["others"] = {"throughput": {"mean_pct": 3.0, "max_pct": 8.0, "samples": 4, "busy": []}}
    assert "the machine was quiet" in report.render(res)
    assert "| (d) us | 0.30 s |" in md
    assert "### Goals missed by ultrascaled in this run\n\nNone." in md


def test_report_names_a_missed_goal():
    res = _fake_results()
    res["throughput"]["summary"]["ultrascaled"]["/"] = dict(
        res["throughput"]["summary"]["ultrascaled"]["/"], rps=4000.0, p99_ms=2500.0)
    md = report.render(res)
    assert "p99 < 2 s **MISSED**" in md and "5x" not in md
    assert "- throughput /: 80% of hand-wired (c)" in md


def test_write_doc_replaces_only_the_generated_section(tmp_path):
    doc = tmp_path / "b.md"
    doc.write_text(f"# Intro\n\nhand-written\n\n{report.BEGIN}\nold\n{report.END}\n\n## After\n")
    report.write_doc(doc, "new tables\n")
    text = doc.read_text()
    assert text.startswith("# Intro\n\nhand-written\n\n")
    assert "new tables" in text and "old" not in text and text.endswith("## After\n")
    report.write_doc(doc, "newer\n")
    assert doc.read_text().count(report.BEGIN) == 1


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_micro_run_prints_the_throughput_table():
    needs.wrk()
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}:/usr/sbin")
    r = subprocess.run([sys.executable, "-m", "bench", "--quick", "--only", "throughput",
                        "--setups", "handwired", "--duration", "2", "--connections", "50", "--no-doc"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=55)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "### 1. Throughput at 50 connections" in r.stdout
    assert "| (c) hand-wired" in r.stdout
    assert "killed leftover" not in r.stderr


def test_failures_table_shows_failed_retried_and_missing_commands():
    res = _fake_results()
    row = {"action": "restart all", "how": "x", "error": None, "action_s": 4.0, "window_s": 6.0,
           "ok": 990, "failed": 10, "reconnects": 7, "error_counts": {"http_5xx": 10},
           "status_counts": {}, "samples": []}
    res["failures"] = {"users": 200, "pre_s": 1.0, "post_s": 1.5,
                       "labels": {"supervisord": "(b) sv", "ultrascaled": "(d) us"},
                       "rows": {"supervisord": [dict(row, error="n/a")], "ultrascaled": [row]}}
    md = report.render(res)
    assert ("| restart all | no such command | - | - | 10 / 1,000 (http_5xx 10) | 7 | 4.0 s "
            "| **MISSED** |") in md
    assert "- failures: restart all: 10 failed requests under ultrascaled" in md


@contextlib.contextmanager
def reaping_orphans():
    """Make this process the reaper of the orphans of what it starts (PR_SET_CHILD_SUBREAPER)
    while the block runs: a killed escapee is then reaped as soon as it dies, instead of staying
    a zombie until the host's init gets to it (1-2 s here, which cleanup() spent waiting)."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_child_subreaper = 36
    on = libc.prctl(pr_set_child_subreaper, 1, 0, 0, 0) == 0
    try:
        yield
    finally:
        if on:
            libc.prctl(pr_set_child_subreaper, 0, 0, 0, 0)


def test_tracker_cleanup_kills_what_escaped_into_another_session(tmp_path):
    import psutil

    from bench.util import Tracker

    t = Tracker(cmdline_marker=str(tmp_path))
    pidfile = tmp_path / "grandchild.pid"
    with reaping_orphans():
        p = t.spawn(["bash", "-c", f"setsid sleep 300 & echo $! > {pidfile}; exec sleep 300"])
        for _ in range(100):
            if pidfile.exists() and pidfile.read_text().strip():
                break
            time.sleep(0.02)
        grandchild = int(pidfile.read_text())
        assert psutil.pid_exists(grandchild)
        for _ in range(250):  # until it is the escapee: `sleep` in a session of its own
            try:
                if psutil.Process(grandchild).cmdline() == ["sleep", "300"]:
                    break
            except psutil.Error:
                pass
            time.sleep(0.02)
        killed = t.cleanup(grace=2)
    assert p.poll() is not None
    assert grandchild in killed
    assert not psutil.pid_exists(grandchild) or psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_ultrascaled_setup_runs_through_the_harness_and_leaves_nothing(tmp_path):
    """(d) is started by the tests' launcher with the spec's defaults (no test tuning), on free
    ports, and the run's tracker stops it: one launcher for tests and measurements."""
    from bench.setups import Ultrascaled
    from bench.util import Tracker

    tracker = Tracker(cmdline_marker=str(tmp_path))
    s = Ultrascaled(tracker, tmp_path)
    try:
        s.start(2)
        spec = s.daemon.spec
        assert "health" not in spec and "ULTRASCALE_TEST_ENDPOINTS" not in spec["app"].get("env", {})
        assert s.ports() == [s.daemon.base_port, s.daemon.base_port + 1]
        assert s.scale(3) == "ultrascalectl scale 3"
        s.wait_stable(60)
        assert len(s.ports()) == 3
        assert "RUNNING" in subprocess.run(s.status_argv(), capture_output=True, text=True).stdout.upper()
    finally:
        s.stop()
        leftovers = tracker.cleanup(grace=5)
        s.daemon.cleanup()
    assert leftovers == []
