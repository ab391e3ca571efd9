"""`ultrascalectl diff` / `reload --dry-run` and `ultrascaled --check` against a real running
fleet (issue 23, item 8): the dry run shows the restart and the nginx change a spec edit would
bring, the fleet is untouched (same pids, same nginx, nothing saved, no reload event), then the
real reload does exactly that."""
from __future__ import annotations

import copy
import json
import subprocess

import pytest
import yaml

from support.harness import tool

pytestmark = pytest.mark.integration


def nginx_files(d) -> dict:
    """nginx's configuration as the daemon wrote it (its logs left out)."""
    root = d.tmp / "state" / "nginx"
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and "logs" not in p.relative_to(root).parts and "temp" not in p.name}


def test_a_dry_run_shows_the_restart_leaves_the_fleet_untouched_and_the_reload_then_does_it(make_daemon):
    d = make_daemon().start()
    pids = {i["port"]: i["pid"] for i in d.fleet()["instances"]}
    nginx_pid, conf = d.nginx_pid(), nginx_files(d)
    state = (d.tmp / "state" / "state.json").read_bytes() if (d.tmp / "state" / "state.json").exists() else None

    # Checking the running fleet's own spec passes: against the running fleet, not like a start.
    check = subprocess.run([tool("ultrascaled"), "--check", "--spec", str(d.spec_path)],
                           capture_output=True, text=True, timeout=60, env=d.env)
    assert check.returncode == 0, check.stderr
    assert "checking against the running fleet" in check.stderr

    out = d.ctl("diff")
    assert out.returncode == 0 and "the reload would change nothing" in out.stdout, (out.stdout, out.stderr)

    d.spec["app"]["env"]["FEATURE_X"] = "on"
    d.spec["nginx"]["worker_connections"] = 2048
    d.write_spec()
    out = d.ctl("diff")
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert '+app.env.FEATURE_X: "on"' in out.stdout and "-nginx.worker_connections: " in out.stdout
    assert "+nginx.worker_connections: 2048" in out.stdout
    assert f"{d.base_port}: app.env.FEATURE_X changed" in out.stdout
    assert "nginx: its settings are rewritten, checked and nginx reloaded (nginx.worker_connections changed)" \
        in out.stdout
    plan = json.loads(d.ctl("reload", "--dry-run", "--json").stdout)
    assert plan["changes"] is True and plan["nginx"]["reconfigure"] is True
    assert [r["port"] for r in plan["restarting"]] == sorted(pids)
    assert plan["desired"] == {"before": 2, "after": 2}
    assert plan["budget"]["memory"]["before"] == plan["budget"]["memory"]["after"]

    # Nothing happened: the same masters, the same nginx and its files, nothing saved or reloaded.
    assert {i["port"]: i["pid"] for i in d.fleet()["instances"]} == pids
    assert d.nginx_pid() == nginx_pid and nginx_files(d) == conf
    assert ((d.tmp / "state" / "state.json").read_bytes() if state is not None else None) == state
    assert not d.events("spec.reloaded") and not d.events("nginx.reconfigured")

    # The real reload does what the dry run said.
    out = d.ctl("reload", "--wait", "--timeout", "120")
    assert out.returncode == 0, (out.stdout, out.stderr)
    reloaded = d.events("spec.reloaded")[-1]
    assert reloaded["restarting"] == [r["port"] for r in plan["restarting"]]
    assert reloaded["changed"] == plan["changed"]
    d.wait_until(lambda f: f["ready"] == 2 and all(pids[i["port"]] != i["pid"] for i in f["instances"]),
                 timeout=60, what="both instances restarted")
    d.wait_until(lambda f: bool(d.events("nginx.reconfigured")), timeout=30, what="nginx reconfigured")
    assert nginx_files(d) != conf
    assert d.ctl("diff").returncode == 0


def test_diff_of_another_file_and_a_refused_one(make_daemon, tmp_path):
    d = make_daemon(nginx=False).start()
    pids = {i["port"]: i["pid"] for i in d.fleet()["instances"]}
    other = copy.deepcopy(d.spec)
    other["instances"]["count"] = 3
    path = tmp_path / "edited.yaml"
    path.write_text(yaml.safe_dump(other))
    out = d.ctl("diff", "--spec", str(path))
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert "instances: 2 -> 3" in out.stdout and f"start: {d.base_port + 2}" in out.stdout
    assert f"note: a reload reads {d.spec_path}, not {path}" in out.stdout
    assert "restart: none" in out.stdout

    other["name"] = "renamed"
    path.write_text(yaml.safe_dump(other))
    out = d.ctl("reload", "--dry-run", "--spec", str(path))
    assert out.returncode == 2 and "`name` and `paths.state_dir` cannot change on a reload" in out.stderr, out.stderr
    path.write_text("instances: {count: many}\n")
    out = d.ctl("diff", "--spec", str(path), "--json")
    assert out.returncode == 2
    refused = json.loads(out.stdout)["refused"]
    assert refused["code"] == "spec_invalid" and any("instances.count" in e for e in refused["errors"])
    # the real reload of the daemon's own file refuses the same way the dry run said
    d.spec_path.write_text("instances: {count: many}\n")
    out = d.ctl("diff")
    assert out.returncode == 2
    real = d.ctl("reload")
    assert real.returncode == 4 and "instances.count" in real.stderr
    assert {i["port"]: i["pid"] for i in d.fleet()["instances"]} == pids and d.fleet()["desired"] == 2
