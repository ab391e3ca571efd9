"""ultrascaled: the composition root. Reads the spec, wires the parts, runs until stopped.

Exit status: 0 after a clean stop, 2 for an invalid spec or arguments, 1 for any other failure
to start (API port taken, nginx cannot start).
"""
from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import resource
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

# When this is the daemon's program: structlog imports rich (with pygments, for its pretty
# tracebacks) and greenlet whenever they are installed, and the daemon uses neither (its console
# log renders plain text); leaving them out keeps 3.7 MiB off its RSS (measured, docs/benchmarks.md
# "The daemon's idle cost"). Tests and other programs that import this module are not affected.
if os.path.basename(sys.argv[0]) == "ultrascaled":
    for _unused in ("rich", "greenlet"):
        sys.modules.setdefault(_unused, None)  # type: ignore[assignment]

import structlog  # noqa: E402
from aiohttp import web

from ultrascaled.effects import fleetlock, sdnotify
from ultrascaled.effects.fleetlock import FleetLocked
from ultrascaled.effects.upstream import NginxUpstream, NoUpstream
from ultrascaled.observe import history, logs, metrics
from ultrascaled.observe.events import EventLog
from ultrascaled.effects.host_checks import host_problems, host_warnings, port_problems
from ultrascaled.spec import Spec, SpecError, load_spec, parse_spec, shown_spec
from ultrascaled.supervise.supervisor import Supervisor
from ultrascaled.surface.api import ApiServer, AuditLog, Settings, read_token, tls_context
from ultrascaled.surface.app import build_app

DEFAULT_SPEC = os.environ.get("ULTRASCALE_SPEC", "/etc/ultrascaled/fleet.yaml")
RELOAD_TIMEOUT = 5.0


def make_upstream(spec: Spec, events: EventLog):
    if spec.nginx.mode == "off":
        return NoUpstream()
    return NginxUpstream(spec, events)


def make_history(spec: Spec, sup: Supervisor) -> history.History | None:
    """The dashboard's 15 minutes (dashboard.history_seconds) of the fleet, or None when the
    dashboard is off. Traffic as nginx's access log measures it (any app) while that log is
    read, else from the app's own metrics folders."""
    if not spec.dashboard.enabled:
        return None
    source = history.MetricsTraffic(sup.metrics_dirs, metrics.app_families)
    if sup.traffic is not None:
        source = history.FirstActive(sup.traffic, source)

    def autoscale_target():
        """The count the autoscaler's last decision wants (the instance chart draws it); None
        while autoscaling is off or has not decided yet."""
        a = sup.autoscaler
        if not a.enabled or a.last is None:
            return None
        return a.last.desired

    return history.History(source, sup.snapshot, seconds=spec.dashboard.history_seconds,
                           interval=spec.dashboard.sample_interval, target=autoscale_target)


