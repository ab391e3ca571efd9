"""Makes `tests/support` importable as the package `support` (`from support.harness import
Daemon`) in every test folder. pytest's default `prepend` import mode already puts this
folder on sys.path because this conftest.py sits in it; the line below keeps that true under
`--import-mode=importlib` too."""
import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


import pytest  # noqa: E402


@pytest.fixture
def make_daemon(tmp_path):
    """A real ultrascaled (real gunicorn instances, a real managed nginx unless `nginx=False`)
    on free ports; `sub` gives a second daemon its own folder. Every process it starts is ended
    by pid in the teardown, also when the test fails: the daemon, then any gunicorn process
    carrying its fleet's marker, then nginx."""
    from support.harness import Daemon
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


# ---- the pytest plugins the suite uses --------------------------------------------------------
# Named, because setup.cfg turns off pytest's auto-loading of every installed plugin (see there);
# one whose package is missing is left out, so its tests skip (tests/support/needs.py) instead of
# the run failing to start.
import importlib.util  # noqa: E402

PLUGINS = ("pytest_timeout", "_hypothesis_pytestplugin", "schemathesis.pytest.plugin")
pytest_plugins = [name for name in PLUGINS if importlib.util.find_spec(name.partition(".")[0]) is not None]
