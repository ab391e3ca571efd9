"""The releases folder and deploy.json (ultrascaled/effects/releases.py): copies made whole or not at
all, `current` replaced atomically, pruning that keeps current and previous, and a mangled
state file ignored with a reason."""
from __future__ import annotations

import json
import os

import pytest

from ultrascaled.effects import releases
from ultrascaled.effects.releases import DeployState, ReleaseError
from ultrascaled.spec import parse_spec


@pytest.fixture
def spec(tmp_path):
    return parse_spec(f"paths: {{state_dir: {tmp_path}/state, log_dir: {tmp_path}/log}}", base_dir=tmp_path)


def src(tmp_path, name="src"):
    d = tmp_path / name
    (d / ".git").mkdir(parents=True)
    (d / "__pycache__").mkdir()
    (d / "app.py").write_text("x = 1\n")
    (d / "link").symlink_to("app.py")
    return d


def test_create_copies_without_git_and_caches_and_keeps_symlinks(spec, tmp_path):
    rid = releases.create(spec, str(src(tmp_path)))
    rel = releases.releases_dir(spec) / rid
    assert (rel / "app.py").read_text() == "x = 1\n" and os.readlink(rel / "link") == "app.py"
    assert not (rel / ".git").exists() and not (rel / "__pycache__").exists()
    assert releases.create(spec, str(src(tmp_path, "src2"))) != rid, "a second one in the same second"
    assert [r["id"] for r in releases.listing(spec)][0] == rid


@pytest.mark.parametrize("bad, code", [("relative", "release_invalid"), ("/no/such/folder", "release_not_found"),
                                       ("/" + "x" * 5000, "release_invalid")])
def test_create_refuses_what_it_cannot_copy(spec, bad, code):
    with pytest.raises(ReleaseError) as err:
        releases.create(spec, bad)
    assert err.value.code == code


def test_a_folder_holding_the_releases_folder_is_refused(spec, tmp_path):
    with pytest.raises(ReleaseError, match="contains the releases folder"):
        releases.create(spec, str(tmp_path))


def test_a_kernel_file_system_is_refused_at_once():
    # found by attack: `deploy /proc/self` copied for longer than the API's request timeout
    spec = parse_spec("paths: {state_dir: /tmp/ultrascale-unused-state}")
    with pytest.raises(ReleaseError, match="kernel file system"):
        releases.create(spec, "/proc/self")


def test_a_fifo_in_the_folder_is_refused_not_waited_on_and_nothing_is_left(spec, tmp_path):
    # found by attack: shutil.copy2 opens a FIFO for reading and waits forever
    d = src(tmp_path)
    os.mkfifo(d / "pipe")
    with pytest.raises(ReleaseError, match="not a regular file"):
        releases.create(spec, str(d))
    assert not list(releases.releases_dir(spec).iterdir()), "the half copy was removed"


def test_a_folder_over_the_size_bound_is_refused_and_nothing_is_left(spec, tmp_path, monkeypatch):
    d = src(tmp_path)
    (d / "big.bin").write_bytes(b"x" * 2048)
    monkeypatch.setattr(releases, "MAX_RELEASE_BYTES", 1024)
    with pytest.raises(ReleaseError, match="not an app's code"):
        releases.create(spec, str(d))
    assert not list(releases.releases_dir(spec).iterdir())


def test_current_is_a_relative_symlink_replaced_atomically_and_prune_keeps_current_and_previous(spec, tmp_path):
    ids = [releases.create(spec, str(src(tmp_path, f"s{i}"))) for i in range(4)]
    releases.point_current(spec, ids[0])
    releases.point_current(spec, ids[1])
    assert os.readlink(releases.releases_dir(spec) / "current") == ids[1]
    gone = releases.prune(spec, 2, {ids[0], ids[1]})
    assert gone == [] or set(gone) <= {ids[2], ids[3]}
    gone = releases.prune(spec, 2, {ids[3], ids[2]})
    assert gone == ids[:2] and [r["id"] for r in releases.listing(spec)] == ids[2:]
    releases.point_current(spec, None)
    assert not (releases.releases_dir(spec) / "current").is_symlink()


def test_half_copied_releases_are_cleaned_at_start(spec):
    root = releases.releases_dir(spec)
    (root / ".incoming-20261130T000000Z-12").mkdir(parents=True)
    assert releases.clean_incoming(spec) == [".incoming-20261130T000000Z-12"] and not list(root.iterdir())


@pytest.mark.parametrize("content, why", [
    ("{not json", "unreadable"), ("[1]", "does not hold an object"),
    (json.dumps({"current": "gone", "previous": None}), "not on disk"),
    (json.dumps({"current": "../../etc", "previous": None}), "not on disk"),
])
def test_a_mangled_deploy_json_is_ignored_with_the_reason(spec, content, why):
    path = releases.state_path(spec)
    path.parent.mkdir(parents=True)
    path.write_text(content)
    state, problem = releases.load_state(spec)
    assert state == DeployState() and why in problem


def test_state_round_trips(spec, tmp_path):
    rid = releases.create(spec, str(src(tmp_path)))
    releases.save_state(spec, DeployState(rid, None, {"kind": "deploy"}))
    assert releases.load_state(spec) == (DeployState(rid, None, {"kind": "deploy"}), None)
