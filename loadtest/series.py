"""Series mode: one run per user count, a Markdown scaling table, an optional chart."""
from __future__ import annotations

import dataclasses
import json
import sys
import time
import urllib.request
from typing import TextIO

from .runner import Config, Result, progress_printer, run, write_json


def fleet_memory_bytes(api: str, timeout: float = 2.0) -> int | None:
    """``memory.total_rss_bytes`` from ``GET {api}/fleet``; None if absent or unreachable."""
    url = api.rstrip("/") + "/fleet"
    try:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
        with opener.open(url, timeout=timeout) as resp:
            data = json.loads(resp.read().decode("utf-8"))
        value = data["memory"]["total_rss_bytes"]
        return int(value) if value is not None else None
    except Exception:
        return None


def _fmt(v, spec=".1f", suffix=""):
    return "n/a" if v is None else f"{v:{spec}}{suffix}"


def _mib(v):
    return "n/a" if v is None else f"{v / 1048576:.0f} MiB"


def markdown_table(rows: list[dict]) -> str:
    head = ("| users | req/s | p50 ms | p95 ms | p99 ms | error rate | client CPU (cores) "
            "| host CPU | fleet RSS | verdict |")
    lines = [head, "|" + "---:|" * 9 + ":---|"]
    for r in rows:
        lines.append(
            f"| {r['users']} | {r['rps']:.1f} | {_fmt(r['p50_ms'])} | {_fmt(r['p95_ms'])} "
            f"| {_fmt(r['p99_ms'])} | {_fmt(r['error_rate_pct'], '.2f', '%')} "
            f"| {r['client_cpu_cores']:.2f} | {_fmt(r['host_cpu_pct'], '.0f', '%')} "
            f"| {_mib(r['fleet_rss_bytes'])} | {r['verdict']} |")
    return "\n".join(lines)


def row_of(result: Result, fleet_rss: int | None) -> dict:
    return {
        "users": result.users, "rps": result.rps, "total": result.total,
        "p50_ms": result.latency.p50, "p95_ms": result.latency.p95, "p99_ms": result.latency.p99,
        "max_ms": result.latency.max, "error_rate_pct": result.error_rate_pct,
        "client_cpu_cores": result.client_cpu_cores, "host_cpu_pct": result.host_cpu_pct,
        "fleet_rss_bytes": fleet_rss,
        "verdict": ("PASS" if result.passed else "FAIL") if result.checks else "-",
        "warnings": result.warnings,
    }


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def draw_chart(rows: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    users = [r["users"] for r in rows]
    fig, ax = plt.subplots(figsize=(8, 5))
    for key, label in (("p50_ms", "p50"), ("p95_ms", "p95"), ("p99_ms", "p99")):
        ax.plot(users, [r[key] if r[key] is not None else float("nan") for r in rows],
                marker="o", label=f"{label} latency")
    ax.set_xlabel("concurrent users")
    ax.set_ylabel("latency (ms)")
    ax2 = ax.twinx()
    ax2.plot(users, [r["rps"] for r in rows], color="black", linestyle="--", marker="s", label="req/s")
    ax2.set_ylabel("requests / s")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="upper left")
    ax.set_title("ultrascale load series")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run_series(base: Config, steps: list[int], *, fleet_api: str | None, chart: str | None,
               quiet: bool, json_dest: str | None, out: TextIO, parser=None) -> int:
    if chart and not have_matplotlib():
        msg = "argument --chart: needs matplotlib, which is not installed (pip install matplotlib)"
        if parser is not None:
            parser.error(msg)
        raise SystemExit(msg)
    rows, results = [], []
    for users in steps:
        cfg = dataclasses.replace(base, users=users,
                                  procs=min(base.procs, users) if base.procs else None)
        if not quiet:
            sys.stderr.write(f"--- step: {users} users, {cfg.duration:g}s ---\n")
        result = run(cfg, progress=None if quiet else progress_printer(sys.stderr))
        rss = fleet_memory_bytes(fleet_api) if fleet_api else None
        rows.append(row_of(result, rss))
        results.append(result)
        time.sleep(0.2)  # let sockets in TIME_WAIT / server queues settle between steps
    out.write(markdown_table(rows) + "\n")
    for r in rows:
        for w in r["warnings"]:
            out.write(f"WARNING ({r['users']} users): {w}\n")
    if chart:
        draw_chart(rows, chart)
        out.write(f"chart written to {chart}\n")
    out.flush()
    if json_dest:
        data = {"steps": [dict(row, result=res.to_dict()) for row, res in zip(rows, results)]}
        write_json(json_dest, data)
    return 0 if all(res.passed for res in results) else 1
