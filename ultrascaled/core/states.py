"""Instance states and the moves allowed between them, written as data.

    STOPPED ──spawn──► STARTING ──health 200──► RUNNING ──leave upstream──► DRAINING
       ▲                 │  │                     │                            │
       │   exit/not      │  │ app cannot load     │ exit (crash after serving: │ drained
       │   ready in time ▼  ▼                     ▼  backoff, never FATAL)     ▼
       │             BACKOFF ──K start──► FATAL  BACKOFF                   STOPPING ──exit──► STOPPED
       │                │  ▲   failures     │  ▲
       │                └──┘ (wait, then    │  └─ operator restart, port busy / fds short
       │                      spawn again)  └──── operator restart / any spec reload ──► STARTING
       └──────────────────────────────── STOPPING (from any live state on shutdown)

`Reconciler.change_state` is the one function that performs a move.
"""
from __future__ import annotations

import enum


class State(str, enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    DRAINING = "draining"
    STOPPING = "stopping"
    BACKOFF = "backoff"
    FATAL = "fatal"

    def __str__(self) -> str:
        return self.value


S = State
TRANSITIONS: dict[State, frozenset[State]] = {
    S.STOPPED: frozenset({S.STARTING, S.BACKOFF, S.FATAL}),
    S.STARTING: frozenset({S.RUNNING, S.BACKOFF, S.FATAL, S.STOPPING, S.STOPPED}),
    S.RUNNING: frozenset({S.DRAINING, S.BACKOFF, S.STOPPING, S.STOPPED}),
    S.DRAINING: frozenset({S.STOPPING, S.BACKOFF, S.STOPPED, S.RUNNING}),
    S.STOPPING: frozenset({S.STOPPED}),
    S.BACKOFF: frozenset({S.STARTING, S.FATAL, S.STOPPED}),
    S.FATAL: frozenset({S.STARTING, S.BACKOFF, S.STOPPED}),
}

# States in which a gunicorn master of ours is (or may be) alive.
LIVE = frozenset({S.STARTING, S.RUNNING, S.DRAINING, S.STOPPING})


class TransitionError(RuntimeError):
    pass


def check_transition(old: State, new: State) -> None:
    if new not in TRANSITIONS[old]:
        raise TransitionError(f"{old} -> {new} is not an allowed move")
