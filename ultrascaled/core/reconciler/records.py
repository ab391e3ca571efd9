"""The reconciler's records (one per port) and the messages its loop folds: observations and
changes of what is wanted. Only the loop writes a record."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ultrascaled.core.plan import InstanceView, SuccessorView, WorkerRecycle
from ultrascaled.core.seams import Handle, ProbeResult, ProcMem
from ultrascaled.core.states import State
from ultrascaled.spec import Spec

S = State


@dataclass
class Successor:
    """A replacement master booting on the same socket while the instance's master serves."""
    handle: Any
    since: float
    release: str | None
    fingerprint: str
    probe_port: int | None
    ready: bool = False
    probing: bool = False
    next_probe: float = 0.0
    kill_sent: bool = False
    last_probe: str = ""
    log_offset: int = 0                 # the log's size when it was started: what it wrote lies after
    http_500s: int = 0
    boot_error: str = ""

    def view(self) -> SuccessorView:
        return SuccessorView(self.since, self.ready, self.probing, self.next_probe, self.kill_sent, self.last_probe,
                             self.http_500s, self.boot_error)


@dataclass
class Instance:
    """One port's record. Written only by the reconciler's loop."""
    index: int
    port: int
    state: State = S.STOPPED
    since: float = 0.0
    since_wall: float = 0.0
    handle: Handle | None = None
    started_wall: float | None = None
    restarts: int = 0
    crashes: tuple[float, ...] = ()     # crashes after serving, within the window
    start_failures: int = 0             # failures to become ready, in a row
    daemon_failures: int = 0            # spawns that failed on the daemon's side, in a row
    last_exit: str | None = None
    reason: str = ""
    next_start: float = 0.0
    restart_requested: bool = False
    group_alive: bool = False
    left_upstream_at: float | None = None
    stop_sent_at: float | None = None
    kill_sent: bool = False
    kill_reason: str = ""
    health_failures: int = 0
    probing: bool = False
    next_probe: float = 0.0
    last_probe: str = ""
    adopted: bool = False
    fingerprint: str = ""
    master_mem: ProcMem | None = None
    workers: list[ProcMem] = field(default_factory=list)
    sampled_at: float = 0.0               # when master_mem/workers were taken (the autoscaler's time base)
    recycles: dict[int, float] = field(default_factory=dict)   # worker pid -> SIGKILL deadline
    recycle_history: tuple[float, ...] = ()                     # recent watchdog recycles (kept across a replacement)
    recycle_held: str = ""              # why the watchdog holds its recycles ("" = it does not)
    release: str | None = None          # the release its current (or last) start runs; None: app.directory
    probe_port: int | None = None       # the master's private probe socket (None: probe the public port)
    handoff: bool = False               # the daemon holds its socket: restarts replace the master in place
    successor: Successor | None = None
    replace_failures: int = 0           # replacements in a row that never got ready
    replace_retry_at: float = 0.0
    replace_failed: bool = False        # the last replacement failed to start ...
    failed_release: str | None = None   # ... on this release (deploys read it)
    retiring: dict[int, tuple[Any, float]] = field(default_factory=dict)  # old master pid -> (handle, deadline)
    hold_upstream: bool = False         # see plan.InstanceView.hold_upstream
    log_offset: int = 0                 # the log's size when the current master was started
    http_500s: int = 0                  # see plan.InstanceView
    boot_error: str = ""
    stop_unserved: bool = False         # see plan.InstanceView

    def view(self) -> InstanceView:
        return InstanceView(self.port, self.state, self.since, self.next_start, self.restart_requested,
                            self.group_alive, self.left_upstream_at, self.stop_sent_at, self.kill_sent,
                            self.probing, self.next_probe, self.health_failures, self.last_probe,
                            tuple(WorkerRecycle(p, d) for p, d in self.recycles.items()),
                            frozenset(w.pid for w in self.workers), self.handoff,
                            self.successor.view() if self.successor else None, self.replace_retry_at,
                            tuple(WorkerRecycle(p, d) for p, (_, d) in self.retiring.items()), self.hold_upstream,
                            self.http_500s, self.boot_error, self.stop_unserved)

    @property
    def pid(self) -> int | None:
        return self.handle.pid if self.handle else None

    @property
    def rss(self) -> int:
        return (self.master_mem.rss if self.master_mem else 0) + sum(w.rss for w in self.workers)


# ---- messages: what observers tell the loop --------------------------------------------------

@dataclass(frozen=True)
class Exited:
    port: int
    handle: Any
    returncode: int | None


@dataclass(frozen=True)
class Probed:
    port: int
    handle: Any
    result: ProbeResult


@dataclass(frozen=True)
class GroupGone:
    port: int
    pgid: int


@dataclass(frozen=True)
class Sampled:
    port: int
    handle: Any
    master: ProcMem | None
    workers: tuple[ProcMem, ...]
    log_size: int = 0


@dataclass(frozen=True)
class UpstreamDone:
    servers: frozenset[int]
    ok: bool
    detail: str
    temporary: bool = True


@dataclass(frozen=True)
class SamplesDone:          # a round of samples is in: judge memory
    pass


Message = Exited | Probed | GroupGone | Sampled | SamplesDone | UpstreamDone


# ---- messages: what is wanted (the supervisor and the deploy loop tell the loop) ------------------

@dataclass(frozen=True)
class Scale:
    """A fresh count: the operator's, the autoscaler's, or the one state.json kept."""
    count: int


@dataclass(frozen=True)
class Restart:
    """Restart these ports, one at a time, each health-gated (an operator's, a deploy's). An
    instance given up on (FATAL, BACKOFF, a replacement that failed) gets a fresh count."""
    ports: tuple[int, ...]


@dataclass(frozen=True)
class Reload:
    """A reload's decision (core/reload_plan.py: the new, validated spec, the count it runs at,
    the ports to restart, whether nginx takes new settings); the fold applies it and answers
    with its diff."""
    decision: Any

    @property
    def spec(self) -> Spec:
        return self.decision.spec

    @property
    def count(self) -> int:
        return self.decision.count


@dataclass(frozen=True)
class Releases:
    """What each port starts with: the deploy's assignment (`core.rollout.desired_release` of
    this rollout, or None, and the current release)."""
    rollout: Any
    current: str | None


@dataclass(frozen=True)
class Shutdown:
    """Stop everything: leave the upstream, drain and stop every instance."""


Wanted = Scale | Restart | Reload | Releases | Shutdown

