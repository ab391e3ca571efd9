"""The reconciler's side of nginx: publishing the upstream, the held sockets' gates, nginx's checks and
reconfiguration, and the fleet's port range watched for other programs."""
from __future__ import annotations

from typing import Any

from ultrascaled.core.plan import (UpstreamView, upstream_retry_delay)
from ultrascaled.core.reconciler.records import (UpstreamDone)
from ultrascaled.core.states import State

S = State


class UpstreamSync:
    """Part of `Reconciler` (core/reconciler/loop.py): the same loop, the same records."""

    def _upstream_view(self) -> UpstreamView:
        holding = self.holding_upstream and any(i.adopted and i.state is S.STARTING
                                                for i in self.instances.values())
        if self.holding_upstream and not holding:
            self.holding_upstream = False
        return UpstreamView(self.applied, self.publishing or self.checking_nginx, self.failed_upstream,
                            self.failed_temporary, self.upstream_retry_at, holding)

    # ---- folding observations -------------------------------------------------------------------

    def _upstream_done(self, m: UpstreamDone) -> None:
        self.publishing = False
        now = self.clock.now()
        if m.ok:
            removed = self.applied - m.servers
            self.applied = m.servers
            for p in removed:
                inst = self.instances.get(p)
                if inst and inst.state is S.DRAINING and inst.left_upstream_at is None:
                    inst.left_upstream_at = now
            if self.failed_upstream is not None:
                self.alerts.resolve("upstream_failed", "the upstream is in step again")
            self.failed_upstream, self.upstream_failures = None, 0
            self.events.emit("upstream.applied", servers=sorted(m.servers), detail=m.detail)
        else:
            self.upstream_failures = self.upstream_failures + 1 if self.failed_upstream == m.servers else 1
            self.failed_upstream, self.failed_temporary = m.servers, m.temporary
            retry = upstream_retry_delay(self.upstream_failures, self.policy())
            self.upstream_retry_at = now + retry
            self.upstream_stamp = self._stamp()
            self.events.emit("upstream.failed", level="error", servers=sorted(m.servers), error=m.detail,
                             temporary=m.temporary, retry_in=retry if m.temporary else None)
            if not m.temporary or self.upstream_failures >= 3:
                self.alerts.fire("upstream_failed", f"nginx refused the upstream {sorted(m.servers)}: {m.detail}"
                                 + ("" if m.temporary else "; not retrying until the servers, the spec "
                                    "or nginx's files change"))
        self.upstream_ok, self.upstream_error = m.ok, ("" if m.ok else m.detail)

    def _stamp(self) -> Any:
        stamp = getattr(self.upstream, "config_stamp", None)
        try:
            return stamp() if stamp else None
        except OSError:
            return None

    # ---- timers outside the plan: nginx checks, a permanent failure's inputs ------------------------

    @property
    def gated(self) -> bool:
        """nginx lists the whole port range; a port is in the upstream when its gate is open."""
        return bool(getattr(self.upstream, "gated", False))

    def _set_gates(self, open_ports: frozenset[int] | None, closing: bool) -> None:
        """Close (closing=True) the gates of held ports not in `open_ports`, or open those in it;
        `open_ports` None: open every gate (nginx lists only the ready ports itself)."""
        for port, sock in list(self.listeners.items()):
            want = open_ports is None or port in open_ports
            if want == closing or self.gates.get(port, True) == want:
                continue
            try:
                self.runner.set_gate(sock, want)
                self.gates[port] = want
            except OSError as exc:
                self.events.emit("upstream.gate_failed", level="error", port=port, open=want,
                                 error=exc.strerror or str(exc))

    async def _publish(self, servers: frozenset[int]) -> None:
        host = self.spec.instances.host
        gated = self.gated
        self._set_gates(servers if gated else None, closing=True)   # leaving ones first: no new connection
        try:
            r = await self.upstream.apply([(host, p) for p in sorted(servers)])
            ok, detail = r[0], r[1]
            temporary = r[2] if len(r) > 2 else True
        except Exception as exc:  # noqa: BLE001 - an apply that raises is a temporary failure
            ok, detail, temporary = False, f"{type(exc).__name__}: {exc}", True
        if ok:
            self._set_gates(servers if gated else None, closing=False)   # joining ones once nginx lists them
        self.post(UpstreamDone(servers, ok, detail, temporary))

    async def _reconfigure_nginx(self) -> None:
        try:
            ok, detail = await self.upstream.reconfigure(self.spec)
        except Exception as exc:  # noqa: BLE001
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        self.events.emit("nginx.reconfigured" if ok else "nginx.reconfigure_failed",
                         level="info" if ok else "error", detail=detail)
        if not ok:
            self.alerts.fire("nginx_reconfigure_failed", f"nginx settings not applied: {detail}")
            self.publishing = False
            return
        self.alerts.resolve("nginx_reconfigure_failed")
        # The same servers again under the new settings: `upstream_servers` or `instances.max`
        # may have changed what the file lists (the whole range, or only the ready ones) and
        # whether the gates decide; the loop's UpstreamDone ends the publishing.
        await self._publish(self.applied)

    def _check_range(self) -> None:
        """With a static upstream nginx sends a share of the traffic to every port of the range:
        one that another program listens on while this fleet runs nothing there (a second fleet
        on overlapping ports) is taken out of the upstream, with an event and an alert, until it
        is free again."""
        spec = self.spec
        taken: dict[int, str] = {}
        for i in range(spec.instances.max):
            port = spec.port(i)
            if port in self.listeners or port in self.instances:
                continue
            try:
                holder = self.runner.port_in_use(spec.instances.host, port)
            except OSError:
                continue
            if holder is not None:
                taken[port] = f"pid {holder.pid} ({holder.name})" if holder.pid else holder.name
        for port in sorted(taken.keys() - self.taken_ports):
            self.events.emit("upstream.port_taken", level="warning", port=port, holder=taken[port])
            self.alerts.fire("port_taken", f"port {port} of the fleet's range is held by {taken[port]}: "
                                           f"taken out of the nginx upstream", port=port)
        for port in sorted(self.taken_ports - taken.keys()):
            self.events.emit("upstream.port_free", port=port)
            self.alerts.resolve("port_taken", f"port {port} is free again", port=port)
        if taken.keys() != self.taken_ports:
            self.taken_ports = frozenset(taken)
            self.republish = True

    async def _republish(self) -> None:
        """The same servers again, with the upstream's range changed (ports taken or freed)."""
        self.republish = False
        self.upstream.excluded = self.taken_ports
        try:
            await self._publish(self.applied)
        finally:
            self.checking_nginx = False

    async def _check_nginx(self) -> None:
        try:
            await self.upstream.check()
        finally:
            self.checking_nginx = False
