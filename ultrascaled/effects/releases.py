"""Releases on disk, Capistrano-style (docs/deploys.md):

    <deploy.releases_dir>/
        20261130T150102Z/      a copy of the folder given to `ultrascalectl deploy DIR`
        20261130T161500Z/
        current -> 20261130T161500Z     (a relative symlink, replaced atomically)

and what the daemon remembers in `<paths.state_dir>/deploy.json`: the current and previous
release, and a rollout in progress (so it survives a daemon restart). Release `None` means
"no deploy yet": the instances run `app.directory` itself.

An instance is started with `--chdir` on the release's real folder, never on `current`, so a
worker its master respawns later imports the code of the release the instance was started
with.
"""
from __future__ import annotations

import calendar
import fnmatch
import json
import os
import shutil
import stat
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ultrascaled.core.release_layout import (BASE, ID_RE, directory_of, release_of_directory,  # noqa: F401
                                             releases_dir, shared_dir, shared_entries)
from ultrascaled.effects.files import write_atomic

COPY_IGNORE = shutil.ignore_patterns(".git", "__pycache__", "*.pyc", ".venv")
# A release is an app's code: a folder far larger than this is the wrong folder (a home, a data
# disk), and copying it would fill the state folder's disk. Kernel file systems are not code.
MAX_RELEASE_BYTES = 2 * 1024 ** 3
MAX_RELEASE_FILES = 200_000
NOT_CODE = (Path("/proc"), Path("/sys"), Path("/dev"))


class ReleaseError(Exception):
    """A release that cannot be made or found; the message names it and why. `code`: the API's
    error code (release_invalid 400, release_not_found 404)."""

    def __init__(self, message: str, code: str = "release_invalid"):
        self.code = code
        super().__init__(message)


def listing(spec) -> list[dict[str, Any]]:
    """Releases on disk, oldest first, with their creation time."""
    root = releases_dir(spec)
    out = []
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return []
    for e in entries:
        if e.is_dir(follow_symlinks=False) and ID_RE.match(e.name):
            out.append({"id": e.name, "created": created_at(e.name) or round(e.stat(follow_symlinks=False).st_mtime, 3)})
    return sorted(out, key=lambda r: (r["created"], r["id"]))


def created_at(release: str) -> float | None:
    """The time a release made by `deploy DIR` was created: its name (`20261130T150102Z`, `-2`
    ...). Its folder's time is not: the app writes into it (`__pycache__`) and copytree gives it
    the source's. None for a name a build chose."""
    try:
        return float(calendar.timegm(time.strptime(release.split("-")[0], "%Y%m%dT%H%M%SZ")))
    except ValueError:
        return None


def check_named(spec, release: str) -> str:
    if not isinstance(release, str) or not ID_RE.match(release):
        raise ReleaseError(f"release {str(release)[:60]!r} is not a release name (letters, digits, "
                           "'.', '_', '-'; at most 100)")
    path = releases_dir(spec) / release
    if not path.is_dir() or path.is_symlink():
        have = [r["id"] for r in listing(spec)]
        raise ReleaseError(f"no release {release!r} in {releases_dir(spec)}; releases: {have or 'none'}",
                           "release_not_found")
    return release


def new_id(root: Path, now: float | None = None) -> str:
    base = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now if now is not None else time.time()))
    rid, n = base, 1
    while (root / rid).exists():
        n += 1
        rid = f"{base}-{n}"
    return rid


