"""The pure core imports neither psutil, aiohttp nor subprocess (CONVENTIONS point 11)."""
import subprocess
import sys

import pytest

PURE = ["ultrascaled.spec", "ultrascaled.core.plan", "ultrascaled.core.states", "ultrascaled.effects.nginx_render",
        "ultrascaled.core.autoscale", "ultrascaled.core.rollout"]
HEAVY = ["psutil", "aiohttp", "subprocess", "asyncio"]


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
