"""Pure reading of an instance's log for the start's verdict: Python tracebacks and their
exception lines, and the rule that fails a start on its first clear signal.

The log is gunicorn's ``--error-logfile`` with ``--capture-output``: gunicorn's own lines
(``[2026-12-07 12:00:00 +0000] [4242] [ERROR] Error handling request /health``), the
tracebacks it logs after them, and whatever the app prints, from the master and every worker
at once, so lines of one process can land in the middle of another's traceback. The reconciler
reads the log (an effect, through its runner) and hands the lines to these functions.

The rule (docs/deploys.md, "A canary that cannot answer"): a starting master whose health path
answered HTTP 500 to `FAIL_FAST_500S` readiness probes in a row, and whose log has a Python
traceback written since it started, has failed to start now: an app that answers 500 while it
warms up writes no traceback, and waits for health.start_timeout as before.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

FAIL_FAST_500S = 3          # consecutive HTTP 500 readiness probes that, with a traceback, fail a start

TRACEBACK_HEADS = ("Traceback (most recent call last):", "Exception Group Traceback (most recent call last):")
_GUNICORN_LINE = re.compile(r"^\[[^\]]+\] \[(\d+)\] \[[A-Z]+\] ")
# `ImportError: cannot import name 'x' from 'y'`, `django.core.exceptions.ImproperlyConfigured: ...`,
# `KeyboardInterrupt`: a dotted name, then a colon or the end of the line
_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?::(?: .*)?)?$")
_MAX_QUOTE = 300


@dataclass(frozen=True)
class Traceback:
    exception: str              # its last line: `ImportError: cannot import name 'x' from 'y'`
    pid: int | None             # the gunicorn process whose `[pid] [ERROR] ...` line introduced it, if one did


def gunicorn_pid(line: str) -> int | None:
    m = _GUNICORN_LINE.match(line)
    return int(m.group(1)) if m else None


def tracebacks(lines: list[str]) -> list[Traceback]:
    """Every complete traceback in `lines`, in order, each by its exception line. A chained
    exception ("During handling of the above exception, another exception occurred:") is one
    more traceback; the last one is what was raised in the end. Lines of gunicorn's own log
    format inside a traceback are another process's and skipped; a traceback cut off by the end
    of the lines is left out."""
    out: list[Traceback] = []
    prefix: str | None = None          # inside a traceback: what its exception line starts with
    pid: int | None = None
    header_pid: int | None = None      # the pid of the gunicorn line just before, if it was one
    for raw in lines:
        line = raw.rstrip("\r\n")
        head = line.strip()
        if head == TRACEBACK_HEADS[0] or (head.endswith(TRACEBACK_HEADS[0]) and _prefix_is_log(line)):
            if prefix is None:
                pid = header_pid
            prefix, header_pid = "", None
            continue
        if head.endswith(TRACEBACK_HEADS[1]) and head.startswith(("+ ", TRACEBACK_HEADS[1])):
            # an ExceptionGroup: `  + Exception Group Traceback ...`, then `  | ExceptionGroup: ...`
            if prefix is None:
                pid = header_pid
            plus = line.find("+ Exception Group")
            prefix, header_pid = (" " * plus + "| ") if plus >= 0 else "", None
            continue
        g = gunicorn_pid(line)
        if prefix is None:
            header_pid = g
            continue
        if g is not None or not head or not line.startswith(prefix):
            continue                   # another process's line, a blank
        rest = line[len(prefix):]
        if rest[:1].isspace():
            continue                   # a frame, its source, a caret
        if _EXCEPTION_LINE.match(rest):
            out.append(Traceback(rest[:_MAX_QUOTE], pid))
            prefix, header_pid = None, None
        # any other line (a print of another worker) is skipped: the traceback goes on
    return out


def _prefix_is_log(line: str) -> bool:
    """`... [ERROR] Traceback (most recent call last):` on one line (a logger that prints the
    header on its message line)."""
    return gunicorn_pid(line) is not None


# A gunicorn master's own traceback as it gives up on workers that failed to boot: the
# consequence of the app's error, quoted only when the log has no other
GUNICORN_CONSEQUENCES = ("gunicorn.errors.HaltServer", "HaltServer", "SystemExit")


def last_exception(lines: list[str], exclude_pids: frozenset[int] | set[int] = frozenset()) -> str:
    """The exception line of the last traceback in `lines` that no process in `exclude_pids`
    wrote (by the gunicorn line that introduced it), the app's own rather than gunicorn's
    `HaltServer` after it; "" if there is none."""
    ours = [tb.exception for tb in tracebacks(lines) if tb.pid is None or tb.pid not in exclude_pids]
    causes = [e for e in ours if e.split(":", 1)[0] not in GUNICORN_CONSEQUENCES]
    return (causes or ours or [""])[-1]


def fails_fast(http_500s: int, exception: str, needed: int = FAIL_FAST_500S) -> bool:
    """A start has failed now: `needed` readiness probes in a row answered HTTP 500 and the
    log has a traceback since the start (its exception line is `exception`)."""
    return http_500s >= needed and bool(exception)


def fail_fast_reason(what: str, http_500s: int, exception: str) -> str:
    return f"{what} answered HTTP 500 to {http_500s} readiness probes in a row and its log has a traceback: {exception}"


def with_exception(reason: str, exception: str) -> str:
    """`reason` quoting `exception` (the log's traceback line), once."""
    if not exception or exception in reason:
        return reason
    return f"{reason}: {exception}"


def excerpt(lines: list[str]) -> str:
    """': <the last exception line>' (else the last line) from an instance's log lines: the
    app's own error rather than gunicorn's shutdown lines after it."""
    if not lines:
        return ""
    error = last_exception(lines)
    if not error:
        gunicorn_noise = ("[INFO]", "Worker exiting", "Shutting down", "Reason: ")
        error = next((ln.strip() for ln in reversed(lines)
                      if _looks_like_exception(ln) and not any(n in ln for n in gunicorn_noise)), "")
    return ": " + (error or lines[-1].strip())[:_MAX_QUOTE]


def _looks_like_exception(line: str) -> bool:
    head = line.strip().split(":", 1)[0]
    return bool(head) and " " not in head and (head.endswith(("Error", "Exception")) or head in
                                                ("KeyboardInterrupt", "SystemExit"))
