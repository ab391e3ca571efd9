"""One bounded load step for `ultrascalectl plan --measure`: the project's load tester
(`ultrascale-loadtest`, its own package, which the daemon's modules never import) run as a
child process against a loopback port, its `--json` result read back.

The load tester is found as the installed `ultrascale_loadtest` package, else, in a checkout,
as `loadtest/` (the folder it is installed from).
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path


class LoadError(RuntimeError):
    """The load tester could not run; the message says why."""


def _loadtest() -> tuple[str, str | None]:
    """(module name, folder to put on PYTHONPATH or None)."""
    for name in ("ultrascale_loadtest", "loadtest"):
        try:
            found = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            found = None
        if found is None or not found.submodule_search_locations:
            continue
        folder = Path(list(found.submodule_search_locations)[0])
        if (folder / "runner.py").is_file() and (folder / "cli.py").is_file():
            return name, str(folder.parent)
    raise LoadError("the load tester is not installed (the `ultrascale_loadtest` package of "
                    "`pip install ultrascale`, or `loadtest/` in a checkout)")


def run_step(port: int, paths: list[str], users: int, *, seconds: float, requests: int,
             timeout: float, host: str = "127.0.0.1") -> dict:
    """``users`` closed-loop connections on ``paths`` (even weights) for at most ``seconds`` and
    ``requests``; the load tester's result as a dict (``rps``, ``latency``, ``error_rate_pct``...)."""
    module, folder = _loadtest()
    argv = [sys.executable, "-m", module, f"http://{host}:{port}{paths[0]}", "-u", str(users),
            "-d", f"{seconds:g}", "-n", str(requests), "--timeout", f"{timeout:g}", "-q", "--json", "-"]
    if len(paths) > 1:
        for p in paths:
            argv += ["--path", p]
    env = dict(os.environ)
    if folder:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [folder, env.get("PYTHONPATH")]))
    try:
        done = subprocess.run(argv, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL,
                              timeout=seconds + timeout + 90)
    except subprocess.TimeoutExpired:
        raise LoadError(f"the load tester did not finish {seconds:g} s of load in "
                        f"{seconds + timeout + 90:g} s") from None
    if done.returncode not in (0, 1):       # 1: a target missed (none are given here)
        raise LoadError(f"the load tester failed (exit {done.returncode}): "
                        f"{(done.stderr or done.stdout).strip()[-800:]}")
    try:
        return json.loads(done.stdout)
    except json.JSONDecodeError:
        raise LoadError(f"the load tester printed no JSON: {done.stdout.strip()[-400:]}") from None
