"""deploy.shared on disk (ultrascaled/effects/releases.py): likely data found and refused with the
line to add, data moved once from the running folder with a link left behind (a SQLite file with
its companions, never apart), every release linked, a release's own copy kept aside, and the
cases that cannot be decided refused with nothing changed. The spec's checks of the paths."""
from __future__ import annotations

import os
import sqlite3
import time

import pytest

from ultrascaled.effects import releases
from ultrascaled.effects.releases import ReleaseError
from ultrascaled.spec import SpecError, parse_spec


def make_spec(tmp_path, shared=()):
    entries = ", ".join(f'"{e}"' for e in shared)
    return parse_spec(f"paths: {{state_dir: {tmp_path}/state, log_dir: {tmp_path}/log}}\n"
                      f"deploy: {{shared: [{entries}]}}\n", base_dir=tmp_path)


def app(tmp_path, name="site", votes=0):
    d = tmp_path / name
    (d / "media").mkdir(parents=True)
    (d / "app.py").write_text("x = 1\n")
    c = sqlite3.connect(d / "db.sqlite3", isolation_level=None)
    c.execute("pragma journal_mode=wal")
    c.execute("create table v (id integer primary key)")
    for _ in range(votes):
        c.execute("insert into v default values")
    return d, c   # the connection stays open: the WAL and shm files exist, as under a live app


def test_likely_data_is_found_and_a_deploy_refused_with_the_line_to_add(tmp_path):
    d, c = app(tmp_path)
    (d / "media" / "a.png").write_text("png")
    (d / "empty_uploads").mkdir()
    (d / "uploads").mkdir()
    (d / ".venv").mkdir()
    (d / ".venv" / "x.db").write_text("")
    assert releases.likely_data(d, []) == ["db.sqlite3", "media/"]
    assert releases.likely_data(d, [("db.sqlite3", False), ("media", True)]) == []
    spec = make_spec(tmp_path)
    with pytest.raises(ReleaseError) as refused:
        releases.create(spec, str(d))
    msg = str(refused.value)
    assert "db.sqlite3" in msg and "media/" in msg and "deploy.shared" in msg and "--allow-data" in msg
    assert not releases.listing(spec), "nothing was deployed"
    notes = []
    rid = releases.create(spec, str(d), allow_data=True, notes=notes)
    assert (releases.releases_dir(spec) / rid / "db.sqlite3").is_file()
    assert notes[0][0] == "release.data_copied"
    c.close()


def test_the_running_folders_data_moves_once_with_its_companions_and_every_release_links_it(tmp_path):
    d, c = app(tmp_path, votes=3)
    assert (d / "db.sqlite3-wal").exists()
    spec = make_spec(tmp_path, ["db.sqlite3", "media/"])
    shared = releases.shared_dir(spec)
    notes = []
    rid = releases.create(spec, str(d), running=str(d), notes=notes)
    for name in ("db.sqlite3", "db.sqlite3-wal", "db.sqlite3-shm"):
        assert (d / name).is_symlink() and (d / name).resolve() == shared / name, name
    assert (d / "media").resolve() == shared / "media"
    # the open connection (the running app) and a new one (a new release) see one database
    c.execute("insert into v default values")
    release = releases.releases_dir(spec) / rid
    assert (release / "db.sqlite3").resolve() == shared / "db.sqlite3"
    with sqlite3.connect(release / "db.sqlite3") as c2:
        assert c2.execute("select count(*) from v").fetchone()[0] == 4
    assert [n for n, _ in notes].count("release.shared_moved") == 2
    # a second deploy links the same copy and moves nothing
    notes = []
    rid2 = releases.create(spec, str(d), running=str(release), notes=notes)
    assert (releases.releases_dir(spec) / rid2 / "db.sqlite3").resolve() == shared / "db.sqlite3"
    assert not [n for n, _ in notes if n == "release.shared_moved"]
    c.close()


def test_a_releases_own_copy_is_kept_aside_never_deleted(tmp_path):
    d, c = app(tmp_path, votes=2)
    old_spec = make_spec(tmp_path)
    old = releases.create(old_spec, str(d), allow_data=True)     # before db.sqlite3 was shared
    spec = make_spec(tmp_path, ["db.sqlite3"])
    releases.create(spec, str(d), running=str(d), allow_data=True)
    notes = []
    releases.prepare(spec, old, str(d), notes)                  # a rollback to the old release
    folder = releases.releases_dir(spec) / old
    assert (folder / "db.sqlite3").resolve() == releases.shared_dir(spec) / "db.sqlite3"
    kept = releases.shared_dir(spec) / ".displaced" / old / "db.sqlite3"
    assert kept.is_file() and notes == [("release.shared_displaced",
                                         {"path": "db.sqlite3", "release": old, "kept": str(kept)})]
    c.close()


