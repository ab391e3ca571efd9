"""Fixtures for the CLI's real-daemon tests: `make_daemon` as in tests/daemon/conftest.py, built
on tests/support/harness.py; every process a test starts is ended by pid in the teardown."""
from __future__ import annotations

import pytest

from support.harness import Daemon


@pytest.fixture
def make_daemon(tmp_path):
    made: list[Daemon] = []

    def make(spec_overrides: dict | None = None, nginx: bool = True) -> Daemon:
        made.append(Daemon(tmp_path, spec_overrides, nginx))
        return made[-1]
    yield make
    for d in made:
        d.cleanup()
