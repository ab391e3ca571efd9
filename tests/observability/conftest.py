# Helpers live in obs_helpers.py (a uniquely named module, so test dirs do not collide).
import shutil

import pytest

from obs_helpers import write_many


@pytest.fixture(scope="session")
def sixteen_dirs(tmp_path_factory):
    """16 instance metric folders as 4 gunicorn workers each leave them.

    One folder is written by the app's own metrics code in 4 forked processes, the other 15 are
    copies of it (same files, same read cost; writing 64 processes' files takes ~9 s on 2 cores)."""
    root = tmp_path_factory.mktemp("metrics16")
    first = root / "8001"
    write_many([first], workers=4, requests=300)
    dirs = {8001: str(first)}
    for i in range(1, 16):
        shutil.copytree(first, root / str(8001 + i))
        dirs[8001 + i] = str(root / str(8001 + i))
    return dirs
