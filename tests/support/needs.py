"""What to do when a tool the tests use is missing: skip with the reason when the tests are run
by hand, but fail under scripts/test (the README's test command, which CI runs): it installs
every tool, so a missing one there is a broken setup, and a run must not pass by skipping."""
from __future__ import annotations

import os
from typing import NoReturn

import pytest

EVERYTHING = "ULTRASCALE_TESTS_NEED_EVERYTHING"   # set by scripts/test


def unavailable(why: str) -> NoReturn:
    if os.environ.get(EVERYTHING) == "1":
        pytest.fail(f"{why}; scripts/test installs it, so the setup is broken", pytrace=False)
    pytest.skip(why, allow_module_level=True)
