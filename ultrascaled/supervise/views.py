"""What `/fleet` and `/health` show: read-only views over the reconciler's records."""
from __future__ import annotations

from typing import Any

from ultrascaled.core.reconciler import Reconciler
from ultrascaled.spec import MB
from ultrascaled.spec.budget import requests_per_worker
from ultrascaled.core.states import State

S = State


def fleet(rec: Reconciler) -> dict[str, Any]:
    spec = rec.spec
    now = rec.clock.wall()
    nginx_on = spec.nginx.mode != "off"
    wanted = rec.wanted
    items = []
    for port in sorted(rec.instances):
        i = rec.instances[port]
        items.append({
            "index": i.index, "port": port, "pid": i.pid, "state": i.state.value,
            "since": round(i.since_wall, 3),
            "uptime": round(now - i.started_wall, 1) if i.started_wall and i.pid else None,
            "restarts": i.restarts, "last_exit": i.last_exit, "reason": i.reason,
            "in_upstream": port in rec.applied, "adopted": i.adopted,
            "serving": i.state is S.RUNNING and (port in rec.applied or not nginx_on),
            "restart_pending": i.restart_requested,
            "last_probe": i.last_probe or None,
            "master_rss": i.master_mem.rss if i.master_mem else None,
            "cpu_seconds": round(i.master_mem.cpu, 3) if i.master_mem else None,  # the master's own
            "workers": [{"pid": w.pid, "rss": w.rss, "cpu_seconds": round(w.cpu, 3)} for w in i.workers],
            "rss_total": i.rss,
            "release": i.release,   # None: app.directory (no deploy yet); see docs/deploys.md
            "replacing": {"pid": i.successor.handle.pid, "release": i.successor.release,
                          "ready": i.successor.ready} if i.successor is not None else None,
            # a restart given up: its replacement could not start; the running master serves on
            "restart_failed": i.reason if i.replace_failed and not i.restart_requested else None,
        })
    total = sum(x["rss_total"] for x in items)
    ready = sum(1 for x in items if x["serving"] and x["port"] in wanted)
    return {
        "fleet": spec.name, "desired": rec.count, "ready": ready,
        "min": spec.instances.min, "max": spec.instances.max,
        "ports": list(wanted), "shutting_down": rec.shutting_down,
        # the spec's class (the command line may name the daemon's shim of it: core/command.py)
        "gunicorn": {"worker_class": spec.gunicorn.worker_class, "workers": spec.workers,
                     "requests_per_worker": requests_per_worker(spec)[0]},
        "memory": {"total_rss_bytes": total, "budget_bytes": spec.memory.fleet_budget_mb * MB,
                   "worker_limit_bytes": spec.memory.worker_limit_mb * MB},
        "upstream": {"servers": sorted(rec.applied), "ok": rec.upstream_ok, "error": rec.upstream_error},
        "instances": items,
        # warm spares (docs/spares.md): not capacity, never in the upstream, not in `ready`
        "spares": rec.spares_status(),
    }


def health(rec: Reconciler, task_problems: list[str]) -> tuple[bool, list[str]]:
    """Healthy only when every wanted instance runs, the upstream is in step, and every
    background loop of the daemon is alive and on time."""
    reasons = list(task_problems)
    for p in rec.wanted:
        inst = rec.instances.get(p)
        if inst is None or inst.state is not S.RUNNING:
            state = inst.state.value if inst else "absent"
            detail = f" ({inst.reason})" if inst and inst.reason else ""
            reasons.append(f"instance {p} is {state}{detail}")
        elif inst.recycle_held:
            reasons.append(inst.recycle_held)
    if rec.upstream_ok is False:
        reasons.append(f"upstream update failed: {rec.upstream_error}")
    nginx = rec.upstream.status()
    if nginx.get("mode") == "managed" and nginx.get("running") is False:
        reasons.append("the managed nginx is not running")
    return not reasons, reasons