def create(spec, source: str, *, running: str | None = None, allow_data: bool = False,
           notes: list | None = None, snapshot: bool = False, link_data: bool = True) -> str:
    """Copy `source` into a new release folder; returns its id. The copy is made under a
    temporary name and renamed, so a half-copied folder never looks like a release.

    `running` is the folder the fleet runs now: the data of `deploy.shared` found there moves to
    the shared folder first (a link is left in its place), and the release links it. Likely data
    not declared shared, in `source` or in `running`, refuses the deploy unless `allow_data`.
    What was done is appended to `notes` as (event, fields). A `snapshot` (the copy of
    app.directory kept for the first deploy's rollback) leaves out the daemon's own folders
    inside it and the deploy.shared paths; without `link_data` the release is linked to the
    shared data only when it is made ready to run (`prepare`): the snapshot a starting daemon
    takes, before any data has moved."""
    notes = [] if notes is None else notes
    src = Path(source)
    if not src.is_absolute():
        raise ReleaseError(f"the folder to deploy must be an absolute path, got {source[:200]!r}")
    try:
        is_dir = src.is_dir()
    except OSError as exc:   # e.g. a name too long
        raise ReleaseError(f"cannot read {source[:200]}: {exc.strerror or exc}") from None
    if not is_dir:
        raise ReleaseError(f"{source[:200]} is not a folder", "release_not_found")
    root = releases_dir(spec)
    try:
        inside = [d.resolve() for d in (root, Path(spec.paths.state_dir)) if d.resolve().is_relative_to(src.resolve())]
        if inside and (not snapshot or src.resolve() in inside):
            raise ReleaseError(f"{source} contains the releases folder {root}: deploy a folder beside it")
        if any(src.resolve().is_relative_to(k) for k in NOT_CODE):
            raise ReleaseError(f"{source} is in a kernel file system, not a folder of code")
    except OSError as exc:
        raise ReleaseError(f"cannot read {source}: {exc.strerror or exc}") from None
    entries = shared_entries(spec)
    found = {folder: likely_data(Path(folder), entries) for folder in dict.fromkeys([source, running]) if folder}
    found = {f: d for f, d in found.items() if d}
    if found and not allow_data:
        raise ReleaseError(data_refusal(found))
    for folder, data in found.items():
        notes.append(("release.data_copied", {"folder": folder, "paths": data}))
    if running:
        seed_shared(spec, Path(running), notes)
    tmp = None
    try:
        root.mkdir(parents=True, exist_ok=True)
        rid = new_id(root)
        tmp = root / f".incoming-{rid}-{os.getpid()}"
        data = [(src / (rel + tail)).resolve() for rel, is_dir in entries
                for tail in ("",) + (() if is_dir else SQLITE_COMPANIONS)]
        ignore = COPY_IGNORE if not snapshot else _ignoring(COPY_IGNORE, inside + data)
        shutil.copytree(src, tmp, symlinks=True, ignore=ignore, copy_function=_bounded_copy(source))
        if link_data:
            link_shared(spec, tmp, notes, rid)
        os.utime(tmp)  # created now: copytree gave it the source folder's time
        os.rename(tmp, root / rid)
    except (OSError, shutil.Error, ReleaseError) as exc:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, ReleaseError):
            raise
        raise ReleaseError(f"cannot copy {source} into {root}: {exc}") from None
    return rid


# ---- data the app writes: deploy.shared (docs/deploys.md#data-the-app-writes) ------------------

DATA_FILES = ("*.sqlite3", "*.sqlite", "*.db")      # SQLite's usual names
DATA_DIRS = ("media", "uploads", "upload")          # Django's MEDIA_ROOT, the usual upload folders
SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")    # moved with their database, never apart
MAX_DATA_SCAN = 50_000                              # entries looked at before giving up the search


def likely_data(folder: Path, entries: list[tuple[str, bool]]) -> list[str]:
    """What under `folder` looks like data an app writes and is not declared in deploy.shared:
    SQLite files and non-empty upload folders (symlinks are links, not data)."""
    declared = {rel for rel, _ in entries}
    out, seen = [], 0
    for top, dirs, files in os.walk(folder):
        rel_top = os.path.relpath(top, folder)
        rel = (lambda n: n) if rel_top == "." else (lambda n: f"{rel_top}/{n}")
        keep = []
        for d in dirs:
            path = os.path.join(top, d)
            if d in (".git", ".venv", "__pycache__") or rel(d) in declared or os.path.islink(path):
                continue
            if d in DATA_DIRS and _non_empty(path):
                out.append(rel(d) + "/")
                continue
            keep.append(d)
        dirs[:] = keep
        for f in files:
            seen += 1
            path = os.path.join(top, f)
            if rel(f) not in declared and any(fnmatch.fnmatch(f, pat) for pat in DATA_FILES) \
                    and not os.path.islink(path) and os.path.isfile(path):
                out.append(rel(f))
        if seen > MAX_DATA_SCAN:
            break
    return sorted(out)


def _non_empty(path: str) -> bool:
    try:
        with os.scandir(path) as it:
            return any(True for _ in it)
    except OSError:
        return False


def data_refusal(found: dict[str, list[str]]) -> str:
    where = "; ".join(f"in {folder}: {', '.join(paths[:10])}{' ...' if len(paths) > 10 else ''}"
                      for folder, paths in found.items())
    names = sorted({p for paths in found.values() for p in paths})[:10]
    return (f"the app's folder holds what looks like data the app writes ({where}). A release is a "
            "copy: each deploy would start from its own copy and the next one would lose what the "
            "app wrote meanwhile. Declare it in deploy.shared, so that it lives once and every release "
            f"links it: `deploy: {{shared: [{', '.join(names)}]}}` in the spec, then reload; or deploy "
            "with --allow-data to copy it anyway (nothing was deployed)")


def _link(target: Path, where: Path) -> None:
    """`where` becomes a symlink to `target`, replaced atomically (never missing meanwhile)."""
    tmp = where.with_name(f".shared-link-{os.getpid()}-{where.name}")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, where)


