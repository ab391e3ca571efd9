"""Restart by replacement: a second master on the same held socket, then the first one retires;
a replacement that never gets ready is retried with backoff and given up with an alert."""
from __future__ import annotations

import signal
from typing import Any

from ultrascaled.core import command
from ultrascaled.core.plan import (APP_LOAD_ERROR, WORKER_BOOT_ERROR, backoff_delay, describe_exit)
from ultrascaled.core.reconciler.records import (Exited, Instance, Successor)
from ultrascaled.core.seams import is_transient
from ultrascaled.core.states import State

S = State


class Replacement:
    """Part of `Reconciler` (core/reconciler/loop.py): the same loop, the same records."""

    def _replace(self, inst: Instance, reason: str) -> None:
        """Start a successor master on the socket the instance's master serves from. Capacity
        goes N+1 -> N; nginx is not touched; connections queued on the socket are accepted by
        whichever master's workers are free."""
        spec = self.spec
        sock = self.listeners[inst.port]
        log_path = str(self.log_path(inst.port))
        metrics_dir = str(self.state_dir / "metrics" / str(inst.port))
        try:
            probe = self.runner.listen("::1" if ":" in spec.instances.host else "127.0.0.1", 0)
        except OSError as exc:
            return self._replace_failed(inst, f"cannot open a probe socket: {exc.strerror or exc}", transient=True)
        try:
            release, directory = self.release_for(inst.port)
            argv = command.with_binds(command.gunicorn_argv(spec, inst.port, log_path, directory),
                                      [f"fd://{sock.fileno()}", f"fd://{probe.fileno()}"])
            env = command.instance_env(spec, inst.index, inst.port, metrics_dir)
            offset = self._log_offset(log_path)
            handle = self.runner.spawn(argv, env, directory, log_path, (sock.fileno(), probe.fileno()))
            probe_port = probe.getsockname()[1]
        except (OSError, ValueError, TypeError) as exc:
            return self._replace_failed(inst, f"cannot start gunicorn: {exc}", transient=is_transient(exc))
        finally:
            probe.close()
        now = self.clock.now()
        inst.successor = Successor(handle, now, release, command.fingerprint(spec, inst.port, log_path, directory),
                                   probe_port, next_probe=now, log_offset=offset)
        self.events.emit("instance.replacing", port=inst.port, pid=inst.pid, successor_pid=handle.pid,
                         reason=reason, release=release)
        port = inst.port
        self.runner.watch(handle, lambda rc: self.post(Exited(port, handle, rc)))

    def _handover(self, inst: Instance, reason: str) -> None:
        s, old = inst.successor, inst.handle
        now = self.clock.now()
        inst.successor = None
        if old is not None:
            inst.retiring[old.pid] = (old, now + self.policy().stop_timeout)
            self.runner.signal(old, signal.SIGTERM)   # graceful: its workers finish what they answer
            self.runner.forget([w.pid for w in inst.workers])
        inst.handle, inst.probe_port, inst.release, inst.fingerprint = s.handle, s.probe_port, s.release, s.fingerprint
        inst.restarts += 1
        inst.restart_requested = False
        inst.replace_failures, inst.replace_failed = 0, False
        inst.started_wall = self.clock.wall()
        inst.adopted = False
        inst.health_failures, inst.last_probe = 0, s.last_probe
        # recycle_history is kept: a master replaced for memory whose successor is over the limit
        # again counts towards the hold (restart.fatal_crashes within fatal_window)
        inst.master_mem, inst.workers, inst.recycles = None, [], {}
        self.alerts.resolve("instance_replace_failed", f"instance {inst.port} was restarted", port=inst.port)
        self.events.emit("instance.replaced", port=inst.port, old_pid=old.pid if old else None, pid=s.handle.pid,
                         boot_seconds=round(now - s.since, 3), release=s.release, reason=reason)
        self._sample_one(inst.port, s.handle)

    def _successor_exited(self, inst: Instance, rc: int | None) -> None:
        s = inst.successor
        quote = "" if s.kill_sent else self._start_error(inst, successor=True)
        inst.successor = None
        self.runner.forget([s.handle.pid])
        self._start_task(f"reap-next-{inst.port}", self._reap(inst.port, s.handle.pgid))
        if s.kill_sent:
            return   # _replace_failed already counted it
        what = describe_exit(rc)
        permanent = rc in (WORKER_BOOT_ERROR, APP_LOAD_ERROR)
        self._replace_failed(inst, f"replacement exited before it was ready ({what})" + quote,
                             permanent=permanent, release=s.release)

    def _replace_failed(self, inst: Instance, reason: str, permanent: bool = False, transient: bool = False,
                        release: Any = ...) -> None:
        """A replacement that did not get ready: the old master serves on. Retried with backoff;
        after restart.fatal_crashes failures in a row (or at once when the app cannot load) the
        restart is given up with an alert, and deploys see the failed release."""
        if release is ...:
            release = inst.successor.release if inst.successor else self.release_for(inst.port)[0]
        now = self.clock.now()
        policy = self.policy()
        if not transient:
            inst.replace_failures += 1
        gave_up = permanent or inst.replace_failures >= policy.fatal_crashes
        delay = max(policy.backoff_initial, backoff_delay(inst.replace_failures + 1, policy))
        inst.replace_retry_at = now + delay
        inst.replace_failed, inst.failed_release = True, release
        inst.reason = reason
        self.events.emit("instance.replace_failed", level="error" if gave_up else "warning", port=inst.port,
                         pid=inst.pid, reason=reason, failures=inst.replace_failures, release=release,
                         gave_up=gave_up, retry_in=None if gave_up else delay)
        if gave_up:
            inst.restart_requested = False
            self.alerts.fire("instance_replace_failed", f"instance {inst.port} could not be restarted: {reason}; "
                             "the running master serves on", port=inst.port)

    def _drop_successor(self, inst: Instance, why: str) -> None:
        s = inst.successor
        inst.successor = None
        if s is not None:
            self.events.emit("instance.replacement_dropped", level="warning", port=inst.port, pid=s.handle.pid,
                             reason=why)
            self.runner.unwatch(s.handle)
            self.runner.kill_group(s.handle.pgid, signal.SIGKILL)
            self._start_task(f"reap-next-{inst.port}", self._reap(inst.port, s.handle.pgid))
