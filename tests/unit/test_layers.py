"""The layers keep their import rules: the contracts in pyproject.toml ([tool.importlinter]),
checked by import-linter (it reads imports inside functions too), plus what a module pulls in
when it is imported."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).with_name("lint-imports")
PURE = ["ultrascaled.spec", "ultrascaled.spec.nginx", "ultrascaled.core.plan", "ultrascaled.core.states", "ultrascaled.effects.nginx_render",
        "ultrascaled.core.autoscale", "ultrascaled.core.rollout", "ultrascaled.core.memwatch",
        "ultrascaled.core.capacity", "ultrascaled.core.command", "ultrascaled.core.reload_plan"]
HEAVY = ["psutil", "aiohttp", "subprocess", "asyncio"]


def test_the_import_contracts_hold():
    out = subprocess.run([str(LINT), "--no-cache"], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout, out.stdout[-2000:]


def test_every_layer_is_named_in_the_contracts():
    """A new folder under ultrascaled/ must be placed among the layers (the contract is exhaustive)."""
    text = (ROOT / "pyproject.toml").read_text()
    folders = {p.name for p in (ROOT / "ultrascaled").iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders - {"shims"} and all(f'"{f}"' in text for f in folders - {"shims"}), folders


@pytest.mark.parametrize("module", PURE)
def test_pure_module_imports_no_os_layer(module):
    code = (f"import sys, {module}; bad = [m for m in {HEAVY!r} if m in sys.modules]; "
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"{module} pulls in {out.stdout.strip()}"


def test_cli_imports_nothing_heavy():
    code = ("import sys, ultrascaled.surface.cli; bad = [m for m in ('aiohttp', 'yaml', 'psutil', 'urllib.request',"
            " 'structlog') if m in sys.modules]; print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
