"""Writing an export's files into a folder, replacing or removing only what an export wrote.

Atomic writes; an operator's own file (one without the generated mark) is never replaced.
"""
from __future__ import annotations

import os

from ultrascaled.effects.files import write_atomic
from ultrascaled.export.kube.model import GENERATED_MARK, ExportError


def write_dir(folder: str, files: dict[str, str]) -> list[str]:
    """Write the files (atomically, only when changed) and remove the YAML files a previous
    export wrote there that this one no longer makes (only files that carry our mark).
    Returns the removed names."""
    os.makedirs(folder, exist_ok=True)
    foreign = [f for f in files if os.path.lexists(os.path.join(folder, f))
               and not _ours(os.path.join(folder, f))]
    if foreign:  # checked before anything is written: an operator's own file is never replaced
        raise ExportError(f"--output {folder}: {', '.join(sorted(foreign))} exist and were not "
                          "written by `ultrascalectl export`; refusing to replace them (choose "
                          "an empty folder)")
    for fname, text in files.items():
        write_atomic(os.path.join(folder, fname), text.encode())
    removed = []
    for fname in sorted(os.listdir(folder)):
        path = os.path.join(folder, fname)
        if fname in files or not fname.endswith(".yaml") or not _ours(path):
            continue
        os.unlink(path)
        removed.append(fname)
    return removed


def _ours(path: str) -> bool:
    """A regular file (not a link) that starts with the mark every exported file carries."""
    if os.path.islink(path) or not os.path.isfile(path):
        return False
    with open(path, "rb") as f:
        return f.read(len(GENERATED_MARK)) == GENERATED_MARK.encode()
