"""Tracebacks in an instance's log (core/boot_log.py) and the rule that fails a start on its
first clear signal: HTTP 500 from the health path, repeated, with a traceback since the start."""
from __future__ import annotations

import subprocess
import sys

from hypothesis import given, settings, strategies as st

from ultrascaled.core.boot_log import (FAIL_FAST_500S, excerpt, fail_fast_reason, fails_fast, last_exception,
                                       tracebacks, with_exception)
from ultrascaled.core.plan import InstanceView, Kill, KillSuccessor, Policy, SuccessorView, plan
from ultrascaled.core.states import State as S

IMPORT_ERROR = "ImportError: cannot import name 'missing_view' from 'polls.views' (/srv/app/polls/views.py)"

HANDLING = f"""\
[2026-12-07 12:00:01 +0000] [4243] [ERROR] Error handling request /health
Traceback (most recent call last):
  File "/venv/lib/python3.11/site-packages/gunicorn/workers/sync.py", line 135, in handle
    self.handle_request(listener, req, client, addr)
  File "/srv/app/wsgi.py", line 9, in application
    from polls.views import missing_view
{IMPORT_ERROR}
"""

SYNTAX = """\
[2026-12-07 12:00:01 +0000] [4243] [ERROR] Exception in worker process
Traceback (most recent call last):
  File "/venv/lib/python3.11/site-packages/gunicorn/arbiter.py", line 609, in spawn_worker
    worker.init_process()
  File "<frozen importlib._bootstrap>", line 1206, in _gcd_import
  File "/srv/app/app.py", line 3
    def broken(:
               ^
SyntaxError: invalid syntax
[2026-12-07 12:00:01 +0000] [4243] [INFO] Worker exiting (pid: 4243)
[2026-12-07 12:00:01 +0000] [4242] [ERROR] Shutting down: Master
[2026-12-07 12:00:01 +0000] [4242] [ERROR] Reason: App failed to load.
"""

CHAINED = """\
Traceback (most recent call last):
  File "/srv/app/settings.py", line 4, in <module>
    import psycopg
ModuleNotFoundError: No module named 'psycopg'

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File "/srv/app/db.py", line 2, in connect
    raise ImproperlyConfigured("no database driver")
django.core.exceptions.ImproperlyConfigured: no database driver
"""

GUNICORN_BOOT = """\
[2026-12-07 12:00:00 +0000] [4242] [INFO] Starting gunicorn 23.0.0
[2026-12-07 12:00:00 +0000] [4242] [INFO] Listening at: fd://5 (4242)
[2026-12-07 12:00:00 +0000] [4242] [INFO] Using worker: sync
[2026-12-07 12:00:00 +0000] [4243] [INFO] Booting worker with pid: 4243
"""


def lines(text: str) -> list[str]:
    return text.splitlines()


def test_the_exception_line_of_a_request_traceback_gunicorn_logged():
    tbs = tracebacks(lines(GUNICORN_BOOT + HANDLING))
    assert [(t.exception, t.pid) for t in tbs] == [(IMPORT_ERROR, 4243)]
    assert last_exception(lines(GUNICORN_BOOT + HANDLING)) == IMPORT_ERROR


def test_a_syntax_error_is_quoted_by_its_exception_line_not_its_caret_nor_gunicorn_s_shutdown():
    assert last_exception(lines(SYNTAX)) == "SyntaxError: invalid syntax"
    assert excerpt(lines(SYNTAX)) == ": SyntaxError: invalid syntax"


def test_the_app_s_error_is_quoted_rather_than_the_master_s_halt_after_it():
    """A replacement master whose worker cannot import the app exits with its own traceback."""
    halt = ("[2026-12-07 12:00:02 +0000] [4242] [ERROR] Worker (pid:4243) exited with code 3\n"
            "Traceback (most recent call last):\n"
            '  File "/venv/lib/python3.11/site-packages/gunicorn/arbiter.py", line 260, in handle_chld\n'
            "    self.reap_workers()\n"
            "gunicorn.errors.HaltServer: <HaltServer 'Worker failed to boot.' 3>\n")
    boot = SYNTAX.split("[2026-12-07 12:00:01 +0000] [4243] [INFO] Worker exiting")[0]
    assert last_exception(lines(boot + halt)) == "SyntaxError: invalid syntax"
    assert excerpt(lines(boot + halt)) == ": SyntaxError: invalid syntax"
    assert last_exception(lines(halt)) == "gunicorn.errors.HaltServer: <HaltServer 'Worker failed to boot.' 3>"


def test_chained_exceptions_end_with_the_last_one_raised():
    assert [t.exception for t in tracebacks(lines(CHAINED))] == [
        "ModuleNotFoundError: No module named 'psycopg'", "django.core.exceptions.ImproperlyConfigured: no database driver"]
    assert last_exception(lines(CHAINED)) == "django.core.exceptions.ImproperlyConfigured: no database driver"


def test_real_python_tracebacks_of_every_shape():
    """What this interpreter prints: a cause, a SyntaxError, an ExceptionGroup, a bare KeyError."""
    code = r'''
import traceback
try:
    try:
        {}["k"]
    except KeyError as e:
        raise RuntimeError("wrapped") from e
except Exception:
    traceback.print_exc()
try:
    compile("def f(:\n  pass", "app.py", "exec")
except SyntaxError:
    traceback.print_exc()
try:
    raise ExceptionGroup("eg", [ValueError("x")])
except* ValueError:
    traceback.print_exc()
try:
    raise KeyboardInterrupt
except BaseException:
    traceback.print_exc()
'''
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30).stderr
    got = [t.exception for t in tracebacks(lines(err))]
    assert got[:3] == ["KeyError: 'k'", "RuntimeError: wrapped", "SyntaxError: invalid syntax"], err
    if sys.version_info >= (3, 11):
        assert got[3:] == ["ExceptionGroup: eg (1 sub-exception)", "KeyboardInterrupt"], err


