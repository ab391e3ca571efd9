"""Log rotation (rename, then the writer reopens on SIGUSR1, as gunicorn does), tail and
offset polling."""
import os
import select
import signal
import subprocess
import sys

import pytest

from ultrascaled.effects.logfiles import backup_path, read_from, shift, tail

# Writes numbered lines to a file it opened itself, reopening the name on SIGUSR1 (gunicorn's
# --capture-output --error-logfile behaviour), then "done". Says "ready" first.
WRITER = r"""
import os, signal, sys
path, n = sys.argv[1], int(sys.argv[2])
fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
def reopen(*_):  # as gunicorn's reopen_files: the new file is dup2'ed onto the same fd
    new = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(new, fd)
    os.close(new)
signal.signal(signal.SIGUSR1, reopen)
sys.stdout.write("ready\n"); sys.stdout.flush()
for i in range(n):
    os.write(fd, b"%08d %s\n" % (i, b"x" * 50))
os.write(fd, b"done\n")
sys.stdout.write("finished\n"); sys.stdout.flush()
sys.stdin.read()  # exit when told: a SIGUSR1 during interpreter shutdown would kill it
"""


def read_all(path, backups):
    """Oldest backup first, then the live file."""
    data = b""
    for n in range(backups, 0, -1):
        p = backup_path(path, n)
        if os.path.exists(p):
            data += open(p, "rb").read()
    return data + open(path, "rb").read()


@pytest.mark.timeout(60)
def test_regression_rotation_under_a_live_writer_loses_no_line(tmp_path):
    """issue 10, defect 8: copy-then-truncate lost the lines written between the copy and the
    truncate, and the test bounding that loss failed on a busy machine. Rename-and-reopen
    loses none, however the writer and the rotation interleave."""
    path = str(tmp_path / "instance-8001.log")
    proc = subprocess.Popen([sys.executable, "-c", WRITER, path, "30000"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    rotations = 0
    try:
        assert proc.stdout.readline() == b"ready\n"
        while not select.select([proc.stdout], [], [], 0)[0]:
            if os.path.exists(path) and os.path.getsize(path) >= 32 * 1024:
                shift(path, 500)
                os.kill(proc.pid, signal.SIGUSR1)
                rotations += 1
        assert proc.stdout.readline() == b"finished\n"
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    data = read_all(path, 500)
    numbers = [int(line[:8]) for line in data.splitlines() if line != b"done"]
    assert numbers == list(range(30000)), "every line, once, in order"
    assert data.endswith(b"done\n") and rotations >= 1


def test_shift_keeps_backups_newest_first_and_caps_them(tmp_path):
    path = str(tmp_path / "a.log")
    for generation in range(5):
        with open(path, "ab") as f:
            f.write(b"gen %d\n" % generation)
        shift(path, 2)
        assert not os.path.exists(path)
    assert open(backup_path(path, 1), "rb").read() == b"gen 4\n"
    assert open(backup_path(path, 2), "rb").read() == b"gen 3\n"
    assert not os.path.exists(backup_path(path, 3))


def test_shift_without_backups_removes_and_of_a_missing_file_does_nothing(tmp_path):
    path = str(tmp_path / "b.log")
    open(path, "wb").write(b"y")
    shift(path, 0)
    assert os.listdir(tmp_path) == []
    shift(str(tmp_path / "none.log"), 3)


@pytest.mark.parametrize("content,n,expected", [
    (b"", 5, ""),
    (b"a\nb\nc\n", 2, "b\nc\n"),
    (b"a\nb\nc", 2, "b\nc"),
    (b"a\nb\nc\n", 10, "a\nb\nc\n"),
    (b"a\nb\nc\n", 0, ""),
    (b"only", 1, "only"),
    (b"\xff\xfe bad utf8\n", 1, "\ufffd\ufffd bad utf8\n"),
])
def test_tail(tmp_path, content, n, expected):
    p = tmp_path / "t.log"
    p.write_bytes(content)
    assert tail(p, n) == expected


def test_tail_of_a_big_file_reads_across_blocks(tmp_path):
    p = tmp_path / "big.log"
    p.write_bytes(b"".join(b"line %06d %s\n" % (i, b"z" * 100) for i in range(5000)))
    out = tail(p, 1000).splitlines()
    assert len(out) == 1000
    assert out[0].startswith("line 004000") and out[-1].startswith("line 004999")
    assert tail(tmp_path / "missing.log", 5) == ""


def test_read_from_follows_appends_and_restarts_after_rotation(tmp_path):
    p = str(tmp_path / "f.log")
    assert read_from(p, 0) == (b"", 0)
    fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"one\ntwo\n")
        data, off = read_from(p, 0)
        assert (data, off) == (b"one\ntwo\n", 8)
        assert read_from(p, off) == (b"", 8)
        os.write(fd, b"three\n")
        assert read_from(p, off) == (b"three\n", 14)
        shift(p, 1)                                  # rotated: the writer reopens the name
        os.close(fd)
        fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(fd, b"four\n")
        assert read_from(p, 14) == (b"four\n", 5)     # offset 14 > size 5: a new file, from 0
        data, off = read_from(p, 0, limit=2)
        assert (data, off) == (b"fo", 2)
    finally:
        os.close(fd)
