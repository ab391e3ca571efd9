"""Adoption of an earlier run's processes: masters a killed daemon left running (exact marker, this
fleet's ports only) are taken over with their sockets; orphaned workers are killed."""
from __future__ import annotations

import signal

from ultrascaled.core import command, release_layout
from ultrascaled.core.reconciler.records import (Instance)
from ultrascaled.core.reconciler.spares import SPARES_MAX
from ultrascaled.core.states import State
from ultrascaled.spec import Spec

S = State


class Adoption:
    """Part of `Reconciler` (core/reconciler/loop.py): the same loop, the same records."""

    def adopt_leftovers(self) -> list[int]:
        """Adopt masters a killed daemon left running (exact marker, ports of this fleet only);
        kill orphaned workers of dead masters."""
        spec = self.spec
        lo_port, hi_port = spec.instances.base_port, spec.port(spec.instances.max - 1)
        adopted = []
        leftovers = self.runner.find_leftovers(spec.name)
        keep = self._masters_to_keep(leftovers)
        leftovers.sort(key=lambda lo: lo.pid != keep.get(lo.port, lo.pid))   # the one kept comes first
        for lo in leftovers:
            if hi_port < lo.port <= hi_port + SPARES_MAX:   # a spare's marker (docs/spares.md)
                lo = self._spare_leftover(lo)
                if lo is None:
                    continue
            if not lo_port <= lo.port <= hi_port:
                self.events.emit("adopt.ignored", level="warning", pid=lo.pid, port=lo.port,
                                 reason=f"port outside this fleet's range {lo_port}..{hi_port}")
                continue
            if not lo.is_master:
                if not lo.master_alive and self.runner.signal_worker(lo.pid, signal.SIGKILL):
                    self.events.emit("adopt.orphan_killed", level="warning", pid=lo.pid, port=lo.port)
                continue
            if lo.port in self.instances:  # two masters for one port: keep the one chosen above
                self.runner.kill_group(lo.pid, signal.SIGTERM)
                self.events.emit("adopt.duplicate_stopped", level="warning", pid=lo.pid, port=lo.port)
                continue
            handle = self.runner.adopt(lo.pid)
            inst = Instance(index=lo.port - spec.instances.base_port, port=lo.port, adopted=True,
                            since=self.clock.now(), since_wall=self.clock.wall())
            inst.handle = handle
            log_path = str(self.log_path(lo.port))
            _, directory = self.release_for(lo.port)
            inst.release = _release_of(spec, lo.cmdline)
            inst.fingerprint = command.fingerprint(spec, lo.port, log_path, directory)
            sock = self.runner.take_listener(lo.pid, spec.instances.host, lo.port) if lo.port not in self.listeners \
                else None
            if sock is not None:
                self.listeners[lo.port] = sock
                self.gates[lo.port] = None     # as the last run left it: the next publish sets it
                inst.handoff = True
            else:
                self.events.emit("adopt.socket_not_taken", level="warning", pid=lo.pid, port=lo.port,
                                 reason="pidfd_getfd(2) refused or no listening socket found: this instance's "
                                        "next restart leaves the upstream first (docs/deploys.md)")
            if not command.same_command(lo.cmdline, command.gunicorn_argv(spec, lo.port, log_path, directory)):
                inst.restart_requested = True  # spec changed while we were away: roll it
                inst.fingerprint = "adopted-with-other-command"
            inst.started_wall = self.runner.start_time(lo.pid)
            self.instances[lo.port] = inst
            self.change_state(inst, S.STARTING, "adopted from an earlier run", pid=lo.pid)
            inst.next_probe = self.clock.now()
            self._watch(inst, handle)
            self.holding_upstream = True
            adopted.append(lo.port)
        if adopted:
            self.events.emit("adopt.done", masters=sorted(adopted))
        return adopted

    def _masters_to_keep(self, leftovers) -> dict[int, int]:
        """Port -> pid of the master to adopt when a killed daemon left two on one port (it died
        during a replacement): the one still holding the port's listening socket (a replaced
        master closes its copy as soon as it gets SIGTERM), else the oldest (a replacement that
        had not taken over yet)."""
        by_port: dict[int, list[int]] = {}
        for lo in leftovers:
            if lo.is_master:
                by_port.setdefault(lo.port, []).append(lo.pid)
        keep = {}
        for port, pids in by_port.items():
            pids.sort()
            keep[port] = pids[0]
            if len(pids) < 2:
                continue
            holding = []
            for pid in pids:
                sock = self.runner.take_listener(pid, self.spec.instances.host, port)
                if sock is not None:
                    sock.close()
                    holding.append(pid)
            if len(holding) == 1:
                keep[port] = holding[0]
        return keep



def _release_of(spec: Spec, cmdline) -> str | None:
    """The release an adopted master runs, from its `--chdir` (ultrascaled/effects/releases.py)."""
    args = list(cmdline)
    try:
        return release_layout.release_of_directory(spec, args[args.index("--chdir") + 1])
    except (ValueError, IndexError):
        return None