def test_no_traceback_no_quote_and_a_cut_off_traceback_is_left_out():
    assert tracebacks(lines(GUNICORN_BOOT)) == []
    assert last_exception(lines(GUNICORN_BOOT + "ValueError: printed by the app, not raised\n")) == ""
    assert last_exception(lines(HANDLING)[:-1]) == ""   # the exception line not written yet


def test_tracebacks_of_another_master_s_processes_are_not_counted():
    other = HANDLING.replace("[4243]", "[5000]").replace(IMPORT_ERROR, "KeyError: 'old'")
    assert last_exception(lines(HANDLING + other), exclude_pids={5000}) == IMPORT_ERROR
    assert last_exception(lines(other), exclude_pids={5000}) == ""
    assert last_exception(lines(other)) == "KeyError: 'old'"


# ---- the parser under interleaving: other processes' lines land inside a traceback ------------

TB_CASES = [(lines(HANDLING)[1:], IMPORT_ERROR), (lines(SYNTAX)[1:9], "SyntaxError: invalid syntax"),
            (lines(CHAINED), "django.core.exceptions.ImproperlyConfigured: no database driver")]
NOISE = st.sampled_from([
    "[2026-12-07 12:00:02 +0000] [4250] [INFO] Booting worker with pid: 4250",
    "[2026-12-07 12:00:02 +0000] [4242] [WARNING] Worker with pid 4244 was terminated due to signal 9",
    "[2026-12-07 12:00:02 +0000] [4244] [ERROR] Error handling request /other",
    "",
])


@settings(max_examples=100, deadline=None)
@given(case=st.sampled_from(TB_CASES), before=st.lists(NOISE, max_size=5), after=st.lists(NOISE, max_size=5),
       inserts=st.lists(st.tuples(st.integers(0, 40), NOISE), max_size=6))
def test_interleaved_gunicorn_lines_do_not_change_the_exception_line(case, before, after, inserts):
    tb, exception = case
    body = list(tb)
    for at, line in inserts:   # another process's gunicorn line between any two lines of it
        body.insert(min(at, len(body) - 1), line)
    assert last_exception(before + body + after) == exception


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=80), max_size=30))
def test_any_text_parses_and_every_quote_is_one_line_from_it(text_lines):
    got = last_exception(text_lines)
    assert got == "" or (any(got in ln for ln in text_lines) and "\n" not in got and len(got) <= 300)
    assert isinstance(excerpt(text_lines), str)


# ---- the rule, and the plan that applies it --------------------------------------------------

def test_the_rule_needs_both_repeated_500s_and_a_traceback():
    assert FAIL_FAST_500S == 3
    assert fails_fast(3, IMPORT_ERROR) and fails_fast(7, IMPORT_ERROR)
    assert not fails_fast(2, IMPORT_ERROR)          # not repeated yet
    assert not fails_fast(30, "")                   # 500 while warming up, no traceback: wait
    assert fails_fast(1, IMPORT_ERROR, needed=1)
    reason = fail_fast_reason("its health path", 3, IMPORT_ERROR)
    assert reason.endswith(IMPORT_ERROR) and "HTTP 500" in reason and "3" in reason
    assert with_exception("not ready after 30s", IMPORT_ERROR) == f"not ready after 30s: {IMPORT_ERROR}"
    assert with_exception(reason, IMPORT_ERROR) == reason and with_exception("x", "") == "x"


P = Policy(start_timeout=120)


def _actions(view, now):
    return [a for a in plan((8001,), {8001: view}, frozenset(), P, now).actions if isinstance(a, (Kill, KillSuccessor))]


def test_a_starting_instance_is_killed_at_once_on_the_clear_signal():
    starting = dict(port=8001, state=S.STARTING, since=0.0, next_probe=99.0)
    kills = _actions(InstanceView(**starting, http_500s=3, boot_error=IMPORT_ERROR), now=1.0)
    assert len(kills) == 1 and IMPORT_ERROR in kills[0].reason and "not ready after" not in kills[0].reason
    assert _actions(InstanceView(**starting, http_500s=2, boot_error=IMPORT_ERROR), now=1.0) == []
    assert _actions(InstanceView(**starting, http_500s=50, boot_error=""), now=60.0) == []   # waits ...
    late = _actions(InstanceView(**starting, http_500s=50, boot_error="", last_probe="HTTP 500"), now=120.0)
    assert [k.reason for k in late] == ["not ready after 120s (last probe: HTTP 500)"]      # ... for start_timeout


def test_a_replacement_is_killed_at_once_on_the_clear_signal():
    def running(**succ):
        return InstanceView(8001, S.RUNNING, next_probe=99.0, handoff=True,
                            successor=SuccessorView(since=0.0, next_probe=99.0, **succ))
    kills = _actions(running(http_500s=3, boot_error=IMPORT_ERROR), now=1.0)
    assert len(kills) == 1 and isinstance(kills[0], KillSuccessor) and kills[0].reason.endswith(IMPORT_ERROR)
    assert _actions(running(http_500s=3, boot_error=""), now=1.0) == []
    assert _actions(running(http_500s=0, boot_error=IMPORT_ERROR), now=1.0) == []
