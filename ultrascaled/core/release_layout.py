"""Where releases live: the pure path arithmetic of the releases folder (the disk work is
`ultrascaled.effects.releases`). Release `None` is `app.directory` itself (no deploy yet)."""
from __future__ import annotations

import re
from pathlib import Path

BASE = "app.directory"           # how release None is shown
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def releases_dir(spec) -> Path:
    return Path(spec.deploy.releases_dir or Path(spec.paths.state_dir) / "releases")


def directory_of(spec, release: str | None) -> str:
    """The folder an instance of `release` runs in (its real path, not `current`)."""
    if release is None:
        return spec.app.directory
    return str(releases_dir(spec) / release)


def release_of_directory(spec, directory: str | None) -> str | None:
    """The inverse, for an adopted master's `--chdir`; None when it is app.directory or unknown."""
    if not directory:
        return None
    d = Path(directory)
    if d.parent == releases_dir(spec) and ID_RE.match(d.name):
        return d.name
    return None


def shared_dir(spec) -> Path:
    """Where the data of `deploy.shared` lives once, linked into every release."""
    return Path(spec.paths.state_dir) / "shared"


def shared_entries(spec) -> list[tuple[str, bool]]:
    """`deploy.shared` as (relative path, is a folder); a trailing `/` marks a folder."""
    return [(e.rstrip("/"), e.endswith("/")) for e in spec.deploy.shared]
