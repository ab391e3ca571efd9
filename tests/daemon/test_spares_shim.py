"""The spare's worker shim (ultrascaled/shims/ultrascale_spare.py) on real gunicorn, sync and
gthread: a socket handed over the takeover channel is served by the running workers at once (a
connection queued on it before the hand-over included), and by a worker the master forks later."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import psutil
import pytest

from ultrascaled.core import command
from ultrascaled.effects import procs, takeover

pytestmark = pytest.mark.integration

APP = '''import os
def application(env, start):
    start("200 OK", [("Content-Type", "text/plain")])
    return [str(os.getpid()).encode()]
'''


def get(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
        return int(r.read())


@pytest.mark.parametrize("worker_class", ["ultrascale_spare.SyncWorker", "ultrascale_spare.ThreadWorker"])
def test_a_handed_socket_is_served_at_once_and_by_a_worker_forked_later(tmp_path, worker_class):
    (tmp_path / "tinyapp.py").write_text(APP)
    serving = procs.listen("127.0.0.1", 0)
    own, probe = procs.listen("127.0.0.1", 0, gate_closed=True), procs.listen("127.0.0.1", 0)
    chan, mine = takeover.channel()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([command.SHIMS, str(tmp_path)]),
               ULTRASCALE_TAKEOVER_FD=str(mine.fileno()))
    p = subprocess.Popen([sys.executable, "-m", "gunicorn", "--bind", f"fd://{own.fileno()}",
                          "--bind", f"fd://{probe.fileno()}", "--workers", "2", "--worker-class", worker_class,
                          "tinyapp:application"], env=env, cwd=tmp_path, start_new_session=True,
                         pass_fds=(own.fileno(), probe.fileno(), mine.fileno()),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    mine.close()
    try:
        pp, sp = probe.getsockname()[1], serving.getsockname()[1]
        deadline = time.monotonic() + 20
        while True:
            try:
                get(pp)
                break
            except OSError:
                assert time.monotonic() < deadline, "the spare never answered its probe"
                time.sleep(0.05)
        time.sleep(0.5)   # both workers up
        queued = socket.create_connection(("127.0.0.1", sp))
        queued.settimeout(5)
        queued.sendall(b"GET / HTTP/1.0\r\n\r\n")
        t0 = time.monotonic()
        assert takeover.hand_over(chan, serving, 6) == 6
        answer = b""
        while chunk := queued.recv(4096):
            answer += chunk
        took = time.monotonic() - t0
        assert answer.startswith(b"HTTP/1.0 200") and took < 1.0, (answer[:80], took)
        workers = {c.pid for c in psutil.Process(p.pid).children()}
        seen = {get(sp) for _ in range(40)}
        assert seen <= workers and seen
        for w in workers:
            os.kill(w, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while True:   # the master's new workers serve the handed port too
            try:
                pid = get(sp)
                if pid not in workers:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "no new worker served the handed socket"
            time.sleep(0.05)
        assert pid in {c.pid for c in psutil.Process(p.pid).children()}
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        for s in (serving, own, probe, chan):
            s.close()
