"""A missing tool skips a test run by hand but fails one run by scripts/test (which installs
every tool), so CI cannot pass by skipping the browser, Redis or schemathesis tests; a condition
no setup changes (MONGODB_URI unset, root) skips under both, and every skip names the test."""
import subprocess
import sys
from pathlib import Path

import pytest

from support import needs
from support.needs import EVERYTHING, unavailable

TESTS = Path(__file__).resolve().parents[1]


def test_a_missing_tool_skips_when_run_by_hand(monkeypatch):
    monkeypatch.delenv(EVERYTHING, raising=False)
    with pytest.raises(pytest.skip.Exception, match="chromium not installed"):
        unavailable("chromium not installed")


def test_a_missing_tool_fails_under_the_test_command(monkeypatch):
    monkeypatch.setenv(EVERYTHING, "1")
    with pytest.raises(pytest.fail.Exception,
                       match=r"chromium not installed \(scripts/test ran scripts/setup test first"):
        unavailable("chromium not installed")


def test_the_test_command_asks_for_everything():
    script = (TESTS.parent / "scripts" / "test").read_text()
    assert f"export {EVERYTHING}=1" in script


@pytest.mark.parametrize("everything", ["", "1"])
def test_a_missing_command_names_itself_and_how_to_get_it(monkeypatch, everything):
    monkeypatch.setenv(EVERYTHING, everything)
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(needs, "SYSTEM_DIRS", ())
    outcome = pytest.fail.Exception if everything else pytest.skip.Exception
    with pytest.raises(outcome, match="wrk, openssl not installed: scripts/setup test installs them"):
        needs.tools("wrk", "openssl")


def test_a_missing_module_names_its_package(monkeypatch):
    monkeypatch.delenv(EVERYTHING, raising=False)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(pytest.skip.Exception, match=r"^matplotlib not installed .*scripts/setup test installs it"):
        needs.matplotlib()


def test_no_mongodb_skips_also_under_the_test_command(monkeypatch):
    monkeypatch.setenv(EVERYTHING, "1")
    monkeypatch.setattr(needs, "MONGODB_URI", None)
    with pytest.raises(pytest.skip.Exception, match="^MONGODB_URI not set$"):
        needs.mongodb()
    monkeypatch.setattr(needs, "MONGODB_URI", "mongodb://db1/")
    assert needs.mongodb() == "mongodb://db1/"


def test_a_skip_is_reported_at_the_test_not_in_needs_py(tmp_path):
    (tmp_path / "test_x.py").write_text(
        "from support import needs\n\n\ndef test_it():\n    needs.skip('no reason at all')\n")
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                          "--disable-plugin-autoload", "-c", "/dev/null", "--rootdir", str(tmp_path),
                          str(tmp_path / "test_x.py")],
                         cwd=tmp_path, capture_output=True, text=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(TESTS),
                              "PYTHONDONTWRITEBYTECODE": "1"})
    assert "SKIPPED [1] test_x.py:4: no reason at all" in out.stdout, out.stdout + out.stderr


# ---- what needs.py asks for, scripts/setup test installs ----------------------------------------
TOOL_HELPERS = ("nginx", "redis_tools", "openssl", "wrk", "systemd_analyze")
MODULE_HELPERS = ("schemathesis", "matplotlib", "setuptools")
# Debian's redis-server depends on redis-tools, which holds redis-cli
COMES_WITH = {"redis-cli": "redis-server"}


def asked_for(monkeypatch, helpers, attr):
    seen = []
    monkeypatch.setattr(needs, attr, lambda *names, **kw: seen.extend(names) or list(names))
    for h in helpers:
        try:
            getattr(needs, h)()
        except (AttributeError, TypeError):   # a helper that uses what the fake returned
            pass
    return seen


def test_every_tool_a_test_needs_is_installed_by_scripts_setup_test(monkeypatch):
    setup = (TESTS.parent / "scripts" / "setup").read_text()
    tools = asked_for(monkeypatch, TOOL_HELPERS, "tools")
    assert {"nginx", "redis-server", "redis-cli", "openssl", "wrk", "systemd-analyze"} <= set(tools)
    for name in tools:
        assert f"command -v {COMES_WITH.get(name, name)} " in setup, f"scripts/setup does not install {name}"


def test_every_package_a_test_needs_is_in_the_test_extra(monkeypatch):
    import tomllib
    project = tomllib.loads((TESTS.parent / "pyproject.toml").read_text())["project"]
    test_extra = {r.split(">")[0].split("[")[0].split("=")[0].strip().lower()
                  for r in project["optional-dependencies"]["test"]}
    modules = asked_for(monkeypatch, MODULE_HELPERS, "module")
    assert {"schemathesis", "matplotlib", "setuptools"} <= set(modules)
    for name in modules:
        assert name.partition(".")[0] in test_extra, f"pyproject.toml's test extra lacks {name}"
