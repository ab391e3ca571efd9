"""Where ready instances are published: nginx (managed or system) or nowhere (mode off).

The supervisor calls `apply(servers)` once per reconcile pass with the ports that are ready;
the nginx controller writes, checks, reloads and rolls back, and returns only when the reload
has taken effect, so a removed instance can then be stopped without a request reaching it.
"""
from __future__ import annotations


from ultrascaled.core.control import EventSource
from ultrascaled.core.seams import Upstream  # noqa: F401  (the protocol NoUpstream and NginxUpstream meet)
from ultrascaled.effects.nginx_control import NginxController
from ultrascaled.spec import Spec


class NoUpstream:
    excluded: frozenset[int] = frozenset()
    """nginx.mode = off: instances are reached on their own ports."""

    async def start(self) -> None:
        pass

    async def apply(self, servers):
        return True, "no upstream (nginx.mode is off)", True

    def config_stamp(self):
        return None

    async def check(self) -> None:
        pass

    async def reconfigure(self, spec):
        return True, "nginx.mode is off"

    async def stop(self) -> None:
        pass

    def status(self):
        return {"mode": "off"}


class NginxUpstream:
    def __init__(self, spec: Spec, events: EventSource):
        self.events = events
        self.ctl = NginxController(spec.nginx)
        self.excluded: frozenset[int] = frozenset()   # ports another program holds (the reconciler's range check)
        self._range(spec)

    def _range(self, spec: Spec) -> None:
        # nginx.upstream_servers: range -- nginx lists every port the fleet may use and the
        # reconciler opens and closes each port's gate (ultrascaled/effects/procs.py, set_gate); the file
        # changes only when the range does, or when no instance (or the first one) is ready.
        self.gated = spec.nginx.upstream_servers == "range"
        self.range = [(spec.instances.host, spec.port(i)) for i in range(spec.instances.max)]

    async def start(self) -> None:
        # None keeps the upstream file of an earlier run, so adopted instances keep serving.
        r = await self.ctl.start(None)
        if not r.ok:
            self.events.emit("nginx.start_failed", level="error", code=r.code, error=r.error)
            raise RuntimeError(f"nginx did not start ({r.code}): {r.error}")
        self.events.emit("nginx.started", log=False, mode=self.ctl.settings.mode, pid=self.ctl.pid,
                         adopted=self.ctl.adopted, restarted=r.restarted)

    async def apply(self, servers):
        if self.gated and servers:
            others = {(h, p) for h, p in self.range if p in self.excluded}   # held by another program
            servers = sorted((set(self.range) - others) | set(servers))
        r = await self.ctl.apply(servers)
        if r.ok and r.reloaded:
            self.events.emit("nginx.reloaded", log=False, upstreams=len(servers), seconds=round(r.duration, 3))
        elif not r.ok:
            self.events.emit("nginx.reload_failed", level="error", log=False, code=r.code, error=r.error,
                             rolled_back=True)
        return r.ok, (r.code if r.ok else f"{r.code}: {r.error}"), r.retryable

    def config_stamp(self):
        """Modification times of nginx's configuration files: a change there may mend a
        configuration nginx rejected, so a refused upstream is tried again."""
        return self.ctl.config_stamp()

    async def check(self) -> None:
        r = await self.ctl.ensure_running()
        if r.restarted:
            self.events.emit("nginx.restarted", level="warning", pid=self.ctl.pid, ok=r.ok, error=r.error)

    async def reconfigure(self, spec: Spec):
        r = await self.ctl.reconfigure(spec.nginx)
        if r.ok:
            self._range(spec)
        return r.ok, (r.code if r.ok else f"{r.code}: {r.error}")

    async def stop(self) -> None:
        await self.ctl.stop()

    def status(self):
        return self.ctl.status()

    async def reopen_logs(self) -> bool:
        """nginx reopens its logs (the traffic log was rotated)."""
        return await self.ctl.reopen_logs()