async def serve(spec_path: str, spec: Spec, nofile: int | None = None) -> int:
    log = structlog.get_logger("ultrascaled")
    events = EventLog()
    sup = Supervisor(spec, events, make_upstream(spec, events), alerts=True, nofile_limit=nofile)
    try:
        sup.lock.acquire()  # before anything else: never touch another daemon's fleet
    except (FleetLocked, OSError) as exc:
        print(f"ultrascaled: {exc}", file=sys.stderr)
        return 2

    reload_lock = asyncio.Lock()

    async def read_spec(text: bytes | None = None, source: str | None = None) -> Spec:
        """The spec file (or, for a dry run, the text sent), read and checked off the event
        loop within a time limit: a hostile file must not stall supervision."""
        where = spec_path if text is None else (source or "<the spec sent>")
        if text is None:
            read = functools.partial(load_spec, spec_path, nofile_limit=nofile)
        else:  # relative paths resolve against the sent file's folder, as `load_spec` does
            base = Path(source).parent if source and os.path.isabs(source) else Path(spec_path).parent
            read = functools.partial(parse_spec, text, source=where, base_dir=base, nofile_limit=nofile)
        try:
            return await asyncio.wait_for(asyncio.to_thread(read), RELOAD_TIMEOUT)
        except TimeoutError:
            raise SpecError([f"{where}: not read within {RELOAD_TIMEOUT:g}s; "
                             "the running spec stays in force"]) from None

    async def reload_spec() -> dict:
        """Re-read the spec file and take it; one reload at a time."""
        async with reload_lock:
            return sup.reload_spec(await read_spec())

    async def plan_reload(text: bytes | None = None, source: str | None = None) -> dict:
        """The dry run: what `reload_spec` would do with the spec file now (or with `text`),
        decided by the same function, and nothing done."""
        async with reload_lock:
            answer = sup.reload_dry_run(await read_spec(text, source))
        answer["spec"] = spec_path if text is None else (source or "<the spec sent>")
        answer["reload_reads"] = spec_path
        return answer

    try:
        credentials = read_token(spec)
        tls = tls_context(spec)
        os.makedirs(spec.paths.state_dir, exist_ok=True)
        audit = AuditLog(os.path.join(spec.paths.state_dir, "audit.log"))
    except (OSError, ValueError) as exc:
        print(f"ultrascaled: {exc}", file=sys.stderr)
        return 2
    alerts = sup.alerts
    settings = Settings.from_spec(spec, credentials)
    history = make_history(spec, sup)
    app = build_app(sup, settings, reload_spec, alerts, audit, dashboard=spec.dashboard.enabled,
                    history=history, plan_reload=plan_reload)
    stop = asyncio.Event()
    detach = False
    # The app's startup starts the fleet and the loops; its cleanup stops them in reverse order.
    app.cleanup_ctx.extend([closing(audit), closing_alerts(alerts), fleet_ctx(sup, spec, alerts, lambda: detach),
                            systemd_ctx(sup, events)])
    if history is not None:
        app.cleanup_ctx.append(history_ctx(sup, spec, history))
    events.emit("daemon.starting", spec=spec.source, pid=os.getpid(), api=f"{spec.api.host}:{spec.api.port}",
                tls=tls is not None)
    loop = asyncio.get_running_loop()
    hup_pending = False

    async def hup_reload() -> None:
        nonlocal hup_pending
        while hup_pending:  # a storm of SIGHUPs is one reload (or two: one may arrive mid-read)
            hup_pending = False
            try:
                result = await reload_spec()
                log.info("spec.reload_done", **result)
            except SpecError as exc:
                events.emit("spec.refused", level="error", errors=exc.errors)
            except Exception as exc:  # the running spec stays in force whatever went wrong
                events.emit("spec.refused", level="error", errors=[str(exc)])

    hup_task: asyncio.Task | None = None

    def on_hup() -> None:
        nonlocal hup_pending, hup_task
        hup_pending = True
        if hup_task is None or hup_task.done():
            hup_task = loop.create_task(hup_reload(), name="sighup-reload")

    def on_quit() -> None:  # leave the fleet running for the next daemon to adopt (upgrades)
        nonlocal detach
        detach = True
        stop.set()

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGQUIT, on_quit)
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    api = ApiServer(app, settings, tls)
    try:
        await api.start()
    except FleetLocked as exc:
        print(f"ultrascaled: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"ultrascaled: cannot serve the API on {spec.api.host}:{spec.api.port}: {exc.strerror or exc}",
              file=sys.stderr)
        sup.lock.release()
        return 1
    except StartFailed:
        return 1  # the fleet said why in its daemon.start_failed event

    await stop.wait()
    await api.close()
    return 0


class StartFailed(Exception):
    """The fleet could not start (its daemon.start_failed event says why)."""


# ---- the app's cleanup contexts: what runs beside the API, started and stopped with it -------

def closing(resource):
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        yield
        resource.close()
    return ctx


def closing_alerts(alerts):
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        yield
        await alerts.close(drain=2.0)  # after the fleet stopped: its last alerts still go out
    return ctx


def fleet_ctx(sup: Supervisor, spec: Spec, alerts, detaching: Callable[[], bool]):
    """Adopt or start the fleet and its loops; at exit drain and stop it, or (SIGQUIT) leave it
    running for the next daemon."""
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        try:
            await sup.start()
        except FleetLocked:
            raise
        except Exception as exc:
            sup.events.emit("daemon.start_failed", level="error", error=f"{type(exc).__name__}: {exc}")
            await sup.shutdown(timeout=10)
            raise StartFailed from exc
        sup.start_guarded("alerts", lambda: alerts.run(beat=lambda: sup.guard.beat("alerts")),
                          interval=spec.alerts.evaluation_interval)
        # The autoscaler runs even when autoscale.enabled is false (it then decides nothing), so
        # that a reload can turn it on.
        sup.start_guarded("autoscaler", lambda: sup.autoscaler.run(beat=lambda: sup.guard.beat("autoscaler")),
                          interval=sup.autoscaler.BEAT)
        yield
        if detaching():
            await sup.detach()
        else:
            await sup.shutdown()
    return ctx


