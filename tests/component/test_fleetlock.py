"""Two fleets on one host never touch each other (issue 10, defect 3): one daemon per name and
per state folder, and adoption by exact marker only."""
from __future__ import annotations

import json
import uuid

import pytest

from ultrascaled.effects import fleetlock
from ultrascaled.effects.fleetlock import FleetLock, FleetLocked
from ultrascaled.effects.procs import marker_port


def test_a_second_daemon_with_the_same_name_is_refused_naming_the_holder(tmp_path):
    name = "t" + uuid.uuid4().hex[:8]
    first = FleetLock(name, tmp_path / "a")
    first.acquire()
    try:
        with pytest.raises(FleetLocked, match=rf"fleet name '{name}' is already in use .* pid \d+"):
            FleetLock(name, tmp_path / "b").acquire()
        assert fleetlock.check(name, tmp_path / "b")
    finally:
        first.release()
    FleetLock(name, tmp_path / "b").acquire()  # free again once the first is gone


def test_a_second_daemon_on_the_same_state_dir_is_refused(tmp_path):
    first = FleetLock("t" + uuid.uuid4().hex[:8], tmp_path)
    first.acquire()
    try:
        with pytest.raises(FleetLocked, match="paths.state_dir .* is in use by another ultrascaled"):
            FleetLock("t" + uuid.uuid4().hex[:8], tmp_path).acquire()
    finally:
        first.release()


def test_a_state_dir_holding_another_fleets_state_is_refused_even_when_no_daemon_runs(tmp_path):
    (tmp_path / "state.json").write_text(json.dumps({"fleet": "flask", "desired": 2}))
    with pytest.raises(FleetLocked, match="holds the state of fleet 'flask'"):
        FleetLock("django", tmp_path).acquire()
    lock = FleetLock("flask", tmp_path)
    lock.acquire()
    lock.release()


def test_check_reports_nothing_on_a_free_host(tmp_path):
    assert fleetlock.check("t" + uuid.uuid4().hex[:8], tmp_path / "nowhere") == []


@pytest.mark.parametrize("cmdline,port", [
    (["python", "-m", "gunicorn", "--bind", "x", "--name", "ultrascale-demo-8001", "app:app"], 8001),
    (["/venv/bin/gunicorn", "--name=ultrascale-demo-8002", "app:app"], 8002),
    (["gunicorn: master [ultrascale-demo-8003]"], 8003),
    (["gunicorn: worker [ultrascale-demo-8003]"], 8003),
    # a neighbour fleet whose name starts with ours (issue 10, defect 3)
    (["python", "-m", "gunicorn", "--name", "ultrascale-demo-2-8001", "app:app"], None),
    (["gunicorn: master [ultrascale-demo-2-8001]"], None),
    # programs that merely mention the marker are never ours
    (["grep", "ultrascale-demo-8001"], None),
    (["sleep", "100", "--name", "ultrascale-demo-8001"], None),
    (["python", "-m", "gunicorn", "--name", "ultrascale-demo-８００１"], None),
    (["python", "-m", "gunicorn", "--name", "ultrascale-demo-80011"], 80011),
])
def test_adoption_matches_the_exact_marker_of_a_gunicorn_process(cmdline, port):
    assert marker_port(cmdline, "demo") == port
