"""The command line end to end (real worker processes, real local server) and run().

Two tests run the CLI as its own process (`python -m loadtest`), for the exit codes the shell
sees (0 and 2); the others call `main()` in this process, which parses, runs (in real worker
processes all the same) and prints exactly as the command does, without an interpreter start."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest import Config, Targets, run
from loadtest.cli import main

ROOT = Path(__file__).resolve().parents[2]


def cli(*args, timeout=60):
    """Run the CLI in a subprocess; the process is always reaped (run() kills on timeout)."""
    return subprocess.run([sys.executable, "-m", "loadtest", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def cli_here(capsys, *args) -> tuple[int, str, str]:
    """main(args) in this process: (exit code, stdout, stderr), as cli() gives them; a usage
    error's SystemExit is turned into its code, as the interpreter would."""
    try:
        rc = main(list(args))
    except SystemExit as exc:
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


def test_request_bound_json_to_stdout_exit_0(server):
    p = cli(f"{server.base}/ok", "-u", "4", "-n", "60", "-q", "--procs", "2", "--json", "-",
            "--max-error-rate", "0", "--max-p99", "2000")
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert data["total"] == 60 and data["ok"] == 60 and data["failed"] == 0
    assert data["status_counts"] == {"200": 60}
    assert data["procs"] == 2
    assert data["passed"] is True
    assert server.requests == 60
    assert "Verdict     PASS" in p.stderr  # the summary moves to stderr when JSON goes to stdout


def test_missed_error_rate_exits_1(server, capsys):
    rc, out, err = cli_here(capsys, f"{server.base}/500", "-u", "2", "-n", "20", "-q", "--procs", "1",
                            "--max-error-rate", "1")
    assert rc == 1, err
    assert "http_5xx: 20" in out
    assert "500: 20" in out
    assert "FAIL  error rate" in out


@pytest.mark.integration   # real servers or processes, about a second or more: the full suite runs it
def test_missed_p99_exits_1_and_timeouts_counted(server, capsys):
    server.slow_seconds = 0.6
    rc, out, err = cli_here(capsys, f"{server.base}/slow", "-u", "2", "-n", "4", "-q", "--procs", "1",
                            "--timeout", "0.2", "--max-p99", "100", "--json", "-")
    assert rc == 1, err
    data = json.loads(out)
    assert data["error_counts"] == {"timeout": 4}
    assert data["failed"] == 4 and data["ok"] == 0
    assert data["checks"][0]["passed"] is False


@pytest.mark.integration   # real servers or processes, about a second or more: the full suite runs it
def test_duration_bound_stops_by_itself_with_progress(server, capsys):
    # 10 ms think time: the run needs its length, not 1.5 s of both cores at full speed
    rc, out, err = cli_here(capsys, f"{server.base}/ok", "-u", "3", "-d", "1.5", "--procs", "1",
                            "--think", "10")
    assert rc == 0, err
    # no request bound: only the duration could end it, and the workers ended by themselves
    # (not at the coordinator's hard deadline, which would say so)
    assert "did not finish" not in out + err
    assert "req/s  p95(last 1s)" in err  # live progress once a second
    assert "Requests    " in out and "0 failed" in out


@pytest.mark.integration   # real servers or processes, about a second or more: the full suite runs it
def test_quiet_suppresses_progress(server, capsys):
    # longer than the 1 s between progress lines, so without -q there would be one
    rc, out, err = cli_here(capsys, f"{server.base}/ok", "-u", "2", "-d", "1.2", "--procs", "1", "-q",
                            "--think", "10")
    assert rc == 0
    assert "Requests    " in out
    assert "p95(last 1s)" not in err


@pytest.mark.parametrize("url", ["http://10.1.2.3:80/", "http://example.com/", "http://0.0.0.0:8080/"])
def test_non_loopback_exit_2(url, capsys):
    rc, out, err = cli_here(capsys, url, "-n", "1")
    assert rc == 2
    assert "non-loopback" in err
    assert "Requests" not in out