def history_ctx(sup: Supervisor, spec: Spec, history):
    """The dashboard's history loop, guarded like the others (the fleet's stop ends it)."""
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        beat = lambda: sup.guard.beat("dashboard-history")  # noqa: E731
        sup.start_guarded("dashboard-history", lambda: history.run(beat=beat),
                          interval=spec.dashboard.sample_interval)
        yield
    return ctx


def release_startup_memory() -> None:
    """Once the fleet serves: what start-up allocated and dropped (the spec's parse and checks,
    the boot of every instance) goes back to the system; glibc keeps freed heap otherwise
    (measured: a few MiB of an idle daemon's RSS, docs/benchmarks.md "The daemon's idle cost")."""
    import gc
    gc.collect()
    try:
        import ctypes
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):   # not glibc
        pass


def systemd_ctx(sup: Supervisor, events: EventLog):
    """READY=1 once the fleet serves; WATCHDOG=1 only while every loop of the daemon is alive
    and on time (a dead or stalled one stops the pings, and systemd restarts the daemon, which
    adopts the fleet); STOPPING=1 first thing at stop."""
    async def announce_ready() -> None:
        await sup.ready_event.wait()
        sdnotify.notify(f"READY=1\nSTATUS=serving {sup.count} instances")
        await asyncio.sleep(2.0)   # the first samples and probes settled
        release_startup_memory()

    async def watchdog(interval: float) -> None:
        silent = False
        while True:
            problems = sup.guard.problems()
            if not problems:
                sdnotify.notify("WATCHDOG=1")
            elif not silent:
                events.emit("daemon.watchdog_withheld", level="error", problems=problems)
            silent = bool(problems)
            await asyncio.sleep(interval)

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        ready = asyncio.create_task(announce_ready(), name="sd-ready")
        interval = sdnotify.watchdog_interval()
        if interval:
            sup.start_guarded("sd-watchdog", lambda: watchdog(interval))
        yield
        sdnotify.notify("STOPPING=1")
        ready.cancel()
    return ctx


def raise_nofile(want: int = 65536) -> int:
    """Raise the soft open-files limit towards the hard one (nginx and gunicorn inherit it)."""
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

    def report(title: str, errors: list[str]) -> int:
        # A hostile file's keys may hold terminal escapes: print them escaped.
        print(f"ultrascaled: {title}:", file=sys.stderr)
        for e in errors:
            print("  " + "".join(c if c.isprintable() else ascii(c)[1:-1] for c in e), file=sys.stderr)
        return 2

    try:
        spec = load_spec(args.spec, nofile_limit=nofile)
    except SpecError as exc:
        return report(f"invalid spec {args.spec}", exc.errors)
    if args.check:
        warnings = host_warnings(spec)
        if warnings:
            report(f"warnings for spec {args.spec} (not errors)", warnings)
        running = fleetlock.name_holder(spec.name)
        if running:   # a spec edit checked before a reload: against the fleet that runs it
            print(f"ultrascaled: fleet {spec.name!r} runs on this host (ultrascaled pid {running}): "
                  "checking against the running fleet (its name, its state folder and the ports it "
                  "holds are its own); `ultrascalectl diff` shows what a reload would change",
                  file=sys.stderr)
            held = fleetlock.check_running(spec.name, spec.paths.state_dir, running)
        else:
            held = fleetlock.check(spec.name, spec.paths.state_dir)
        problems = host_problems(spec, nofile_limit=nofile) + held + port_problems(spec, running)
        if problems:
            return report(f"spec {args.spec} is valid, but this host cannot run it", problems)
        print(json.dumps(shown_spec(spec), indent=2))
        return 0
    return asyncio.run(serve(args.spec, spec, nofile))


if __name__ == "__main__":
    sys.exit(main())
