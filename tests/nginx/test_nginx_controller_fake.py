"""NginxController with a fake runner and fake processes: the write-check-reload-rollback
cycle without a real nginx."""
import asyncio
import signal

import pytest

from nginx_helpers import FakeProcs, FakeRunner
from ultrascaled.effects.nginx_control import NginxController, RunResult
from ultrascaled.effects.nginx_render import render_upstream
from ultrascaled.spec.nginx import NginxSettings

A, B = ("127.0.0.1", 8000), ("127.0.0.1", 8001)


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def system(tmp_path):
    up = tmp_path / "upstream.conf"
    s = NginxSettings(mode="system", upstream_file=str(up),
                      system_pid_file=str(tmp_path / "none.pid"))
    runner = FakeRunner()
    runner.dump_stdout = f"# configuration file {up}:\n"
    return s, runner, up


def test_system_apply_writes_checks_reloads(system):
    s, runner, up = system
    ctl = NginxController(s, runner=runner, procs=FakeProcs(pid_file_pid=None))
    r = run(ctl.apply([B, A]))
    assert r.ok and r.code == "ok" and r.changed and r.reloaded
    assert r.servers == (A, B)
    assert runner.kinds() == ["check", "reload"]
    assert runner.calls[0][1:] == ["-t"] and runner.calls[1][1:] == ["-s", "reload"]
    assert up.read_bytes() == render_upstream(s, [A, B])
    st = ctl.status()
    assert st["servers"] == ["127.0.0.1:8000", "127.0.0.1:8001"]
    assert st["reload_count"] == 1 and st["failure_count"] == 0 and st["last_result"] == "ok"


def test_same_servers_again_is_unchanged_without_commands(system):
    s, runner, up = system
    ctl = NginxController(s, runner=runner, procs=FakeProcs())
    run(ctl.apply([A]))
    runner.calls.clear()
    r = run(ctl.apply([A]))
    assert r.ok and r.code == "unchanged" and not r.reloaded
    assert runner.calls == []


def test_unchanged_file_but_unknown_state_still_reloads(system):
    """After a daemon restart the file may not be what nginx runs: reload once."""
    s, runner, up = system
    up.write_bytes(render_upstream(s, [A]))
    ctl = NginxController(s, runner=runner, procs=FakeProcs())
    r = run(ctl.apply([A]))
    assert r.code == "ok" and not r.changed and r.reloaded
    assert runner.kinds() == ["check", "reload"]


def test_check_failure_rolls_back_and_does_not_reload(system):
    s, runner, up = system
    ctl = NginxController(s, runner=runner, procs=FakeProcs())
    run(ctl.apply([A]))
    before = up.read_bytes()
    runner.calls.clear()
    runner.fail["check"] = RunResult(1, "", "nginx: [emerg] invalid port in upstream")
    r = run(ctl.apply([A, B]))
    assert not r.ok and r.code == "check_failed" and not r.retryable
    assert "invalid port" in r.error
    assert runner.kinds() == ["check"]  # no reload
    assert up.read_bytes() == before
    st = ctl.status()
    assert st["servers"] == ["127.0.0.1:8000"]  # the old set is still in effect
    assert st["failure_count"] == 1 and st["last_error"].startswith("nginx: [emerg]")


def test_check_failure_on_a_new_file_removes_it(system):
    s, runner, up = system
    runner.fail["check"] = RunResult(1, "", "bad")
    r = run(NginxController(s, runner=runner, procs=FakeProcs()).apply([A]))
    assert r.code == "check_failed" and not up.exists()


def test_reload_failure_rolls_back_and_next_apply_retries(system):
    s, runner, up = system
    ctl = NginxController(s, runner=runner, procs=FakeProcs())
    run(ctl.apply([A]))
    before = up.read_bytes()
    runner.fail["reload"] = RunResult(1, "", "nginx: [error] invalid PID number")
    r = run(ctl.apply([A, B]))
    assert not r.ok and r.code == "reload_failed" and r.retryable
    assert "invalid PID" in r.error
    assert up.read_bytes() == before
    del runner.fail["reload"]
    runner.calls.clear()
    r = run(ctl.apply([A]))  # same file as on disk, but state unknown after a failed reload
    assert r.ok and r.reloaded and runner.kinds() == ["check", "reload"]


