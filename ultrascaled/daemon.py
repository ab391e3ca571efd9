"""ultrascaled: the composition root. Reads the spec, wires the parts, runs until stopped.

Exit status: 0 after a clean stop, 2 for an invalid spec or arguments, 1 for any other failure
to start (API port taken, nginx cannot start).
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import signal
import sys

import structlog

from ultrascaled import logs, sdnotify
from ultrascaled.events import EventLog
from ultrascaled.spec import Spec, SpecError, load_spec
from ultrascaled.supervisor import Supervisor
from ultrascaled.upstream import NoUpstream

DEFAULT_SPEC = os.environ.get("ULTRASCALE_SPEC", "/etc/ultrascaled/fleet.yaml")


def make_upstream(spec: Spec, events: EventLog):
    if spec.nginx.mode == "off":
        return NoUpstream()
    from ultrascaled.upstream import NginxUpstream
    return NginxUpstream(spec, events)


def make_alerts(spec: Spec, sup: Supervisor, events: EventLog):
    """Alert rules evaluated over two scrapes of the fleet's own metrics (no HTTP involved)."""
    from ultrascaled import alerts, metrics
    sampler = alerts.Sampler(lambda: metrics.families_async(
        sup.snapshot(), sup.upstream.status(), sup.counters, sup.metrics_dirs()))
    return alerts.AlertManager(spec.alerts, sampler, events.emit, fleet=spec.name,
                               db_connection_budget=spec.mongodb.connection_budget)


async def serve(spec_path: str, spec: Spec, nofile: int | None = None) -> int:
    log = structlog.get_logger("ultrascaled")
    events = EventLog()
    sup = Supervisor(spec, events, make_upstream(spec, events))

    from ultrascaled.api import ApiServer, AuditLog, Settings, build_app, read_token, tls_context

    def reload_spec() -> dict:
        new = load_spec(spec_path, nofile_limit=nofile)
        return sup.reload_spec(new)

    try:
        credentials = read_token(spec)
        tls = tls_context(spec)
        os.makedirs(spec.paths.state_dir, exist_ok=True)
        audit = AuditLog(os.path.join(spec.paths.state_dir, "audit.log"))
    except (OSError, ValueError) as exc:
        print(f"ultrascaled: {exc}", file=sys.stderr)
        return 2
    alerts = make_alerts(spec, sup, events)
    settings = Settings.from_spec(spec, credentials)
    api = ApiServer(build_app(sup, settings, reload_spec, alerts, audit), settings, tls)
    try:
        await api.start()
    except OSError as exc:
        print(f"ultrascaled: cannot serve the API on {spec.api.host}:{spec.api.port}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_hup() -> None:
        try:
            result = reload_spec()
            log.info("spec.reload_done", **result)
        except SpecError as exc:
            events.emit("spec.refused", level="error", errors=exc.errors)
        except Exception as exc:  # the running spec stays in force whatever went wrong
            events.emit("spec.refused", level="error", errors=[str(exc)])

    detach = False

    def on_quit() -> None:  # leave the fleet running for the next daemon to adopt (upgrades)
        nonlocal detach
        detach = True
        stop.set()

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGQUIT, on_quit)
    loop.add_signal_handler(signal.SIGHUP, on_hup)

    events.emit("daemon.starting", spec=spec.source, pid=os.getpid(), api=f"{spec.api.host}:{spec.api.port}",
                tls=tls is not None)
    try:
        await sup.start()
    except Exception as exc:
        events.emit("daemon.start_failed", level="error", error=f"{type(exc).__name__}: {exc}")
        await sup.shutdown(timeout=10)
        await api.close()
        return 1

    async def announce_ready() -> None:
        await sup.ready_event.wait()
        sdnotify.notify(f"READY=1\nSTATUS=serving {sup.count} instances")

    async def watchdog(interval: float) -> None:
        while True:
            sdnotify.notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    helpers = [asyncio.create_task(announce_ready(), name="sd-ready"),
               asyncio.create_task(alerts.run(), name="alerts")]
    interval = sdnotify.watchdog_interval()
    if interval:
        helpers.append(asyncio.create_task(watchdog(interval), name="sd-watchdog"))
    await stop.wait()
    sdnotify.notify("STOPPING=1")
    for t in helpers:
        t.cancel()
    if detach:
        await sup.detach()
        await api.close()
        return 0
    await sup.shutdown()
    await alerts.close(drain=2.0)
    await api.close()
    audit.close()
    return 0


def raise_nofile(want: int = 65536) -> int:
    """Raise the soft open-files limit towards the hard one (nginx and gunicorn inherit it)."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ultrascaled", description="Supervise a gunicorn fleet behind nginx.")
    p.add_argument("--spec", "-c", default=DEFAULT_SPEC, help=f"fleet spec (default {DEFAULT_SPEC})")
    p.add_argument("--check", action="store_true", help="validate the spec, print it resolved, and exit")
    p.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "info"),
                   choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", choices=["json", "console"], default=None,
                   help="default: json when stderr is not a terminal")
    args = p.parse_args(argv)
    logs.configure(args.log_level, None if args.log_format is None else args.log_format == "json")
    nofile = raise_nofile()
    try:
        spec = load_spec(args.spec, nofile_limit=nofile)
    except SpecError as exc:
        print(f"ultrascaled: invalid spec {args.spec}:", file=sys.stderr)
        for e in exc.errors:
            print(f"  {e}", file=sys.stderr)
        return 2
    if args.check:
        import json
        print(json.dumps(dataclasses.asdict(spec), indent=2))
        return 0
    return asyncio.run(serve(args.spec, spec, nofile))


if __name__ == "__main__":
    sys.exit(main())
