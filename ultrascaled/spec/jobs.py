"""When a job type runs (`processes.NAME.schedule` or `.every`), pure: parsing and the next time.

`schedule` is cron's five fields (minute hour day-of-month month day-of-week) in the host's local
time, as cron reads them, parsed by cronsim (the parser Healthchecks.io runs); cron's `@hourly`,
`@daily`, `@weekly`, `@monthly`, `@yearly` are accepted too. `every` is a period, `30s`, `5m`,
`1h` or a number of seconds, on a fixed grid from the Unix epoch (`every: 1m` starts on each
minute), so that a restart does not shift it.
"""
from __future__ import annotations

import math
import re
from datetime import datetime

from cronsim import CronSim, CronSimError

ALIASES = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
           "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
           "@hourly": "0 * * * *"}
EVERY_MIN, EVERY_MAX = 1.0, 7 * 86400.0
_PERIOD = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*\Z")
_UNIT = {None: 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def every_seconds(value: str) -> float:
    """`30s`, `5m`, `1h`, `2d` or `45` (seconds) as seconds; ValueError saying what is wrong."""
    m = _PERIOD.match(str(value))
    if not m:
        raise ValueError(f"must be a period such as 30s, 5m, 1h or a number of seconds, got {value!r}")
    seconds = float(m.group(1)) * _UNIT[m.group(2)]
    if not EVERY_MIN <= seconds <= EVERY_MAX:
        raise ValueError(f"must be {EVERY_MIN:g} s..7d, got {value!r}")
    return seconds


def _cron(expr: str) -> str:
    return ALIASES.get(expr.strip().lower(), expr)


def check_schedule(expr: str) -> str | None:
    """None for a schedule cron understands, else what is wrong with it."""
    try:
        nxt = next(CronSim(_cron(expr), datetime(2000, 1, 1).astimezone()))
    except (CronSimError, StopIteration) as exc:
        return f"is not a cron schedule (minute hour day month weekday, e.g. '*/15 * * * *'): " \
               f"{exc or 'it never matches'}; got {expr!r}"
    except (ValueError, TypeError) as exc:
        return f"is not a cron schedule: {exc}; got {expr!r}"
    return None if nxt else "never matches"


def next_after(t: float, schedule: str | None, every: float | None) -> float:
    """The first due time strictly after wall time `t` (seconds since the epoch)."""
    if every:
        return (math.floor(t / every) + 1) * every
    start = datetime.fromtimestamp(t).astimezone()
    for due in CronSim(_cron(schedule or ""), start):
        if due.timestamp() > t:
            return due.timestamp()
    raise ValueError(f"the schedule {schedule!r} never matches")  # check_schedule refused it
