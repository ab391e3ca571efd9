"""The one way the tests wait: poll a condition until it holds, with a generous deadline (a busy
machine only makes a passing test slower, never a failing one)."""
from __future__ import annotations

import time
from typing import Any, Callable


def wait_for(cond: Callable[[], Any], timeout: float = 30.0, what: str = "condition",
             interval: float = 0.05) -> Any:
    """cond()'s first true value; an exception from cond counts as "not yet" (a server still
    starting, an element replaced mid-update) and is named if the deadline passes."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            got = cond()
            if got:
                return got
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            last_exc = exc
        if time.monotonic() > deadline:
            why = f" (last error: {last_exc!r})" if last_exc else ""
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}{why}")
        time.sleep(interval)
