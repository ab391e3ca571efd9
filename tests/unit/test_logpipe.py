"""A worker's log written through shims/ultrascale_logpipe.py (effects/procs.spawn(rotate=...)):
rotated at max_bytes by its reader with no line lost or cut in two files' order, the reader gone
once the writer is, its own stop signals ignored, and a bad log path refused at the spawn."""
from __future__ import annotations

import os
import signal
import sys
import time

import psutil
import pytest

from ultrascaled.effects import procs

WRITE = "import sys\nfor i in range({n}):\n    print(f'line {{i:06d}} ' + 'x' * 80, flush=True)\n"


def readers(path) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if procs.LOGPIPE in cmd and str(path) in cmd:
            out.append(p)
    return out


def wait_gone(path, timeout=10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not [p for p in readers(path) if p.status() != psutil.STATUS_ZOMBIE]:
            return True
        time.sleep(0.02)
    return False


def test_rotated_by_its_reader_with_every_line_in_order(tmp_path):
    log = tmp_path / "worker-0.log"
    p = procs.spawn([sys.executable, "-c", WRITE.format(n=2000)], dict(os.environ), str(tmp_path), str(log),
                    rotate=(50_000, 10))
    try:
        p.popen.wait(10)
        assert wait_gone(log), "the reader outlived its writer"
    finally:
        for r in readers(log):
            r.kill()
    parts = sorted(tmp_path.glob("worker-0.log.*"), key=lambda f: -int(f.suffix[1:])) + [log]
    assert len(parts) >= 2                      # ~184 KB in files of 50 KB (+ one read of at most 64 KB)
    lines = "".join(f.read_text() for f in parts).splitlines()
    assert [int(line.split()[1]) for line in lines] == list(range(2000))
    assert all(f.stat().st_size < 50_000 + 65536 for f in parts)


def test_the_reader_ignores_stop_signals_and_drains_until_the_writer_is_gone(tmp_path):
    log = tmp_path / "w.log"
    code = "import sys, time\nprint('before', flush=True)\ntime.sleep(1.0)\nprint('after', flush=True)\n"
    p = procs.spawn([sys.executable, "-c", code], dict(os.environ), str(tmp_path), str(log), rotate=(1 << 20, 2))
    try:
        deadline = time.monotonic() + 10
        while not (log.exists() and log.read_text()) and time.monotonic() < deadline:
            time.sleep(0.02)                                   # the reader runs its loop
        (reader,) = readers(log)
        assert os.getsid(reader.pid) != os.getsid(p.pid)      # a session of its own: the worker's group kill misses it
        reader.send_signal(signal.SIGTERM)
        p.popen.wait(10)
        assert wait_gone(log)
    finally:
        for r in readers(log):
            r.kill()
    assert log.read_text() == "before\nafter\n"


def test_a_log_path_through_a_symlink_is_refused_at_the_spawn(tmp_path):
    target = tmp_path / "elsewhere"
    (tmp_path / "w.log").symlink_to(target)
    with pytest.raises(OSError):
        procs.spawn([sys.executable, "-c", "pass"], dict(os.environ), str(tmp_path), str(tmp_path / "w.log"),
                    rotate=(4096, 1))
    assert not target.exists()


def test_a_log_that_cannot_be_written_drops_output_and_never_the_worker(tmp_path):
    """A full disk (/dev/full: every write is ENOSPC): the reader drops what it cannot write and
    goes on reading, so the worker never gets EPIPE (SIGPIPE) and ends as it would have."""
    p = procs.spawn([sys.executable, "-c", WRITE.format(n=2000)], dict(os.environ), str(tmp_path), "/dev/full",
                    rotate=(1 << 40, 1))
    try:
        assert p.popen.wait(20) == 0
        assert wait_gone("/dev/full")
    finally:
        for r in readers("/dev/full"):
            r.kill()
