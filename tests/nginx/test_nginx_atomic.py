"""Unit tests of the atomic writer."""
import os
import stat

import pytest

from ultrascaled.effects import files
from ultrascaled.effects.files import restore_file, write_atomic


def test_new_file_is_written_with_default_mode(tmp_path):
    p = tmp_path / "up.conf"
    out = write_atomic(str(p), b"one\n")
    assert out.changed and out.previous is None
    assert p.read_bytes() == b"one\n"
    assert stat.S_IMODE(p.stat().st_mode) == 0o644


def test_unchanged_bytes_do_not_write(tmp_path):
    p = tmp_path / "up.conf"
    p.write_bytes(b"same\n")
    before = os.stat(p)
    out = write_atomic(str(p), b"same\n")
    assert not out.changed and out.previous == b"same\n"
    after = os.stat(p)
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)


def test_change_keeps_mode_and_replaces_by_rename(tmp_path):
    p = tmp_path / "up.conf"
    p.write_bytes(b"old\n")
    os.chmod(p, 0o640)
    ino = os.stat(p).st_ino
    out = write_atomic(str(p), b"new\n")
    assert out.changed and out.previous == b"old\n"
    assert p.read_bytes() == b"new\n"
    assert stat.S_IMODE(p.stat().st_mode) == 0o640
    assert os.stat(p).st_ino != ino  # a new inode: renamed over, never truncated in place
    assert sorted(x.name for x in tmp_path.iterdir()) == ["up.conf"]  # no temp left


def test_temp_file_is_created_in_the_same_folder(tmp_path, monkeypatch):
    seen = []
    real = files.tempfile.mkstemp

    def spy(*a, **kw):
        fd, name = real(*a, **kw)
        seen.append(name)
        return fd, name

    monkeypatch.setattr(files.tempfile, "mkstemp", spy)
    write_atomic(str(tmp_path / "up.conf"), b"x")
    assert len(seen) == 1 and os.path.dirname(seen[0]) == str(tmp_path)


def test_failed_write_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    p = tmp_path / "up.conf"
    p.write_bytes(b"old\n")

    def boom(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "replace", boom)
    with pytest.raises(OSError):
        write_atomic(str(p), b"new\n")
    assert p.read_bytes() == b"old\n"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["up.conf"]


def test_restore_puts_previous_bytes_back_with_mode(tmp_path):
    p = tmp_path / "up.conf"
    p.write_bytes(b"old\n")
    os.chmod(p, 0o600)
    out = write_atomic(str(p), b"new\n")
    restore_file(str(p), out.previous)
    assert p.read_bytes() == b"old\n"
    assert stat.S_IMODE(p.stat().st_mode) == 0o600


def test_restore_of_a_file_that_did_not_exist_removes_it(tmp_path):
    p = tmp_path / "up.conf"
    out = write_atomic(str(p), b"new\n")
    restore_file(str(p), out.previous)
    assert not p.exists()
