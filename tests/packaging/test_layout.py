"""The daemon package holds only the daemon, its API, CLI and the capacity planner: none of its
modules imports the reference app, the load tester, the benchmarks, the test support or a
package that only the reference app needs (pyproject.toml's base requirements would then lie)."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOT_THE_DAEMON = {"app", "ultrascale_app", "loadtest", "ultrascale_loadtest", "bench", "support", "tests",
                  "gevent", "redis", "pymongo", "socketio", "engineio", "simple_websocket", "matplotlib"}


def imported_top_names(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


# Optional packages one daemon module may import lazily, inside a function and never at its top:
# effects/queue_depth.py reads a worker type's queue with redis-py only for a spec that autoscales
# on one, and spec validation (spec/queue.py) refuses such a spec when redis-py is missing.
LAZY_OPTIONAL = {"ultrascaled/effects/queue_depth.py": {"redis"}}


def module_level_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", sorted((ROOT / "ultrascaled").rglob("*.py")), ids=lambda p: p.name)
def test_daemon_module_imports_nothing_but_the_daemon(path):
    lazy = LAZY_OPTIONAL.get(str(path.relative_to(ROOT)), set())
    assert not imported_top_names(path) & (NOT_THE_DAEMON - lazy)
    assert not module_level_names(path) & lazy, f"{path.name} must import {lazy} lazily"


def test_the_daemon_package_is_only_the_daemon():
    entries = {p.name for p in (ROOT / "ultrascaled").iterdir() if p.name != "__pycache__"}
    assert not entries & {"harness.py", "chaos.py", "figures.py", "loadtest"}, entries


@pytest.mark.parametrize("folder", ["app", "loadtest"])
def test_installed_under_another_name_so_imports_inside_are_relative(folder):
    for path in sorted((ROOT / folder).glob("*.py")):
        assert folder not in imported_top_names(path), f"{path.relative_to(ROOT)} imports {folder} by name"
