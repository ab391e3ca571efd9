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

import json
import os
import shutil
import stat
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ultrascaled.core.release_layout import BASE, ID_RE, directory_of, release_of_directory, releases_dir  # noqa: F401
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
            out.append({"id": e.name, "created": round(e.stat(follow_symlinks=False).st_mtime, 3)})
    return sorted(out, key=lambda r: (r["created"], r["id"]))


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


def create(spec, source: str) -> str:
    """Copy `source` into a new release folder; returns its id. The copy is made under a
    temporary name and renamed, so a half-copied folder never looks like a release."""
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
        if root.resolve() == src.resolve() or root.resolve().is_relative_to(src.resolve()):
            raise ReleaseError(f"{source} contains the releases folder {root}: deploy a folder beside it")
        if any(src.resolve().is_relative_to(k) for k in NOT_CODE):
            raise ReleaseError(f"{source} is in a kernel file system, not a folder of code")
    except OSError as exc:
        raise ReleaseError(f"cannot read {source}: {exc.strerror or exc}") from None
    tmp = None
    try:
        root.mkdir(parents=True, exist_ok=True)
        rid = new_id(root)
        tmp = root / f".incoming-{rid}-{os.getpid()}"
        shutil.copytree(src, tmp, symlinks=True, ignore=COPY_IGNORE, copy_function=_bounded_copy(source))
        os.rename(tmp, root / rid)
    except (OSError, shutil.Error, ReleaseError) as exc:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, ReleaseError):
            raise
        raise ReleaseError(f"cannot copy {source} into {root}: {exc}") from None
    return rid


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
    cur, prev, ro = data.get("current"), data.get("previous"), data.get("rollout")
    problems = []
    for name, val in (("current", cur), ("previous", prev)):
        if val is not None and (not isinstance(val, str) or not ID_RE.match(val)
                                or not (releases_dir(spec) / val).is_dir()):
            problems.append(f"{name} release {str(val)[:60]!r} is not on disk")
    if problems:
        return DeployState(), f"{path}: " + "; ".join(problems) + "; starting with no release"
    return DeployState(cur, prev, ro if isinstance(ro, dict) else None), None


def save_state(spec, state: DeployState) -> None:
    path = state_path(spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(str(path), state.to_json())
