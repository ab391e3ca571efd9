"""The event log: a bounded ring buffer of what the daemon did, mirrored to the structured log.

Every event has a sequence number, a wall-clock time, a dotted name (`instance.state`,
`nginx.reloaded`, `watchdog.recycled`, ...) and flat fields. Followers (the SSE stream,
`ultrascalectl events -f`) get each new event through an asyncio queue; one that falls behind
is marked `overflowed` instead of blocking the daemon or being dropped silently.
"""
from __future__ import annotations

import asyncio
import collections
import time
from typing import Any

import structlog


class EventLog:
    def __init__(self, size: int = 2000, clock=time.time, logger=None):
        self._events: collections.deque[dict[str, Any]] = collections.deque(maxlen=size)
        self._seq = 0
        self._clock = clock
        self._followers: set[asyncio.Queue] = set()
        self.log = logger or structlog.get_logger("ultrascaled")
        self.log_failures = 0      # writes of the structured log that failed (disk full, stderr closed)

    def emit(self, event: str, level: str = "info", log: bool = True, **fields: Any) -> dict[str, Any]:
        """Record an event; `log=False` when the acting component has logged it already."""
        self._seq += 1
        record = {"seq": self._seq, "time": round(self._clock(), 3), "event": event,
                  "level": level, **fields}
        self._events.append(record)
        if log:
            try:
                getattr(self.log, level)(event, **fields)
            except (OSError, ValueError):  # stderr full, gone or closed: the event is still kept
                self.log_failures += 1
        for q in self._followers:
            try:
                q.put_nowait(record)
            except asyncio.QueueFull:  # a follower that does not keep up: it catches up from the ring
                q.overflowed = True
        return record

    def since(self, seq: int = 0, limit: int | None = None) -> list[dict]:
        out = [e for e in self._events if e["seq"] > seq]
        return out[-limit:] if limit else out

    @property
    def last_seq(self) -> int:
        return self._seq

    def follow(self, maxsize: int = 1000) -> "Follower":
        q = Follower(maxsize=maxsize)
        self._followers.add(q)
        return q

    def unfollow(self, q: asyncio.Queue) -> None:
        self._followers.discard(q)


class Follower(asyncio.Queue):
    """A follower's queue. When it is full, new events are not queued and `overflowed` is set:
    the follower then reads what it missed from the ring buffer (`since`), and learns of what
    the ring no longer holds from the gap in the sequence numbers."""

    overflowed = False
