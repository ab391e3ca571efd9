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
