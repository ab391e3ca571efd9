"""Every skip in tests/ goes through here (tests/unit/test_skips_use_needs.py checks it), so each
one names what is missing and how to get it, and none hides a broken setup.

Two kinds:

* a tool or package that `scripts/setup test` installs (`tool`, `module` and the helpers named
  after one: `wrk()`, `openssl()`, `matplotlib()`...): the test skips with the reason when it is
  run by hand, but fails under scripts/test (the README's test command, which CI runs): that
  installs every tool first, so a missing one there is a broken setup, and a run must not pass
  by skipping;
* a condition no installing changes (`skip`, and `mongodb()` when MONGODB_URI is not set,
  `root()`; a test passes its own reason to `skip`, e.g. running as root, a kernel without a
  feature): a skip everywhere.

Call them in the test (or its fixture), or at module level for a whole module."""
from __future__ import annotations

import importlib
import os
import shutil
from types import ModuleType
from typing import NoReturn

import pytest

EVERYTHING = "ULTRASCALE_TESTS_NEED_EVERYTHING"   # set by scripts/test
SETUP = "scripts/setup test"
# Debian puts some daemons in sbin, which a normal user's PATH may lack.
SYSTEM_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/local/bin", "/usr/bin", "/bin")

# Read when the tests are collected: the app tests' autouse fixture clears it while they run.
MONGODB_URI = os.environ.get("MONGODB_URI")


def skip(why: str) -> NoReturn:
    """Skip for a reason no installing changes: the same under scripts/test."""
    exc = pytest.skip.Exception(why, allow_module_level=True)
    # Report the skip at the test that asked, as a skipif marker or a skipping fixture is
    # (pytest's own flag, set the same way in _pytest/fixtures.py), not at this line.
    exc._use_item_location = True
    raise exc


def unavailable(why: str) -> NoReturn:
    """Something scripts/setup test installs is missing: skip by hand, fail under scripts/test."""
    if os.environ.get(EVERYTHING) == "1":
        pytest.fail(f"{why} (scripts/test ran {SETUP} first, so the setup is broken)", pytrace=False)
    skip(why)


# ---- tools and packages scripts/setup test installs --------------------------------------------

def which(name: str) -> str | None:
    """The command `name` on PATH, or in the system's bin and sbin folders."""
    return shutil.which(name) or next(
        (p for p in (os.path.join(d, name) for d in SYSTEM_DIRS) if os.access(p, os.X_OK)), None)


def tools(*names: str, setup: str = SETUP) -> list[str]:
    """The paths of the commands `names`; unavailable, naming every missing one, otherwise."""
    found = {n: which(n) for n in names}
    missing = [n for n, path in found.items() if path is None]
    if missing:
        unavailable(f"{', '.join(missing)} not installed: {setup} installs "
                    f"{'it' if len(missing) == 1 else 'them'}")
    return [found[n] for n in names]


def tool(name: str, setup: str = SETUP) -> str:
    return tools(name, setup=setup)[0]


def module(name: str, *, package: str | None = None, setup: str = SETUP) -> ModuleType:
    """The imported module `name`; unavailable (naming its pip `package`) if it cannot import."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        unavailable(f"{package or name.partition('.')[0]} not installed ({exc}): {setup} installs it")


def nginx() -> str:
    return tool("nginx")


def redis_server() -> str:
    return tool("redis-server")


def redis_tools() -> list[str]:
    """redis-server and redis-cli (the Cluster and Sentinel tests drive both)."""
    return tools("redis-server", "redis-cli")


def openssl() -> str:
    return tool("openssl")


def wrk() -> str:
    return tool("wrk")


def systemd_analyze() -> str:
    return tool("systemd-analyze")


def browser() -> None:
    """Selenium, Debian's chromium and its chromium-driver (the dashboard tests)."""
    from support import browser as chromium
    why = chromium.missing()   # names what is missing and that scripts/setup test installs it
    if why:
        unavailable(f"no browser for the dashboard tests: {why}")


def schemathesis() -> ModuleType:
    return module("schemathesis")


def matplotlib() -> ModuleType:
    return module("matplotlib")


def setuptools(minimum: int = 68) -> ModuleType:
    """The build backend, at least pyproject.toml's [build-system] version."""
    st = module("setuptools")
    module("setuptools.build_meta", package="setuptools")
    if int(st.__version__.split(".")[0]) < minimum:
        unavailable(f"setuptools {st.__version__} is older than pyproject.toml's build requirement "
                    f"(>={minimum}): {SETUP} installs a newer one")
    return st


# ---- conditions no setup changes ---------------------------------------------------------------

def mongodb() -> str:
    """MONGODB_URI, the real server the MongoDB tests use (MongoDB is not installed here, and
    it is never faked): without it they skip, also under scripts/test."""
    if not MONGODB_URI:
        skip("MONGODB_URI not set")
    return MONGODB_URI


def root(why: str) -> None:
    """Skip unless running as root; `why` says what the test needs root for."""
    if os.geteuid() != 0:
        skip(f"not running as root: {why}")