@pytest.mark.parametrize("args,names", [
    (["-u", "0"], "--users"),
    (["-u", "x"], "--users"),
    (["--duration", "-1"], "--duration"),
    (["--requests", "0"], "--requests"),
    (["--timeout", "0"], "--timeout"),
    (["--path", "noslash:2"], "--path"),
    (["--path", "/a:0"], "--path"),
    (["--procs", "0"], "--procs"),
    (["--ramp", "5", "--duration", "2"], "--ramp"),
    (["--max-p99", "abc"], "--max-p99"),
    (["--series", "10,x"], "--series"),
    (["--chart", "x.png"], "--chart"),
])
def test_bad_arguments_exit_2_naming_the_argument(args, names, capsys):
    rc, out, err = cli_here(capsys, "http://127.0.0.1:9/", *args)
    assert rc == 2, out + err
    assert names in err
    assert "Requests" not in out  # refused before any load


def test_missing_url_exit_2():
    p = cli()
    assert p.returncode == 2 and "url" in p.stderr


@pytest.mark.integration   # real servers or processes, about a second or more: the full suite runs it
def test_run_api_path_mix_and_json_file(server, tmp_path, capsys):
    cfg = Config(url=f"{server.base}/ignored", users=4, duration=None, requests=400, procs=2,
                 paths=[("/ok", 3), ("/chunked", 1)], targets=Targets(max_error_rate_pct=0))
    r = run(cfg)
    assert r.total == 400 and r.failed == 0 and r.passed
    assert set(r.path_counts) == {"/ok", "/chunked"}
    assert 240 <= r.path_counts["/ok"] <= 360  # 3:1 weights -> ~300
    assert r.latency.count == 400 and r.latency.p50 <= r.latency.p99 <= r.latency.max
    assert r.connects == 4 and r.client_cpu_s > 0 and len(r.client_cpu_per_proc) == 2
    out = tmp_path / "r.json"
    rc, stdout, err = cli_here(capsys, f"{server.base}/ok", "-n", "10", "-u", "1", "-q", "--json", str(out))
    assert rc == 0, err
    assert json.loads(out.read_text())["ok"] == 10
    assert "Requests    10 " in stdout  # the summary stays on stdout when the JSON goes to a file


def test_run_api_connect_refused(free_port):
    r = run(Config(url=f"http://127.0.0.1:{free_port}/", users=2, duration=None, requests=10, procs=1))
    assert r.failed == 10 and r.error_counts == {"connect_refused": 10} and r.ok == 0
    assert r.checks == [] and r.passed  # no targets given: nothing to miss


@pytest.mark.integration   # real servers or processes, about a second or more: the full suite runs it
def test_run_api_ramp_delays_users(server):
    r = run(Config(url=f"{server.base}/ok", users=4, duration=0.6, ramp=0.4, procs=1, think_ms=50))
    # users start at 0, 0.1, 0.2, 0.3 s, so they are active 0.6+0.5+0.4+0.3 = 1.8 user-seconds;
    # at >= 50 ms per request that is <= 36 (+4 in flight); without the ramp it would be ~47
    # (the upper bound only: a busy host sends fewer, never more)
    assert r.failed == 0 and 4 <= r.total <= 40
    assert server.connections == 4


@pytest.mark.integration   # real servers or processes, about a second or more: the full suite runs it
def test_dead_target_duration_run_stops_on_time(free_port):
    """Connect failures can fail without yielding; the run must still end at its deadline."""
    duration = 0.3
    r = run(Config(url=f"http://127.0.0.1:{free_port}/", users=20, duration=duration, procs=1))
    assert r.ok == 0 and r.failed == r.error_counts["connect_refused"] > 0
    assert r.failed < 20 * duration / 0.01 + 40  # users pause 10 ms after a failed connect
    assert "workers did not finish" not in " ".join(r.warnings)  # they stopped at the deadline themselves