def test_system_start_requires_the_include_in_effect(system):
    s, runner, up = system
    runner.dump_stdout = "# configuration file /etc/nginx/nginx.conf:\n"
    r = run(NginxController(s, runner=runner, procs=FakeProcs()).start([A]))
    assert r.code == "check_failed" and "not included" in r.error


def test_system_start_ok_when_included(system):
    s, runner, up = system
    r = run(NginxController(s, runner=runner, procs=FakeProcs()).start([A]))
    assert r.ok, r
    assert runner.kinds() == ["check", "reload", "dump"]


def test_commands_named_nginx_use_the_resolved_binary(system):
    s, runner, up = system
    ctl = NginxController(s, runner=runner, procs=FakeProcs(), binary="/opt/ngx/sbin/nginx")
    run(ctl.apply([A]))
    assert [c[0] for c in runner.calls] == ["/opt/ngx/sbin/nginx"] * 2


def test_off_mode_does_nothing(tmp_path):
    runner = FakeRunner()
    ctl = NginxController(NginxSettings(mode="off"), runner=runner)
    assert run(ctl.start()).code == "disabled"
    assert run(ctl.apply([A])).code == "disabled"
    assert run(ctl.stop()) is True
    assert runner.calls == []


# Managed mode with fake processes ----------------------------------------------------------

@pytest.fixture
def managed(tmp_path):
    s = NginxSettings(prefix=str(tmp_path / "ngx"), listen=1)
    return s, FakeRunner()


def test_managed_apply_reloads_by_hup_and_waits_for_new_workers(managed):
    s, runner = managed
    procs = FakeProcs(pid=77, pid_file_pid=77)
    ctl = NginxController(s, runner=runner, procs=procs)
    r = run(ctl.start([A]))  # adopts pid 77 (is_master says yes) and reloads
    assert r.ok and ctl.adopted and ctl.pid == 77
    procs.signals.clear()
    runner.calls.clear()
    r = run(ctl.apply([A, B]))
    assert r.ok and r.reloaded
    assert procs.signals == [(77, signal.SIGHUP)]
    assert runner.kinds() == ["check"]
    assert runner.calls[0][:3] == [ctl.binary, "-t", "-q"] and "-p" in runner.calls[0]


def test_managed_check_failure_sends_no_signal(managed):
    s, runner = managed
    procs = FakeProcs(pid=77, pid_file_pid=77)
    ctl = NginxController(s, runner=runner, procs=procs)
    run(ctl.start([A]))
    before = open(s.effective_upstream_file, "rb").read()
    procs.signals.clear()
    runner.fail["check"] = RunResult(1, "", "nginx: [emerg] unknown directive")
    r = run(ctl.apply([B]))
    assert r.code == "check_failed" and procs.signals == []
    assert open(s.effective_upstream_file, "rb").read() == before


def test_managed_reload_without_new_workers_fails_and_rolls_back(managed):
    s, runner = managed
    s = s.__class__(**{**s.__dict__, "reload_timeout": 0.2})
    procs = FakeProcs(pid=77, pid_file_pid=77)
    ctl = NginxController(s, runner=runner, procs=procs)
    run(ctl.start([A]))
    before = open(s.effective_upstream_file, "rb").read()
    procs.hup_fails = True
    r = run(ctl.apply([B]))
    assert r.code == "reload_failed" and "did not take effect" in r.error
    assert open(s.effective_upstream_file, "rb").read() == before


def test_managed_dead_master_is_restarted_by_apply(managed):
    s, runner = managed
    procs = FakeProcs(pid=77, pid_file_pid=77)
    ctl = NginxController(s, runner=runner, procs=procs)
    run(ctl.start([A]))
    procs.running = False  # master died
    procs.pid_file_pid = None
    runner.calls.clear()

    async def fake_wait():
        procs.running = True
        ctl.pid = procs.master
        return True, ""

    ctl._wait_started = fake_wait
    r = run(ctl.apply([A, B]))
    assert r.ok and r.restarted and r.servers == (A, B)
    assert runner.kinds() == ["check", "start"]


def test_managed_stop_sends_quit(managed):
    s, runner = managed
    procs = FakeProcs(pid=77, pid_file_pid=77)
    ctl = NginxController(s, runner=runner, procs=procs)
    run(ctl.start([A]))
    assert run(ctl.stop()) is True
    assert (77, signal.SIGQUIT) in procs.signals
    assert ctl.status()["running"] is False
