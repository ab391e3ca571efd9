"""`ultrascaled --check` while the fleet of that name runs (issue 23, item 8): the name, the
state folder and the ports the running fleet holds are its own, and checked against it;
another daemon's folder and a port held by any other program still fail."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import uuid

import pytest
import structlog

from ultrascaled import daemon
from ultrascaled.effects import fleetlock
from ultrascaled.effects.fleetlock import FleetLock
from ultrascaled.effects.host_checks import fleet_ports, port_problems
from ultrascaled.spec import parse_spec


@pytest.fixture(autouse=True)
def logging_as_before():
    """daemon.main configures structlog on the captured stderr: put the defaults back, or a
    later test logs to a closed file (as in tests/unit/test_spec_check.py)."""
    yield
    structlog.reset_defaults()


def listening(port: int) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(1)
    return s


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spec_of(tmp_path, name: str, api_port: int, base_port: int):
    return parse_spec(f"name: {name}\napp: {{directory: {tmp_path}}}\n"
                      f"instances: {{count: 1, min: 0, max: 2, base_port: {base_port}}}\n"
                      f"api: {{port: {api_port}}}\nnginx: {{mode: 'off'}}\n"
                      f"paths: {{state_dir: {tmp_path}/state, log_dir: {tmp_path}/logs}}\n",
                      base_dir=tmp_path)


def test_the_running_fleets_lock_and_folder_are_its_own(tmp_path):
    name = "t" + uuid.uuid4().hex[:8]
    lock = FleetLock(name, tmp_path / "state")
    lock.acquire()   # this process plays the running daemon
    try:
        me = os.getpid()
        assert fleetlock.name_holder(name) == me
        assert fleetlock.check(name, tmp_path / "state"), "checked like a start, it fails"
        assert fleetlock.check_running(name, tmp_path / "state", me) == []
        other = fleetlock.check_running(name, tmp_path / "state", me + 1)
        assert other and "in use by another ultrascaled" in other[0] and f"pid {me}" in other[0]
        moved = fleetlock.check_running(name, tmp_path / "elsewhere", me)
        assert moved and "a reload cannot change paths.state_dir" in moved[0]
        assert not (tmp_path / "elsewhere").exists(), "a check creates nothing"
        (tmp_path / "state" / "state.json").write_text(json.dumps({"fleet": "another", "desired": 1}))
        assert "holds the state of fleet 'another'" in fleetlock.check_running(name, tmp_path / "state", me)[0]
    finally:
        lock.release()


def test_ports_held_by_the_running_fleet_pass_and_any_other_holder_fails(tmp_path):
    api, base = free_port(), free_port()
    spec = spec_of(tmp_path, "t" + uuid.uuid4().hex[:8], api, base)
    assert [p for _, _, p in fleet_ports(spec)] == [api, base]
    assert port_problems(spec) == []
    held = [listening(api), listening(base)]   # held by this process
    try:
        me = os.getpid()
        assert port_problems(spec, fleet_pid=me) == [], "the running fleet's own ports"
        stranger = subprocess.Popen(["sleep", "60"])   # a daemon that is not this process's parent
        try:
            problems = port_problems(spec, fleet_pid=stranger.pid)
        finally:
            stranger.kill()
            stranger.wait()
        assert len(problems) == 2 and problems[0].startswith(f"api.port: 127.0.0.1:{api} is in use by pid {me}")
        assert problems[1].startswith(f"instances.base_port: 127.0.0.1:{base} is in use by pid {me}")
        assert port_problems(spec)[0].startswith("api.port"), "no fleet running: a held port fails"
    finally:
        for s in held:
            s.close()


def test_check_of_the_running_fleets_own_spec_passes_and_says_so(tmp_path, capsys):
    api, base = free_port(), free_port()
    name = "t" + uuid.uuid4().hex[:8]
    spec = spec_of(tmp_path, name, api, base)
    path = tmp_path / "fleet.yaml"
    path.write_text(f"name: {name}\napp: {{directory: {tmp_path}, module: 'x:app'}}\n"
                    f"instances: {{count: 1, min: 0, max: 2, base_port: {base}}}\n"
                    f"api: {{port: {api}}}\nnginx: {{mode: 'off'}}\n"
                    f"paths: {{state_dir: {tmp_path}/state, log_dir: {tmp_path}/logs}}\n")
    (tmp_path / "x.py").write_text("def app(e, s):\n    pass\n")
    lock = FleetLock(name, spec.paths.state_dir)
    lock.acquire()
    held = listening(api)
    try:
        rc = daemon.main(["--check", "--spec", str(path), "--log-format", "console"])
        err = capsys.readouterr().err
        assert rc == 0, err
        assert f"fleet {name!r} runs on this host (ultrascaled pid {os.getpid()}): checking against the " \
               "running fleet" in err
    finally:
        held.close()
        lock.release()
    blocker = listening(base)   # the fleet is gone; another program (this test) holds its port
    try:
        rc = daemon.main(["--check", "--spec", str(path), "--log-format", "console"])
        err = capsys.readouterr().err
        assert rc == 2 and f"instances.base_port: 127.0.0.1:{base} is in use by pid" in err, err
    finally:
        blocker.close()
