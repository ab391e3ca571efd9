"""`ultrascalectl plan` through add_arguments/run: exit codes, output, spec lookup, import cost."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from ultrascaled.spec import loader
from ultrascaled.surface import plan_command

FITS = ("instances: {count: 2, min: 1, max: 4}\ngunicorn: {workers: 1, worker_class: gevent}\n"
        "mongodb: {connection_budget: 1000}\n")


def run(*argv):
    parser = argparse.ArgumentParser(prog="ultrascalectl plan")
    plan_command.add_arguments(parser)
    return plan_command.run(parser.parse_args(list(argv)))


@pytest.fixture
def spec_file(tmp_path):
    def write(text):
        p = tmp_path / "fleet.yaml"
        p.write_text(text)
        return str(p)
    return write


def test_exit_0_when_the_plan_fits(spec_file, capsys):
    assert run("--users", "100", "--spec", spec_file(FITS), "--nofile", "65536") == 0
    out = capsys.readouterr().out
    assert "FITS: every budget holds." in out and "Arithmetic:" in out


def test_exit_1_when_the_spec_loader_itself_refuses_a_budget(spec_file, capsys):
    path = spec_file("instances: {count: 4, max: 8}\ngunicorn: {workers: 3}\n"
                     "memory: {fleet_budget_mb: 4096}\n")
    assert run("--users", "100", "--spec", path) == 1
    err = capsys.readouterr().err
    assert "budgets that cannot hold" in err and "exceeds the budget of 4096 MiB by 3904 MiB" in err


def test_exit_1_for_too_few_file_descriptors(spec_file, capsys):
    assert run("--users", "100", "--spec", spec_file(FITS), "--nofile", "512") == 1
    assert "file descriptors exceeds" in capsys.readouterr().out


def test_json_output(spec_file, tmp_path, capsys):
    cal = tmp_path / "cal.json"
    cal.write_text(json.dumps({"url": "http://127.0.0.1:8080/", "users": 1000, "rps": 5196.3,
                               "latency": {"p99": 346.3}, "error_rate_pct": 0.0}))
    assert run("--users", "1000", "--spec", spec_file(FITS), "--nofile", "65536", "--json",
               "--calibration", str(cal), "--calibration-instances", "2") == 0
    d = json.loads(capsys.readouterr().out)
    assert d["instances"] == 2 and d["verdict"] == "holds" and d["throughput_rps"] == 5196.3


def test_a_django_fleet_on_sync_workers_is_told_what_1000_users_need(spec_file, capsys):
    """One sync worker serves one request at a time: 1000 users are 1000 request slots, not 1
    instance's 1000 worker_connections."""
    path = spec_file("name: mysite\napp: {module: 'mysite.wsgi:application'}\n"
                     "instances: {count: 2, min: 1, max: 8}\ngunicorn: {workers: 2}\n"
                     "memory: {fleet_budget_mb: 100000}\nnginx: {mode: 'off'}\n")
    assert run("--users", "1000", "--spec", path, "--nofile", "65536") == 1
    out = capsys.readouterr().out
    assert "requests at once per worker = 1 (worker_class sync: one request at a time)" in out
    assert "connections per instance = gunicorn.workers x requests per worker = 2 x 1 = 2" in out
    assert "instances.max: 1000 users need 500 instances, more than instances.max 8" in out
    assert "a sync worker serves one request at a time: 1000 users need 500 instances" in out


@pytest.mark.parametrize("text, argv, fragment", [
    ("instances: {cuont: 2}\n", ["--users", "10"], "instances.cuont (line 1): unknown key"),
    (FITS, ["--users", "0"], "--users must be >= 1"),
    (FITS, ["--users", "10", "--mongo-servers", "0"], "--mongo-servers must be >= 1"),
    (FITS, ["--users", "10", "--calibration", "/nonexistent/cal.json"], "cannot read"),
])
def test_exit_2_for_bad_arguments_or_an_invalid_spec(spec_file, capsys, text, argv, fragment):
    assert run(*argv, "--spec", spec_file(text)) == 2
    assert fragment in capsys.readouterr().err


def test_exit_2_for_a_calibration_without_instances(spec_file, tmp_path, capsys):
    cal = tmp_path / "cal.json"
    cal.write_text(json.dumps({"users": 10, "rps": 100, "p99_ms": 5}))
    assert run("--users", "10", "--spec", spec_file(FITS), "--calibration", str(cal)) == 2
    assert "--calibration-instances" in capsys.readouterr().err


def test_default_spec_path(monkeypatch, tmp_path):
    assert loader.default_spec_path({"ULTRASCALE_SPEC": "/x/fleet.yaml"}) == "/x/fleet.yaml"
    monkeypatch.setattr(loader, "DEFAULT_SPEC", str(tmp_path / "missing.yaml"))
    assert loader.default_spec_path({}) == loader.FALLBACK_SPEC
    (tmp_path / "missing.yaml").write_text("")
    assert loader.default_spec_path({}) == str(tmp_path / "missing.yaml")


def test_mem_total_is_read_from_meminfo(tmp_path):
    f = tmp_path / "meminfo"
    f.write_text("MemFree:  100 kB\nMemTotal:       24683520 kB\n")
    assert plan_command.mem_total_bytes(str(f)) == 24683520 * 1024


def test_importing_capacity_pulls_in_nothing_heavy():
    # The planner reads the spec (its schema and budget arithmetic, spec/budget.py); it pulls in
    # no OS layer.
    code = ("import sys, ultrascaled.core.capacity; bad = [m for m in ('psutil', 'aiohttp', "
            "'subprocess', 'asyncio', 'ultrascaled.effects.runner') if m in sys.modules]; print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
