"""`ultrascalectl plan --measure`: the real reference app on a loopback port, a small bounded load,
the plan from it; and the bad inputs (an app that does not import, a URL answering 404, a busy
port, bad bounds), each a clear error and a non-zero exit with nothing left running."""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import time

import psutil
import pytest
import yaml

from ultrascaled.surface import plan_command
from support.harness import ROOT, tool

REFERENCE = {"name": "measuretest",
             "app": {"directory": str(ROOT), "module": "app.wsgi:application", "config": "app/gunicorn_conf.py"},
             "gunicorn": {"workers": 1, "worker_class": "gevent"},
             "instances": {"count": 1, "min": 1, "max": 4, "base_port": 18001},
             "nginx": {"mode": "off"}}


@pytest.fixture
def spec_path(tmp_path):
    def write(**over):
        spec = json.loads(json.dumps(REFERENCE))
        for k, v in over.items():
            spec.setdefault(k, {}).update(v) if isinstance(v, dict) else spec.__setitem__(k, v)
        spec["paths"] = {"state_dir": str(tmp_path / "state"), "log_dir": str(tmp_path / "log")}
        p = tmp_path / "fleet.yaml"
        p.write_text(yaml.safe_dump(spec))
        return str(p)
    return write


def run(*argv):
    parser = argparse.ArgumentParser(prog="ultrascalectl plan")
    plan_command.add_arguments(parser)
    return plan_command.run(parser.parse_args(list(argv)))


def leftovers(name="measuretest") -> list[int]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(f"ultrascale-measure-{name}-" in a for a in p.info["cmdline"] or []):
                out.append(p.pid)
        except psutil.Error:
            pass
    return out


@pytest.mark.parametrize("argv, msg", [
    (["--url", "/"], "--url goes with --measure"),
    (["--steps", "10"], "--steps goes with --measure"),
    (["--measure", "--calibration", "x.json"], "exclude each other"),
    (["--measure", "--max-seconds", "9999"], "--max-seconds must be"),
    (["--measure", "--step-seconds", "0.1"], "--step-seconds must be"),
    (["--measure", "--max-requests", "0"], "--max-requests must be"),
    (["--measure", "--url", "http://example.com/"], "--url must be a path starting with /"),
    (["--measure", "--port", "80"], "--port must be 1024..65535"),
])
def test_bad_measure_arguments_exit_2_naming_the_flag(spec_path, capsys, argv, msg):
    assert run("--users", "10", "--spec", spec_path(), *argv) == 2
    assert msg in capsys.readouterr().err


def test_a_busy_port_exits_3_before_anything_starts(spec_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert run("--users", "10", "--spec", spec_path(), "--measure", "--port", str(port)) == 3
    assert f"port {port} on 127.0.0.1 is busy" in capsys.readouterr().err


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_measure_plans_the_reference_app_from_a_small_bounded_load(spec_path):
    t0 = time.monotonic()
    r = subprocess.run([tool("ultrascalectl"), "plan", "--users", "100", "--spec", spec_path(), "--measure",
                        "--steps", "10,50,100", "--step-seconds", "1", "--max-seconds", "10",
                        "--max-requests", "20000", "--url", "/", "--url", "/cached/hot", "--json"],
                       capture_output=True, text=True, timeout=100)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    m = d["measurement"]
    assert [s["users"] for s in m["steps"]] == [10, 50, 100] and m["urls"] == ["/", "/cached/hot"]
    assert all(s["requests"] > 0 and s["error_rate_pct"] == 0 for s in m["steps"])
    assert sum(s["requests"] for s in m["steps"]) <= 20000
    assert m["rss_bytes"] > 10 * 2**20
    assert d["throughput_measured"] and d["verdict"] == "holds" and d["instances"] == 1
    assert d["calibration"]["p99_target_ms"] == 1000.0   # health.timeout 1 s
    assert time.monotonic() - t0 < 60
    assert not leftovers()


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_an_app_that_does_not_import_exits_3_with_its_exception(spec_path):
    r = subprocess.run([tool("ultrascalectl"), "plan", "--users", "10", "--measure",
                        "--spec", spec_path(app={"module": "no_such_module_xyz:app"})],
                       capture_output=True, text=True, timeout=50)
    assert r.returncode == 3
    assert "the app did not start" in r.stderr and "No module named 'no_such_module_xyz'" in r.stderr
    assert not leftovers()


@pytest.mark.integration
@pytest.mark.timeout(60)
@pytest.mark.parametrize("key, path, status", [("--url", "/nope", 404), ("plan.urls", "/nope", 404),
                                               ("--url", "/items/1", 503)])  # 503: MONGODB_URI unset below
def test_a_url_that_does_not_answer_2xx_exits_3_before_any_load(spec_path, key, path, status):
    extra = ["--url", path] if key == "--url" else []
    spec = spec_path(plan={"urls": [path]}) if key == "plan.urls" else spec_path()
    env = {k: v for k, v in os.environ.items() if k != "MONGODB_URI"}
    r = subprocess.run([tool("ultrascalectl"), "plan", "--users", "10", "--measure", "--spec", spec, *extra],
                       capture_output=True, text=True, timeout=50, env=env)
    assert r.returncode == 3
    assert f"{key}: GET {path} answered HTTP {status}" in r.stderr and "before any load" in r.stderr
    assert not leftovers()


def test_measure_runs_the_release_the_fleet_serves_not_the_working_copy(spec_path, tmp_path):
    from ultrascaled.effects import releases
    from ultrascaled.effects.solo_instance import SoloInstance
    from ultrascaled.spec import load_spec
    from ultrascaled.surface.plan_measure import current_folder

    spec = load_spec(spec_path())
    assert current_folder(spec) == (None, None)  # no deploy yet: app.directory
    argv = SoloInstance(spec, 1, tmp_path).argv()
    assert argv[argv.index("--chdir") + 1] == spec.app.directory
    folder = releases.releases_dir(spec) / "20261207T120000Z"
    folder.mkdir(parents=True)
    releases.save_state(spec, releases.DeployState(current=folder.name))
    assert current_folder(spec) == (str(folder), None)
    argv = SoloInstance(spec, 1, tmp_path, current_folder(spec)[0]).argv()
    assert argv[argv.index("--chdir") + 1] == str(folder)


def test_an_unreadable_deploy_state_measures_app_directory_and_says_why(spec_path):
    from ultrascaled.effects import releases
    from ultrascaled.spec import load_spec
    from ultrascaled.surface.plan_measure import current_folder

    spec = load_spec(spec_path())
    path = releases.state_path(spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{not json")
    folder, problem = current_folder(spec)
    assert folder is None and "unreadable" in problem and str(path) in problem
