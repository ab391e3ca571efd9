"""Fixtures: a real ultrascaled (real gunicorn instances, real managed nginx) on free ports.

Every process a test starts is ended by pid in the fixture's teardown, also when the test
fails: the daemon, then any gunicorn process carrying this fleet's marker, then nginx.
"""
from __future__ import annotations

import pytest

from ultrascaled.harness import BIN, ROOT, Daemon, free_port_block, http_get, pid_alive  # noqa: F401


@pytest.fixture
def make_daemon(tmp_path):
    made: list[Daemon] = []

    def make(spec_overrides: dict | None = None, nginx: bool = True, sub: str = "") -> Daemon:
        d = Daemon(tmp_path / sub if sub else tmp_path, spec_overrides, nginx)
        made.append(d)
        return d
    yield make
    for d in made:
        d.cleanup()


@pytest.fixture
def daemon(make_daemon):
    return make_daemon().start()