def test_undecidable_cases_are_refused_and_change_nothing(tmp_path):
    d, c = app(tmp_path)
    c.close()
    spec = make_spec(tmp_path, ["db.sqlite3"])
    shared = releases.shared_dir(spec)
    shared.mkdir(parents=True)
    (shared / "db.sqlite3").write_text("another copy")
    with pytest.raises(ReleaseError, match="two places"):
        releases.create(spec, str(d), running=str(d), allow_data=True)
    assert not (d / "db.sqlite3").is_symlink() and not releases.listing(spec)
    (shared / "db.sqlite3").unlink()
    elsewhere = tmp_path / "var-lib.sqlite3"
    os.replace(d / "db.sqlite3", elsewhere)
    (d / "db.sqlite3").symlink_to(elsewhere)
    with pytest.raises(ReleaseError, match="is a link to"):
        releases.create(spec, str(d), running=str(d))
    spec_dir = make_spec(tmp_path, ["app.py/"])
    with pytest.raises(ReleaseError, match="is a file, but deploy.shared lists"):
        releases.create(spec_dir, str(d), running=str(d))


def test_a_release_is_created_now_not_when_its_source_was_nor_when_the_app_wrote_in_it(tmp_path):
    d, c = app(tmp_path)
    c.close()
    os.utime(d, (1_000_000, 1_000_000))
    spec = make_spec(tmp_path, ["db.sqlite3"])
    before = int(time.time())
    rid = releases.create(spec, str(d), running=str(d))
    folder = releases.releases_dir(spec) / rid
    (folder / "__pycache__").mkdir()                         # the app's first import writes here
    os.utime(folder, (2_000_000_000, 2_000_000_000))
    created = releases.listing(spec)[0]["created"]
    assert before <= created <= time.time() and created == releases.created_at(rid), rid
    assert releases.created_at("build-42") is None


@pytest.mark.parametrize("entry, why", [
    ("/etc/passwd", "must be relative"), ("../up", "plain path"), ("a//b", "plain path"),
    ("./db", "plain path"), ("", "is empty"), (".git/x", "which a release never holds"),
])
def test_the_spec_refuses_a_shared_path_outside_the_release(tmp_path, entry, why):
    with pytest.raises(SpecError, match=why):
        make_spec(tmp_path, [entry])


def test_the_spec_refuses_shared_paths_listed_twice_or_nested(tmp_path):
    with pytest.raises(SpecError, match="listed twice"):
        make_spec(tmp_path, ["db.sqlite3", "db.sqlite3"])
    with pytest.raises(SpecError, match="overlaps 'media'"):
        make_spec(tmp_path, ["media/", "media/avatars/"])
    assert make_spec(tmp_path, ["db.sqlite3", "media/"]).deploy.shared == ["db.sqlite3", "media/"]


def test_a_move_cut_short_by_a_killed_daemon_is_finished_by_the_next_deploy(tmp_path):
    d, c = app(tmp_path, votes=1)
    spec = make_spec(tmp_path, ["db.sqlite3", "media/"])
    shared = releases.shared_dir(spec)
    shared.mkdir(parents=True)
    for name in ("db.sqlite3", "db.sqlite3-wal"):   # hard-linked, the links not yet swapped in
        os.link(d / name, shared / name)
    os.rename(d / "media", shared / "media")          # renamed, the link not yet made
    releases.create(spec, str(d), running=str(d))
    assert (d / "db.sqlite3").is_symlink() and (d / "db.sqlite3-wal").is_symlink()
    assert (d / "media").resolve() == shared / "media"
    c.execute("insert into v default values")
    with sqlite3.connect(d / "db.sqlite3") as c2:
        assert c2.execute("select count(*) from v").fetchone()[0] == 2
    c.close()


def test_a_shared_path_under_a_link_out_of_the_folder_is_refused(tmp_path):
    d, c = app(tmp_path)
    c.close()
    outside = tmp_path / "outside"
    (outside / "db").mkdir(parents=True)
    (d / "instance").symlink_to(outside)
    spec = make_spec(tmp_path, ["instance/db/app.sqlite"])
    with pytest.raises(ReleaseError, match="lies under a link that leaves"):
        releases.create(spec, str(d), running=str(d), allow_data=True)
    assert not releases.listing(spec)


def test_the_snapshot_a_starting_daemon_keeps_leaves_the_data_where_it_is(tmp_path):
    d, c = app(tmp_path, votes=2)
    (d / "media" / "a.png").write_text("png")
    spec = make_spec(tmp_path, shared=["db.sqlite3", "media/"])
    before = sorted(p.name for p in d.iterdir())
    notes = []
    rid = releases.create(spec, str(d), notes=notes, snapshot=True, link_data=False)
    copy = releases.releases_dir(spec) / rid
    assert (copy / "app.py").read_text() == "x = 1\n"
    assert not any((copy / n).exists() or (copy / n).is_symlink()
                   for n in ("db.sqlite3", "db.sqlite3-wal", "media")), sorted(p.name for p in copy.iterdir())
    assert sorted(p.name for p in d.iterdir()) == before and not (d / "db.sqlite3").is_symlink()
    assert not releases.shared_dir(spec).exists() and notes == []
    # rolled back to, it is linked to the shared data the first deploy moved
    rid2 = releases.create(spec, str(d), running=str(d))
    releases.prepare(spec, rid, str(releases.releases_dir(spec) / rid2), [])
    assert (copy / "db.sqlite3").is_symlink()
    rows = sqlite3.connect(copy / "db.sqlite3").execute("select count(*) from v").fetchone()[0]
    assert rows == 2
    c.close()
