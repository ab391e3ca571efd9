"""Fixtures: a real ultrascaled (real gunicorn instances, real managed nginx) on free ports.

Every process a test starts is ended by pid in the fixture's teardown, also when the test
fails: the daemon, then any gunicorn process carrying this fleet's marker, then nginx.
"""
from __future__ import annotations

import pytest

from support.harness import BIN, ROOT, Daemon, free_port_block, http_get, pid_alive  # noqa: F401


@pytest.fixture
def daemon(make_daemon):
    return make_daemon().start()


@pytest.fixture
def redis_url(tmp_path):
    """A real redis-server on a free loopback port, ended by pid afterwards."""
    import socket
    import subprocess
    import time
    port = free_port_block(1)
    proc = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("redis-server did not start")
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