def _cross_device(what: Path, shared: Path) -> ReleaseError:
    return ReleaseError(f"{what} and the shared folder {shared} are on different file systems, so "
                        f"its data cannot move there in one step while the app writes it: stop the "
                        f"fleet, move it to {shared} yourself, then deploy (nothing was deployed)")


def seed_shared(spec, running: Path, notes: list) -> None:
    """Each deploy.shared path that has no shared copy yet moves there from the folder the fleet
    runs, and a link takes its place, so the running instances and the new release write one
    copy. A file (and its SQLite companions) is hard-linked first, then the link replaces it:
    its path never goes missing while the app uses it."""
    shared = shared_dir(spec)
    for rel, is_dir in shared_entries(spec):
        target, here = shared / rel, running / rel
        _inside(running, here)
        if target.exists() or target.is_symlink():
            if not is_dir and here.is_file() and not here.is_symlink() and os.path.samefile(here, target):
                _swap_in_links(running, shared, rel)   # a daemon killed half-way: finish the move
                continue
            if not here.exists() and not here.is_symlink():
                here.parent.mkdir(parents=True, exist_ok=True)
                _link(target, here)                    # killed between a folder's rename and its link
                continue
            if here.exists() and not here.is_symlink():
                raise ReleaseError(f"{rel} is in two places, {here} and the shared copy {target}: keep "
                                   "the one the app should use, move the other away, then deploy "
                                   "(nothing was deployed)")
            continue
        if here.is_symlink():
            raise ReleaseError(f"{here} is a link to {os.readlink(here)}, not data in the folder: "
                               f"remove {rel!r} from deploy.shared (the link is copied into every "
                               "release as it is), or put the data back in its place (nothing was deployed)")
        if not here.exists():
            continue
        if is_dir != here.is_dir():
            raise ReleaseError(f"{here} is {'a folder' if here.is_dir() else 'a file'}, but deploy.shared "
                               f"lists {rel!r} as {'a folder (trailing /)' if is_dir else 'a file'} (nothing was deployed)")
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            if is_dir:
                os.rename(here, target)
            else:
                for suffix in ("",) + SQLITE_COMPANIONS:
                    if (running / (rel + suffix)).is_file():
                        os.link(running / (rel + suffix), shared / (rel + suffix))
        except OSError as exc:
            if exc.errno == 18:  # EXDEV
                raise _cross_device(here, shared) from None
            raise ReleaseError(f"cannot move {here} to the shared folder {shared}: {exc.strerror or exc} "
                               "(nothing was deployed)") from None
        if is_dir:
            _link(target, here)
        else:
            _swap_in_links(running, shared, rel)
        notes.append(("release.shared_moved", {"path": rel, "from": str(here), "to": str(target)}))


def _swap_in_links(running: Path, shared: Path, rel: str) -> None:
    """The file (then its SQLite companions) in `running` replaced by links to their hard-linked
    twins in `shared`."""
    for suffix in ("",) + SQLITE_COMPANIONS:
        here = running / (rel + suffix)
        if (shared / (rel + suffix)).exists() and not here.is_symlink():
            _link(shared / (rel + suffix), here)


def _inside(folder: Path, path: Path) -> None:
    """A shared path's parent must be in the folder: a symlinked parent pointing out of it would
    have the data moved, or a link written, somewhere else."""
    parent = path.parent
    while not parent.exists() and parent != folder:
        parent = parent.parent
    if not parent.resolve().is_relative_to(folder.resolve()):
        raise ReleaseError(f"{path} lies under a link that leaves {folder} ({parent} -> {parent.resolve()}): "
                           "a shared path must be inside the app's folder (nothing was deployed)")


def link_shared(spec, folder: Path, notes: list, release: str) -> None:
    """The release `folder` links each deploy.shared path to its shared copy. A copy of its own
    (the deployed folder's, or an older release's from before the path was shared) is moved to
    `<shared>/.displaced/<release>/`, never deleted; a path no copy has yet gets its parent
    folder (a folder path: the folder itself), for the app to create."""
    shared = shared_dir(spec)
    for rel, is_dir in shared_entries(spec):
        target, here = shared / rel, folder / rel
        _inside(folder, here)
        if here.is_symlink() and os.readlink(here) == str(target):
            continue
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            if here.exists() and not here.is_symlink():
                shutil.move(here, target)     # the first copy there is: the deployed folder's
                notes.append(("release.shared_seeded", {"path": rel, "from": release}))
            elif is_dir:
                target.mkdir(parents=True, exist_ok=True)
        if here.exists() or here.is_symlink():
            aside = shared / ".displaced" / release / rel
            aside.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(here, aside)
            notes.append(("release.shared_displaced", {"path": rel, "release": release, "kept": str(aside)}))
        here.parent.mkdir(parents=True, exist_ok=True)
        _link(target, here)


