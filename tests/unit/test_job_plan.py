"""When jobs are due and what concurrency makes of a run still going (core/job_plan.py,
spec/jobs.py): pure, as tables."""
import os
import time
from datetime import datetime

import pytest

from ultrascaled.core import job_plan as jp
from ultrascaled.spec import jobs

T0 = 1_699_999_980.0          # a multiple of 2, 10 and 60 seconds


@pytest.mark.parametrize("text, seconds", [("30s", 30), ("30", 30), ("5m", 300), ("1h", 3600),
                                           ("2d", 172800), ("1.5", 1.5), (" 10 s ", 10)])
def test_every_reads_a_period(text, seconds):
    assert jobs.every_seconds(text) == seconds


@pytest.mark.parametrize("text", ["0.5", "8d", "soon", "", "-5s", "5 minutes", "1e3"])
def test_every_refuses_what_is_not_a_period_in_range(text):
    with pytest.raises(ValueError):
        jobs.every_seconds(text)


def test_every_runs_on_a_fixed_grid_from_the_epoch_whatever_the_start():
    assert jobs.next_after(T0, None, 60.0) == T0 + 60     # on a due time: the next one
    assert jobs.next_after(T0 + 0.1, None, 60.0) == T0 + 60
    assert jobs.next_after(T0 + 59.9, None, 2.0) == T0 + 60


@pytest.fixture
def utc(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_a_cron_schedule_is_read_in_local_time(utc, monkeypatch):
    at = datetime(2026, 12, 7, 23, 41, 30).astimezone().timestamp()
    nxt = jobs.next_after(at, "*/15 * * * *", None)
    assert datetime.fromtimestamp(nxt).strftime("%H:%M:%S") == "23:45:00"
    assert datetime.fromtimestamp(jobs.next_after(at, "@daily", None)).strftime("%d %H:%M") == "08 00:00"
    monkeypatch.setenv("TZ", "Asia/Tokyo")                # UTC+9: 03:00 there is 18:00 UTC
    time.tzset()
    nxt = jobs.next_after(at, "0 3 * * *", None)
    assert time.strftime("%H:%M", time.gmtime(nxt)) == "18:00"


@pytest.mark.parametrize("expr", ["* * * * *", "@hourly", "@weekly", "0 0 29 2 *", "30 3 * * 1-5"])
def test_check_schedule_takes_what_cron_takes(expr):
    assert jobs.check_schedule(expr) is None


@pytest.mark.parametrize("expr", ["61 * * * *", "* * *", "@sometimes", "x", ""])
def test_check_schedule_says_what_is_wrong(expr):
    assert "is not a cron schedule" in jobs.check_schedule(expr)


def policy(**kw) -> jp.JobPolicy:
    return jp.JobPolicy(**{"every": 10.0, **kw})


@pytest.mark.parametrize("concurrency, live, elsewhere, action", [
    ("forbid", 0, False, "start"),
    ("forbid", 1, False, "skip"),
    ("forbid", 0, True, "skip"),        # a run this daemon lost the record of still holds the lock
    ("replace", 0, False, "start"),
    ("replace", 1, False, "replace"),
    ("replace", 0, True, "skip"),
    ("allow", 3, False, "start"),
    ("allow", 0, True, "start"),        # allow takes no lock
    ("allow", jp.ALLOW_MAX, False, "skip"),
])
def test_on_due(concurrency, live, elsewhere, action):
    runs = [jp.LiveRun(i + 1, 0.0) for i in range(live)]
    assert jp.on_due(policy(concurrency=concurrency), runs, elsewhere)[0] == action


def test_missed_counts_the_due_times_between_and_names_the_latest():
    p = policy(every=10.0)
    assert jp.missed(p, None, T0) == (0, None)
    assert jp.missed(p, T0, T0 + 9.9) == (0, None)
    assert jp.missed(p, T0, T0 + 55) == (5, T0 + 50)
    assert jp.missed(policy(every=1.0), T0, T0 + 10 ** 6)[0] == jp.MISSED_COUNT_MAX


def test_overdue_stops_at_the_timeout_and_kills_at_the_stop_deadline():
    p = policy(timeout=30.0)
    runs = [jp.LiveRun(1, 0.0), jp.LiveRun(2, 20.0), jp.LiveRun(3, 0.0, stop_deadline=35.0)]
    assert jp.overdue(p, runs, 30.0) == ([1], [])
    assert jp.overdue(p, runs, 35.0) == ([1], [3])
    assert jp.overdue(policy(), runs, 10 ** 6) == ([], [3])   # no timeout: only the deadline
    assert jp.next_wakeup(p, runs) == 30.0
    assert jp.next_wakeup(policy(), [jp.LiveRun(1, 0.0)]) is None


@pytest.mark.parametrize("rc, reason, outcome", [(0, None, "succeeded"), (1, None, "failed"),
                                                 (-9, None, "failed"), (None, None, "unknown"),
                                                 (-15, "timed_out", "timed_out"), (0, "replaced", "replaced")])
def test_outcome(rc, reason, outcome):
    assert jp.outcome(rc, reason) == outcome
