"""effects/release_command.py with real processes: the whole output kept, its tail given, the
process group killed at the timeout or when the daemon stops while it runs, and a command that
cannot start named."""
import asyncio
import os
import sys
import time

import pytest

from ultrascaled.effects import release_command


def run(argv, tmp_path, timeout=30.0):
    return asyncio.run(release_command.run(argv, str(tmp_path), dict(os.environ), timeout,
                                           str(tmp_path / "log" / "release-x.log")))


def test_the_output_is_kept_whole_and_its_tail_is_given(tmp_path):
    out = run([sys.executable, "-c", "import sys\nfor i in range(500): print('line', i)\nsys.exit(4)"], tmp_path)
    assert out.rc == 4
    assert out.tail.splitlines() == [f"line {i}" for i in range(480, 500)]
    assert "line 0\n" in (tmp_path / "log" / "release-x.log").read_text()


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.integration   # waits out a timeout long enough for a busy machine to start Python twice
def test_at_the_timeout_the_whole_group_is_killed(tmp_path):
    code = ("import os, subprocess, sys, time\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            "open('pids', 'w').write(f'{os.getpid()} {child.pid}')\n"
            "time.sleep(60)")
    out = run([sys.executable, "-c", code], tmp_path, timeout=3.0)
    assert out.rc is None
    pids = [int(p) for p in (tmp_path / "pids").read_text().split()]
    deadline = time.monotonic() + 5
    while not all(gone(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(gone(p) for p in pids), "the command and what it started"


def test_a_daemon_stopping_meanwhile_kills_it(tmp_path):
    async def main():
        task = asyncio.create_task(release_command.run(
            [sys.executable, "-c", "import os, time; open('pid', 'w').write(str(os.getpid())); time.sleep(60)"],
            str(tmp_path), dict(os.environ), 60, str(tmp_path / "r.log")))
        for _ in range(200):
            if (tmp_path / "pid").exists() and (tmp_path / "pid").read_text():
                break
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return int((tmp_path / "pid").read_text())
    pid = asyncio.run(main())
    assert gone(pid)


def test_a_command_that_cannot_start_raises_oserror(tmp_path):
    with pytest.raises(OSError):
        run([str(tmp_path / "no-such-program")], tmp_path)


@pytest.mark.integration   # a real daemon-like parent killed with SIGKILL, then a wait for its child
def test_a_daemon_killed_with_sigkill_takes_the_command_with_it(tmp_path):
    """Found by attacking the release step: the command runs in its own session, so a daemon
    killed with SIGKILL left a migration running, and the next daemon's deploy could run a
    second one beside it. The command now gets SIGTERM when the daemon dies (PR_SET_PDEATHSIG)."""
    import signal
    import subprocess
    parent = subprocess.Popen([sys.executable, "-c", (
        "import asyncio, os, sys\n"
        "from ultrascaled.effects import release_command\n"
        f"asyncio.run(release_command.run([sys.executable, '-c', \"import os, time; open('pid', 'w')"
        f".write(str(os.getpid())); time.sleep(60)\"], {str(tmp_path)!r}, dict(os.environ), 60, "
        f"{str(tmp_path / 'r.log')!r}))\n")])
    try:
        deadline = time.monotonic() + 20
        while not ((tmp_path / "pid").exists() and (tmp_path / "pid").read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        pid = int((tmp_path / "pid").read_text())
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 10
        while not gone(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        alive = not gone(pid)
        if alive:
            os.kill(pid, signal.SIGKILL)
        assert not alive, "the release command outlived the daemon"
    finally:
        if parent.poll() is None:
            parent.kill()
