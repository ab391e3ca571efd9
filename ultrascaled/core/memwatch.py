"""The memory watchdog's decision, pure (not the systemd watchdog, which is `sdnotify`): which process to recycle, after how many samples.

A worker over its limit for K consecutive samples is recycled alone (SIGTERM: it finishes its
in-flight requests and its master forks a fresh one). A master over the limit gets a graceful
rolling restart of its instance. Counts are per pid, so a replacement starts from zero.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MemSample:
    port: int
    pid: int
    role: str          # "master" | "worker"
    value: int         # bytes, in the spec's metric (rss, uss or pss)


@dataclass(frozen=True)
class Recycle:
    port: int
    pid: int
    role: str
    value: int
    limit: int
    samples: int


def decide(streaks: dict[int, int], samples: list[MemSample], limit: int, k: int,
           recycling: frozenset[int] = frozenset()) -> tuple[dict[int, int], list[Recycle]]:
    """Return the new per-pid streaks of over-limit samples and the recycles that are due.

    A pid already being recycled is not recycled again; pids absent from `samples` are dropped.
    """
    new: dict[int, int] = {}
    due: list[Recycle] = []
    for s in samples:
        if s.value <= limit:
            continue
        n = streaks.get(s.pid, 0) + 1
        if n >= k and s.pid not in recycling:
            due.append(Recycle(s.port, s.pid, s.role, s.value, limit, n))
            continue
        new[s.pid] = n
    return new, due


def sample_delay(largest: int | None, limit: int, total: int, budget: int, *, base: float,
                 relaxed: float, below: float, pinned: bool = False) -> float:
    """Seconds until the next round of memory samples: `relaxed` while every process (`largest`,
    the biggest one last sampled) and the fleet (`total`) are under `below` of their limit and
    budget, else `base`. `largest` None (a process not sampled yet) or `pinned` (a recycle in
    flight, or the autoscaler reading the samples' CPU) keeps `base`.

    The watchdog's guarantee holds either way: a process over its limit is sampled again after
    `base`, so it is recycled at its K-th consecutive sample over the limit, and the worst case
    from crossing the limit to the recycle is `relaxed + (K - 1) * base` seconds (it crossed just
    after a relaxed round) instead of `K * base`."""
    if relaxed <= base or pinned or largest is None:
        return base
    if largest < below * limit and total < below * budget:
        return relaxed
    return base


def relaxed_interval(base: float, relaxed: float) -> float:
    """The relaxed interval in force: at most the log-size check's cadence (every 5 samples, at
    most every 10 s: logs rotate as soon as before) and never under the base interval."""
    return max(base, min(relaxed, 10.0, 5 * base))


def worst_reaction(base: float, relaxed: float, k: int) -> float:
    """Worst-case seconds from a process crossing its limit to its recycle (see sample_delay)."""
    return relaxed_interval(base, relaxed) + (k - 1) * base


def budget_crossed(total: int, budget: int, was_over: bool) -> bool | None:
    """True when the fleet has just gone over its budget, False when just back under, else None."""
    over = total > budget
    if over == was_over:
        return None
    return over


def recycle_storm(history: tuple[float, ...], now: float, most: int, window: float) -> tuple[tuple[float, ...], bool]:
    """Recycles of one instance within `window` (with this one), and whether that is a storm:
    `most` or more means every fresh worker crosses the limit (the limit is below what the app
    needs to boot), and recycling it again would only loop."""
    recent = tuple(t for t in history if now - t < window) + (now,)
    return recent, len(recent) > most


# ---- worker types (`processes:` of kind worker; supervise/workers_loop.py samples them) ---------

@dataclass(frozen=True)
class TreeSample:
    """One worker type's process with its whole tree (a Celery parent and its pool children),
    summed: the limit is per tree, since that is what one process of the type costs, what a
    restart frees and what the budget counts (`max` x the limit)."""
    key: tuple[str, int]    # (type name, index)
    pid: int                # the tree's root: the process the daemon started
    value: int              # bytes, the sum of the tree's processes in the spec's metric
    limit: int              # bytes: processes.NAME.memory_limit_mb, else memory.worker_limit_mb
    processes: int = 1      # processes in the tree


@dataclass(frozen=True)
class TreeRecycle:
    key: tuple[str, int]
    pid: int
    value: int
    limit: int
    samples: int


def decide_trees(streaks: dict[int, int], samples: list[TreeSample], k: int,
                 recycling: frozenset[int] = frozenset()) -> tuple[dict[int, int], list[TreeRecycle]]:
    """`decide` for worker types: each tree against its own limit. Counts are per root pid (a
    replacement starts from zero); a pid already being restarted is not asked again; a sample
    at or under its limit ends its streak."""
    new: dict[int, int] = {}
    due: list[TreeRecycle] = []
    for s in samples:
        if s.value <= s.limit:
            continue
        n = streaks.get(s.pid, 0) + 1
        if n >= k and s.pid not in recycling:
            due.append(TreeRecycle(s.key, s.pid, s.value, s.limit, n))
            continue
        new[s.pid] = n
    return new, due


def worker_scale_refusal(name: str, n: int, per_process: int, per_source: str, rest: int,
                         budget: int) -> str | None:
    """Why scaling worker type `name` to `n` would break memory.fleet_budget_mb, or None: `n`
    processes at `per_process` bytes each (its measured average, or its limit when none of it
    runs: `per_source` says which) beside `rest`, what the rest of the fleet measures now (the
    web instances and the other types), all in bytes."""
    need = n * per_process + rest
    if need <= budget:
        return None
    mb = 1024 * 1024
    return (f"{name}={n}: {n} x {per_process / mb:.0f} MiB ({per_source}) + {rest / mb:.0f} MiB "
            f"measured of the rest of the fleet (web instances, other worker types) = "
            f"{need / mb:.0f} MiB exceeds memory.fleet_budget_mb {budget // mb} MiB")