def prepare(spec, release: str, running: str | None, notes: list) -> None:
    """A release already on disk (`deploy --release`, a rollback) made ready to run: the shared
    data seeded from the running folder if it is not yet, and linked into the release."""
    if not spec.deploy.shared:
        return
    if running:
        seed_shared(spec, Path(running), notes)
    link_shared(spec, releases_dir(spec) / release, notes, release)


def _ignoring(base, folders: list[Path]):
    """copytree's `ignore`: `base`'s patterns, and the `folders` themselves."""
    def ignore(directory: str, names: list[str]) -> set[str]:
        d = Path(directory).resolve()
        return set(base(directory, names)) | {n for n in names if d / n in folders}
    return ignore


def _bounded_copy(source: str):
    """shutil.copy2 for regular files only (reading a FIFO would wait forever, a device forever
    or endlessly), within MAX_RELEASE_BYTES and MAX_RELEASE_FILES."""
    seen = {"bytes": 0, "files": 0}

    def copy(src: str, dst: str) -> str:
        st = os.lstat(src)
        if not stat.S_ISREG(st.st_mode):
            raise ReleaseError(f"{src[:300]} is not a regular file (a FIFO, socket or device): a release "
                               "holds files; remove it from the folder or deploy another one")
        seen["bytes"] += st.st_size
        seen["files"] += 1
        if seen["bytes"] > MAX_RELEASE_BYTES or seen["files"] > MAX_RELEASE_FILES:
            raise ReleaseError(f"{source[:200]} holds more than {MAX_RELEASE_FILES:,} files or "
                               f"{MAX_RELEASE_BYTES // 1024 ** 3} GiB: not an app's code (nothing was deployed)")
        return shutil.copy2(src, dst)
    return copy


def clean_incoming(spec) -> list[str]:
    """Half-copied releases a killed daemon left (`.incoming-*`): deleted at start."""
    root = releases_dir(spec)
    gone = []
    try:
        for e in os.scandir(root):
            if e.name.startswith(".incoming-") and e.is_dir(follow_symlinks=False):
                shutil.rmtree(e.path, ignore_errors=True)
                gone.append(e.name)
    except FileNotFoundError:
        pass
    return gone


def point_current(spec, release: str | None) -> None:
    """`current` -> release (removed for None), replaced atomically (symlink + rename)."""
    root = releases_dir(spec)
    link = root / "current"
    if release is None:
        if link.is_symlink():
            link.unlink()
        return
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".current-{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(release, tmp)
    os.replace(tmp, link)


def remove(spec, release: str) -> None:
    """Delete one release folder (a snapshot replaced by a newer one)."""
    shutil.rmtree(releases_dir(spec) / check_named(spec, release), ignore_errors=True)


def prune(spec, keep: int, protect: set[str | None]) -> list[str]:
    """Delete the oldest releases beyond `keep`, never one in `protect`."""
    rels = listing(spec)
    doomed = [r["id"] for r in rels[:max(0, len(rels) - keep)] if r["id"] not in protect]
    for rid in doomed:
        shutil.rmtree(releases_dir(spec) / rid, ignore_errors=True)
    return doomed


# ---- what the daemon remembers ----------------------------------------------------------------

@dataclass
class DeployState:
    current: str | None = None       # the release the fleet runs (None: app.directory)
    previous: str | None = None      # where `rollback` goes
    rollout: dict | None = None      # rollout.Rollout.persist() while one runs
    base: str | None = None          # the copy of app.directory the first deploy took: its rollback target

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()


def state_path(spec) -> Path:
    return Path(spec.paths.state_dir) / "deploy.json"


def load_state(spec) -> tuple[DeployState, str | None]:
    """(state, problem): an unreadable file gives a fresh state and says why."""
    path = state_path(spec)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return DeployState(), None
    except (OSError, ValueError) as exc:
        return DeployState(), f"{path} is unreadable ({type(exc).__name__}: {exc}); starting with no release"
    if not isinstance(data, dict):
        return DeployState(), f"{path} does not hold an object; starting with no release"
    cur, prev, ro, base = data.get("current"), data.get("previous"), data.get("rollout"), data.get("base")
    problems = []
    for name, val in (("current", cur), ("previous", prev), ("base", base)):
        if val is not None and (not isinstance(val, str) or not ID_RE.match(val)
                                or not (releases_dir(spec) / val).is_dir()):
            problems.append(f"{name} release {str(val)[:60]!r} is not on disk")
    if problems:
        return DeployState(), f"{path}: " + "; ".join(problems) + "; starting with no release"
    return DeployState(cur, prev, ro if isinstance(ro, dict) else None, base), None


def save_state(spec, state: DeployState) -> None:
    path = state_path(spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(str(path), state.to_json())
