"""The systemd unit's sandboxing (issue 12, item 8): what it must say, and that the fleet
(the daemon, gunicorn, gevent workers) runs under MemoryDenyWriteExecute."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from support import needs
from support.harness import BIN, http_get

UNIT = Path(__file__).resolve().parents[2] / "systemd/ultrascaled.service"


def unit_lines() -> list[str]:
    lines = (line.strip() for line in UNIT.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def test_unit_sandboxes_the_daemon_and_keeps_notify_and_killmode():
    lines = unit_lines()
    for want in ("Type=notify", "KillMode=process", "User=ultrascale", "NoNewPrivileges=yes",
                 "ProtectSystem=strict", "PrivateTmp=yes", "ProtectHome=yes",
                 "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6", "SystemCallFilter=@system-service",
                 "ProtectKernelTunables=yes", "ProtectKernelModules=yes", "ProtectKernelLogs=yes",
                 "LockPersonality=yes", "RestrictRealtime=yes", "MemoryDenyWriteExecute=yes"):
        assert want in lines, want
    caps = [x for x in lines if x.startswith("CapabilityBoundingSet=")]
    assert caps and set(caps[-1].split("=", 1)[1].split()) <= {"CAP_NET_BIND_SERVICE"}
    assert any(x.startswith("ReadWritePaths=") for x in lines)


def test_unit_passes_systemd_analyze_verify(tmp_path):
    systemd_analyze = needs.systemd_analyze()
    # verify checks ExecStart's binary exists: point it at one that does.
    unit = tmp_path / "ultrascaled.service"
    installed = str(BIN / "ultrascaled")
    unit.write_text(UNIT.read_text().replace("/opt/ultrascale/.venv/bin/ultrascaled", installed))
    out = subprocess.run([systemd_analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True,
                         timeout=60)
    problems = [x for x in out.stderr.splitlines() if "ultrascaled.service" in x]
    assert out.returncode == 0 and not problems, out.stderr


@pytest.mark.integration
def test_the_fleet_runs_under_memory_deny_write_execute(make_daemon_api):
    # The daemon (aiohttp, psutil, yaml), gunicorn and its gevent workers (forked from it, so
    # under the same flag, which is inherited and kept across exec): none needs memory that is
    # writable and executable, so MemoryDenyWriteExecute=yes is safe for this app.
    mdwe = Path(__file__).with_name("mdwe_exec.py")
    probe = subprocess.run([sys.executable, str(mdwe), sys.executable, "-c",
                            "import mmap; mmap.mmap(-1, 4096, prot=7)"], capture_output=True, text=True)
    if "prctl(PR_SET_MDWE)" in probe.stderr:
        needs.skip(f"this kernel has no PR_SET_MDWE (Linux 6.3 added it): {probe.stderr.strip()}")
    assert probe.returncode != 0 and "Permission denied" in probe.stderr, "the flag refuses W+X memory"
    d = make_daemon_api(prefix=(sys.executable, str(mdwe)))
    fleet = d.fleet()
    for inst in fleet["instances"]:
        for _ in range(20):
            assert http_get(inst["port"])[0] == 200
        assert inst["workers"]
    assert d.proc.poll() is None
