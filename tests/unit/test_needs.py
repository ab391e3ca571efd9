"""A missing tool skips a test run by hand but fails one run by scripts/test (which installs
every tool), so CI cannot pass by skipping the browser, Redis or schemathesis tests."""
import pytest

from support.needs import EVERYTHING, unavailable


def test_a_missing_tool_skips_when_run_by_hand(monkeypatch):
    monkeypatch.delenv(EVERYTHING, raising=False)
    with pytest.raises(pytest.skip.Exception, match="chromium not installed"):
        unavailable("chromium not installed")


def test_a_missing_tool_fails_under_the_test_command(monkeypatch):
    monkeypatch.setenv(EVERYTHING, "1")
    with pytest.raises(pytest.fail.Exception, match="chromium not installed; scripts/test installs it"):
        unavailable("chromium not installed")


def test_the_test_command_asks_for_everything():
    from pathlib import Path
    script = (Path(__file__).resolve().parents[2] / "scripts" / "test").read_text()
    assert f"export {EVERYTHING}=1" in script
