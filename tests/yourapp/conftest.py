"""Fixtures: a real ultrascaled on free ports, running an app of the operator's own (a Flask app
with an app factory, a fresh Django project) rather than the reference app.

Every process a test starts is ended by pid in the fixture's teardown, also when the test
fails: the daemon, then any gunicorn process carrying this fleet's marker, then nginx.
"""
from __future__ import annotations

import pytest

from support.harness import BIN, ROOT, Daemon, free_port_block, http_get, pid_alive  # noqa: F401


@pytest.fixture
def make_daemon(tmp_path):
    made: list[Daemon] = []

    def make(spec_overrides: dict | None = None, nginx: bool = True, sub: str = "") -> Daemon:
        if sub:
            (tmp_path / sub).mkdir(exist_ok=True)
        d = Daemon(tmp_path / sub if sub else tmp_path, spec_overrides, nginx)
        made.append(d)
        return d
    yield make
    for d in made:
        d.cleanup()
