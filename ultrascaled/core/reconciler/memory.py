"""The reconciler's memory watchdog: sampling every master and worker, recycling what stays over its
limit (the decision is `core.memwatch`), the fleet budget, and log rotation by size."""
from __future__ import annotations

import signal
from typing import Any

from ultrascaled.core import memwatch
from ultrascaled.core.reconciler.records import (Instance, Sampled,
                                                 SamplesDone)
from ultrascaled.core.seams import ProcMem
from ultrascaled.core.states import State
from ultrascaled.spec import MB

S = State


class MemoryWatch:
    """Part of `Reconciler` (core/reconciler/loop.py): the same loop, the same records."""

    def _sampled(self, s: Sampled) -> None:
        inst = self.instances.get(s.port)
        if inst is None or inst.handle is not s.handle:
            return
        inst.master_mem, inst.workers = s.master, list(s.workers)
        inst.sampled_at = self.clock.now()
        if inst.recycles:   # the plan watches recycled workers: which are still alive matters to it
            self._dirty = True
            alive = {w.pid for w in s.workers}
            for pid in [p for p in inst.recycles if p not in alive]:
                del inst.recycles[pid]
        if s.log_size >= self.spec.logs.max_bytes:
            self._rotate_log(inst)

    def check_memory(self) -> None:
        """After a round of samples: the memory watchdog's decision, and the fleet budget."""
        mem = self.spec.memory
        samples = []
        for inst in self.instances.values():
            if inst.state is not S.RUNNING or inst.handle is None:
                continue
            for role, items in (("master", [inst.master_mem] if inst.master_mem else []), ("worker", inst.workers)):
                samples += [memwatch.MemSample(inst.port, m.pid, role, _metric(m, mem.metric)) for m in items]
        recycling = frozenset(p for i in self.instances.values() for p in i.recycles)
        self.streaks, due = memwatch.decide(self.streaks, samples, mem.worker_limit_mb * MB, mem.samples_over,
                                            recycling)
        for r in due:
            self._recycle(r)
        limit = mem.worker_limit_mb * MB
        for inst in self.instances.values():    # a held instance whose processes are all under the limit again
            if inst.recycle_held and inst.handle is not None and inst.state is S.RUNNING and not any(
                    _metric(m, mem.metric) > limit for m in ([inst.master_mem] if inst.master_mem else []) + inst.workers):
                inst.recycle_held = ""
                self._dirty = True
                self.alerts.resolve("memory_recycle_loop", f"instance {inst.port}: every process is under "
                                    f"memory.worker_limit_mb ({mem.worker_limit_mb} MiB) again", port=inst.port)
        total = sum(i.rss for i in self.instances.values())
        budget = mem.fleet_budget_mb * MB
        crossed = memwatch.budget_crossed(total, budget, self.over_budget)
        if crossed is not None:
            self.over_budget = crossed
            if crossed:
                self.alerts.fire("memory_budget", f"fleet memory {total / MB:.0f} MiB is over memory."
                                 f"fleet_budget_mb {mem.fleet_budget_mb} MiB")
            else:
                self.alerts.resolve("memory_budget", f"fleet memory {total / MB:.0f} MiB is back under "
                                    f"{mem.fleet_budget_mb} MiB")

    def smallest_process(self, metric: str) -> int | None:
        """The smallest master or worker of the running instances, in bytes of `metric`, as
        last sampled: what a fresh process of this app needs at least (reload_plan.decide)."""
        sizes = [_metric(m, metric) for i in self.instances.values() if i.state is S.RUNNING
                 for m in ([i.master_mem] if i.master_mem else []) + i.workers]
        return min(sizes) if sizes else None

    def _recycle(self, r: memwatch.Recycle) -> None:
        inst = self.instances.get(r.port)
        if inst is None or inst.handle is None:
            return
        policy = self.policy()
        history, storm = memwatch.recycle_storm(inst.recycle_history, self.clock.now(), policy.fatal_crashes,
                                                policy.fatal_window)
        fields = dict(port=r.port, pid=r.pid, role=r.role, value_bytes=r.value, limit_bytes=r.limit,
                      metric=self.spec.memory.metric, samples=r.samples)
        if storm:  # hold: another recycle would only start another worker over the limit
            what = "master" if r.role == "master" or r.pid == inst.pid else "worker"
            msg = (f"instance {r.port}: {len(history) - 1} recycles within {policy.fatal_window:g}s, each fresh "
                   f"{what} crosses memory.worker_limit_mb ({r.limit // MB} MiB, measured {r.value // MB} MiB); "
                   "recycling is held until that stops (raise the limit, or fix the leak)")
            if inst.recycle_held != msg:
                if not inst.recycle_held:
                    self.events.emit("watchdog.held", level="error", **fields)
                inst.recycle_held = msg
                self._dirty = True
                self.alerts.fire("memory_recycle_loop", msg, port=r.port)
            return
        inst.recycle_history = history
        by_port = self.counters["watchdog_recycles"]
        by_port[r.port] = by_port.get(r.port, 0) + 1
        self._dirty = True
        if r.role == "master" or r.pid == inst.pid:
            inst.restart_requested = True
            self.events.emit("watchdog.recycled", level="warning", action="graceful restart", **fields)
        elif self.runner.signal_worker(r.pid, signal.SIGTERM):
            inst.recycles[r.pid] = self.clock.now() + self.spec.gunicorn.graceful_timeout + 5
            self.events.emit("watchdog.recycled", level="warning", action="SIGTERM to worker", **fields)

    def sample_delay(self, autoscaling: bool = False) -> float:
        """Seconds until the next round of samples (core.memwatch.sample_delay): relaxed while
        every process of the round just taken was far under its limit. Judged on that round's
        own figures, not on the records: those are folded by the loop later, and a round that saw
        a process cross must bring the next one at the base interval."""
        mem = self.spec.memory
        largest, total = getattr(self, "_round", (None, 0))
        pinned = autoscaling or bool(self.streaks) or any(i.recycles for i in self.instances.values())
        return memwatch.sample_delay(largest, mem.worker_limit_mb * MB, total, mem.fleet_budget_mb * MB,
                                     base=mem.sample_interval,
                                     relaxed=memwatch.relaxed_interval(mem.sample_interval, mem.relaxed_interval),
                                     below=mem.relaxed_below, pinned=pinned)

    def sample_all(self) -> None:
        """One round of memory samples (the sampler task calls this, then sleeps sample_delay()).
        On the loop: a round of /proc reads takes ~1 ms per instance, and a hop to a thread cost
        more idle CPU than it saved (measured: 1.0 vs 1.2 % with 8 instances)."""
        now = self.clock.now()
        logs = now >= self._next_log_check
        if logs:  # log sizes every 5 samples, at most every 10 s: rotation needs no more
            self._next_log_check = now + min(10.0, 5 * self.spec.memory.sample_interval)
        metric = self.spec.memory.metric
        largest: int | None = 0
        total = 0
        for port, inst in list(self.instances.items()):
            if inst.handle is None:
                continue
            master, workers = self._sample_one(port, inst.handle, logs)
            if master is None:
                if inst.state is S.RUNNING:
                    largest = None          # a running master not read: no relaxing on a guess
                continue
            for m in [master, *workers]:
                total += m.rss
                if largest is not None:
                    largest = max(largest, _metric(m, metric))
        self._round = (largest, total)
        self.post(SamplesDone())

    def _sample_one(self, port: int, handle: Any, log: bool = False):
        master, workers = self.runner.sample(handle.pid, self.spec.memory.metric)
        size = self.runner.log_size(str(self.log_path(port))) if log else 0
        self.post(Sampled(port, handle, master, tuple(workers), size))
        return master, workers

    # ---- adoption of an earlier run's processes ---------------------------------------------------

    def _rotate_log(self, inst: Instance) -> None:
        path = str(self.log_path(inst.port))
        try:
            self.runner.rotate_log(path, self.spec.logs.backups)
        except OSError as exc:
            self.events.emit("instance.log_rotate_failed", level="error", port=inst.port, error=str(exc))
            return
        if inst.handle is not None:
            self.runner.signal(inst.handle, signal.SIGUSR1)  # gunicorn reopens its log file
        self.events.emit("instance.log_rotated", port=inst.port, path=path)

    # ---- effects that take time: tasks that end by posting a message ---------------------------------



def _metric(m: ProcMem, metric: str) -> int:
    value = getattr(m, metric, None)
    return value if value is not None else m.rss
