"""Decisions for the worker process types (`processes:` entries of `kind: worker`): pure.

Given the slots (one per process a type runs: its name and 0-based index), the counts wanted
and `now`, `plan` returns the actions that bring them together; `on_exit` and
`on_spawn_error` say where a slot goes when its process exits or cannot be started;
`records_from`, `not_same_process` and `adopted` judge what an earlier daemon recorded of its
live processes (adoption across a restart: only a pid with the recorded start time). Nothing
here reads a clock or touches a process: `ultrascaled/supervise/workers_loop.py` does both.
The states are the web instances' (`core/states.py`), without DRAINING (a worker serves no
upstream):

    (none) ─spawn─► STARTING ─alive start_seconds (and `ready` passed)─► RUNNING ─scale down / shutdown─► STOPPING ─exit─► STOPPED
                      │                               │                        (SIGKILL to the group
                      │ exit: start failure           │ exit: crash             at graceful_timeout)
                      ▼                               ▼
                 BACKOFF ──restart.fatal_crashes──► FATAL (until an operator scales the type)
                      ▲   start failures in a row
                      └── wait (the first restart is immediate, then backoff_initial, doubling,
                          up to backoff_max), then spawn again

A type with a `ready` check stays STARTING until the check passed and start_seconds are over;
the loop runs the check (`Check`) every `ready_interval` from the spawn, and a process that has
not passed it at `ready_timeout` is SIGKILLed (`NotReady`): its exit is a start failure. The
start order between types (`after`, `requires`) is `start_blockers`: a type held back spawns
nothing (what it already runs, adopted from an earlier daemon, is kept).
"""
from __future__ import annotations

import dataclasses
import hashlib
import signal as _signal
from dataclasses import dataclass
from typing import Mapping

from ultrascaled.core.plan import backoff_delay, describe_exit
from ultrascaled.core.states import State

S = State
Key = tuple[str, int]       # (type name, index)


@dataclass(frozen=True)
class WorkerPolicy:
    """One type's timings: its own keys and the fleet's restart.* keys."""
    start_seconds: float = 1.0
    graceful_timeout: float = 30.0
    stop_signal: int = int(_signal.SIGTERM)
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    fatal_crashes: int = 5
    fatal_window: float = 60.0
    ready_check: bool = False           # the type has a `ready` check
    ready_timeout: float = 60.0
    ready_interval: float = 0.5         # READY_INTERVAL


@dataclass(frozen=True)
class Slot:
    """What is known of one process slot; a new value for every change."""
    name: str
    index: int
    state: State = S.STOPPED
    started_at: float | None = None     # when its current process was spawned
    next_start: float = 0.0             # BACKOFF: spawn again at this time
    start_failures: int = 0             # exits before start_seconds (or spawn errors), in a row
    crashes: tuple[float, ...] = ()     # exits after RUNNING, within fatal_window
    restarts: int = 0                   # spawns after the first
    spawns: int = 0
    stop_deadline: float | None = None  # STOPPING: SIGKILL to the group at this time
    killed: bool = False                # SIGKILL sent
    fingerprint: str = ""               # what its process was started with
    folder: str = ""                    # where it was started (a release a deploy must keep)
    reason: str = ""
    checked: bool = False               # its process passed the type's `ready` check
    checking: bool = False              # a check of it is under way
    next_check: float = 0.0             # STARTING: the next check at this time
    check_detail: str = ""              # what the last failed check said
    not_ready: bool = False             # SIGKILLed at ready_timeout: its exit is a start failure

    @property
    def key(self) -> Key:
        return (self.name, self.index)


READY_INTERVAL = 0.5        # seconds between two readiness checks of a starting process
WAITING_REPEAT = 10.0       # a type still waiting to start says so again after this long


# ---- actions -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Spawn:
    key: Key
    reason: str


@dataclass(frozen=True)
class Promote:
    """Alive for start_seconds: RUNNING."""
    key: Key


@dataclass(frozen=True)
class Check:
    """Run the type's `ready` check of this process now."""
    key: Key


@dataclass(frozen=True)
class NotReady:
    """Not ready at ready_timeout: SIGKILL to its process group; the exit is a start failure."""
    key: Key
    detail: str


@dataclass(frozen=True)
class Stop:
    """Send the type's stop_signal; SIGKILL to the group at `deadline`."""
    key: Key
    sig: int
    deadline: float
    reason: str


@dataclass(frozen=True)
class Kill:
    """graceful_timeout is over: SIGKILL to the process group."""
    key: Key


@dataclass(frozen=True)
class Forget:
    """A slot without a process that is no longer wanted (BACKOFF, FATAL, STOPPED)."""
    key: Key


Action = Spawn | Promote | Check | NotReady | Stop | Kill | Forget


def plan(slots: Mapping[Key, Slot], desired: Mapping[str, int], policies: Mapping[str, WorkerPolicy],
         now: float, fingerprints: Mapping[str, str] | None = None,
         restart_before: Mapping[str, float] | None = None,
         held: frozenset[str] | set[str] = frozenset(),
         recycle: Mapping[Key, str] | None = None) -> list[Action]:
    """The actions for this instant. `desired`: type name -> count (a type not in it, e.g.
    removed by a reload or everything at shutdown, is wanted at 0); `fingerprints`: type name ->
    what its processes would be started with now (a live process started otherwise is
    restarted); `restart_before`: type name -> a time its processes started before are restarted
    (`ultrascalectl restart NAME`), as a changed one is; `held`: types that may not start yet
    (`start_blockers`): no process of theirs is spawned, the ones they run are kept; `recycle`:
    slot -> why its live process is to be restarted now (the memory watchdog: stop_signal,
    SIGKILL at graceful_timeout, then a new one), not rolled one at a time."""
    fingerprints = fingerprints or {}
    restart_before = restart_before or {}
    recycle = recycle or {}
    actions: list[Action] = []
    # a changed command, environment or folder (a reload, a deploy) restarts a type's live
    # processes one at a time: the next only once none of that type is stopping, stopped and
    # about to start again, or starting
    rolling = {name for (name, i), s in slots.items()
               if s.state in (S.STARTING, S.STOPPING) or s.state is S.STOPPED and i < desired.get(name, 0)}
    for key in sorted(slots):
        slot = slots[key]
        name, index = key
        policy = policies.get(name, WorkerPolicy())
        wanted = index < desired.get(name, 0)
        changed = name in fingerprints and slot.fingerprint != fingerprints[name]
        asked = name in restart_before and slot.started_at is not None and slot.started_at < restart_before[name]
        stale = changed or asked
        if slot.state is S.STOPPING:
            if not slot.killed and slot.stop_deadline is not None and now >= slot.stop_deadline:
                actions.append(Kill(key))
        elif slot.state in (S.STARTING, S.RUNNING):
            if not wanted:
                actions.append(Stop(key, policy.stop_signal, now + policy.graceful_timeout, "scaled down"))
            elif key in recycle:
                actions.append(Stop(key, policy.stop_signal, now + policy.graceful_timeout, recycle[key]))
            elif stale and slot.state is S.RUNNING and name not in rolling:
                actions.append(Stop(key, policy.stop_signal, now + policy.graceful_timeout,
                                    "its command, environment or folder changed" if changed else
                                    "restart requested"))
                rolling.add(name)
            elif slot.state is S.STARTING and slot.started_at is not None and not slot.not_ready:
                age = now - slot.started_at
                if policy.ready_check and not slot.checked:
                    if age >= policy.ready_timeout:
                        actions.append(NotReady(key, slot.check_detail or "no check answered"))
                    elif not slot.checking and now >= slot.next_check:
                        actions.append(Check(key))
                elif age >= policy.start_seconds:
                    actions.append(Promote(key))
        elif not wanted:
            actions.append(Forget(key))
        elif name in held:
            continue
        elif slot.state is S.STOPPED:
            actions.append(Spawn(key, "restart after its stop" if slot.spawns else "wanted"))
        elif slot.state is S.BACKOFF and now >= slot.next_start:
            actions.append(Spawn(key, "restart after backoff"))
    for name, count in sorted(desired.items()):
        for index in range(count):
            if (name, index) not in slots and name not in held:
                actions.append(Spawn((name, index), "wanted"))
    return actions


def on_exit(slot: Slot, returncode: int | None, policy: WorkerPolicy, now: float) -> tuple[Slot, bool]:
    """The slot after its process exited, and whether that makes a crash loop
    (`fatal_crashes` exits after RUNNING within `fatal_window`: an alert, never FATAL).

    An exit while STOPPING is the stop asked for (STOPPED); while STARTING, a start failure:
    counted in a row, FATAL at `fatal_crashes`; while RUNNING, a crash: backoff by the crashes
    within `fatal_window`."""
    what = describe_exit(returncode)
    done = dict(started_at=None, stop_deadline=None, killed=False, checked=False, checking=False,
                next_check=0.0, check_detail="", not_ready=False)
    if slot.state is S.STOPPING:
        how = "SIGKILLed at graceful_timeout" if slot.killed else "stopped"
        return dataclasses.replace(slot, state=S.STOPPED, reason=f"{how} ({what})", **done), False
    if slot.state is S.STARTING:
        failures = slot.start_failures + 1
        lived = now - slot.started_at if slot.started_at is not None else 0.0
        why = f"{what} after {lived:.3g}s, before start_seconds ({policy.start_seconds:g}s)"
        if slot.not_ready:
            why = f"not ready within ready_timeout ({policy.ready_timeout:g}s): {slot.check_detail}; SIGKILLed"
        elif policy.ready_check and not slot.checked:
            why = f"{what} after {lived:.3g}s, before its ready check passed" + \
                (f" (last: {slot.check_detail})" if slot.check_detail else "")
        if failures >= policy.fatal_crashes:
            return dataclasses.replace(slot, state=S.FATAL, start_failures=failures,
                                       reason=f"{why}; failed to start {failures} times in a row",
                                       **done), False
        return dataclasses.replace(slot, state=S.BACKOFF, start_failures=failures,
                                   next_start=now + backoff_delay(failures, policy),
                                   reason=f"{why}; start failure {failures} of {policy.fatal_crashes}",
                                   **done), False
    recent = tuple(t for t in slot.crashes if now - t < policy.fatal_window) + (now,)
    loop = len(recent) >= policy.fatal_crashes
    reason = what + (f"; {len(recent)} crashes within {policy.fatal_window:g}s" if loop else "")
    return dataclasses.replace(slot, state=S.BACKOFF, crashes=recent, start_failures=0,
                               next_start=now + backoff_delay(len(recent), policy), reason=reason,
                               **done), loop


def on_spawn_error(slot: Slot, detail: str, transient: bool, policy: WorkerPolicy,
                   now: float) -> Slot:
    """The slot after its command could not be started. A shortage of the daemon's own (file
    descriptors, memory) is retried without counting; anything else (no such program, a
    folder that is not there) is a start failure like an early exit."""
    if transient:
        return dataclasses.replace(slot, state=S.BACKOFF, next_start=now + max(0.5, policy.backoff_initial),
                                   reason=f"cannot start: {detail} (the daemon's own shortage; retrying)")
    failures = slot.start_failures + 1
    if failures >= policy.fatal_crashes:
        return dataclasses.replace(slot, state=S.FATAL, start_failures=failures,
                                   reason=f"cannot start: {detail}; failed {failures} times in a row")
    return dataclasses.replace(slot, state=S.BACKOFF, start_failures=failures,
                               next_start=now + max(policy.backoff_initial, backoff_delay(failures, policy)),
                               reason=f"cannot start: {detail}; start failure {failures} of {policy.fatal_crashes}")


def spawned(slot: Slot, now: float, fingerprint: str, folder: str = "") -> Slot:
    """The slot once its process was started (in `folder`)."""
    return dataclasses.replace(slot, state=S.STARTING, started_at=now, spawns=slot.spawns + 1,
                               restarts=slot.restarts + (1 if slot.spawns else 0), folder=folder,
                               fingerprint=fingerprint, stop_deadline=None, killed=False, reason="",
                               checked=False, checking=False, next_check=now, check_detail="",
                               not_ready=False)


def check_started(slot: Slot) -> Slot:
    return dataclasses.replace(slot, checking=True)


def check_done(slot: Slot, ok: bool, detail: str, policy: WorkerPolicy, now: float) -> Slot:
    """The slot once a readiness check answered: passed, or the next one after the interval."""
    if ok:
        return dataclasses.replace(slot, checking=False, checked=True, check_detail="")
    return dataclasses.replace(slot, checking=False, next_check=now + policy.ready_interval,
                               check_detail=detail)


def not_ready(slot: Slot, detail: str) -> Slot:
    return dataclasses.replace(slot, not_ready=True, check_detail=detail,
                               reason=f"not ready at ready_timeout: {detail}")


def promoted(slot: Slot) -> Slot:
    return dataclasses.replace(slot, state=S.RUNNING, start_failures=0, reason="")


def stopping(slot: Slot, deadline: float, reason: str) -> Slot:
    return dataclasses.replace(slot, state=S.STOPPING, stop_deadline=deadline, reason=reason)


def retried(slot: Slot) -> Slot:
    """An operator asked again (a scale of the type): a FATAL slot starts afresh."""
    if slot.state is not S.FATAL:
        return slot
    return dataclasses.replace(slot, state=S.BACKOFF, next_start=0.0, start_failures=0,
                               reason="retried by the operator")


def next_wakeup(slots: Mapping[Key, Slot], policies: Mapping[str, WorkerPolicy]) -> float | None:
    """The earliest time `plan` may act without an exit or a change of what is wanted."""
    times = []
    for slot in slots.values():
        policy = policies.get(slot.name, WorkerPolicy())
        if slot.state is S.STARTING and slot.started_at is not None and not slot.not_ready:
            if policy.ready_check and not slot.checked:
                times.append(slot.started_at + policy.ready_timeout)
                if not slot.checking:
                    times.append(slot.next_check)
            else:
                times.append(slot.started_at + policy.start_seconds)
        elif slot.state is S.BACKOFF:
            times.append(slot.next_start)
        elif slot.state is S.STOPPING and not slot.killed and slot.stop_deadline is not None:
            times.append(slot.stop_deadline)
    return min(times) if times else None


# ---- start order between types (`after`, `requires`) -----------------------------------------

def type_ready(slots: Mapping[Key, Slot], name: str, desired: int) -> bool:
    """A worker type another one starts after: all its `desired` processes RUNNING (past their
    `ready` check)."""
    running = sum(1 for (n, _), s in slots.items() if n == name and s.state is S.RUNNING)
    return running >= desired


def start_blockers(after: tuple[str, ...] | list[str], ready: Mapping[str, bool],
                   requires: tuple[str, ...] | list[str], up: Mapping[str, bool]) -> list[str]:
    """What a type that has not started yet still waits for, in order: the types of `after`
    not ready (`ready`: name -> bool, `web` the web fleet), then the `requires` addresses not
    known to accept connections (`up`); [] = it may start."""
    return [n for n in after if not ready.get(n, False)] + [a for a in requires if not up.get(a, False)]


def announce_waiting(last: tuple[float, tuple[str, ...]] | None, awaits: list[str], now: float) -> bool:
    """Whether a type still waiting says so (`processes.waiting`): the first time, when what it
    awaits changed, and at most every WAITING_REPEAT seconds otherwise."""
    return last is None or tuple(awaits) != last[1] or now - last[0] >= WAITING_REPEAT


# ---- adoption across a daemon restart ----------------------------------------------------------

START_TIME_SLACK = 1.0      # seconds two readings of one process's start time may differ by


@dataclass(frozen=True)
class Record:
    """One live process as the loop records it (`<state_dir>/processes-live.json`), so that the
    next daemon can adopt it: the slot, the pid and the pid's start time (which proves, later,
    that the pid is still that process and not another that took the number over)."""
    name: str
    index: int
    pid: int
    start_time: float | None            # Runner.start_time at spawn (wall clock, seconds)
    fingerprint: str                    # digest() of the slot's fingerprint (which may hold secrets)
    folder: str
    restarts: int = 0
    stop_signal: int = int(_signal.SIGTERM)     # to stop it even when a new spec removed its type
    graceful_timeout: float = 30.0

    @property
    def key(self) -> Key:
        return (self.name, self.index)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


RECORD_VERSION = 1


def digest(fingerprint: str) -> str:
    """A fingerprint as recorded on disk: it holds the type's and app's env values."""
    return hashlib.sha256(fingerprint.encode()).hexdigest()


def records_json(records: list[Record]) -> dict:
    return {"version": RECORD_VERSION, "processes": [r.to_json() for r in sorted(records, key=lambda r: r.key)]}


def _number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def records_from(data: object) -> tuple[list[Record], list[str]]:
    """The records in a parsed processes-live.json, and what was wrong with the rest (each
    entry is judged alone: one bad entry does not lose the others)."""
    if not isinstance(data, dict) or not isinstance(data.get("processes"), list):
        return [], ['not {"version": 1, "processes": [...]}']
    if data.get("version") != RECORD_VERSION:
        return [], [f"version {data.get('version')!r}, this daemon reads {RECORD_VERSION}"]
    out, errors, seen = [], [], set()
    for n, e in enumerate(data["processes"]):
        ok = isinstance(e, dict) and isinstance(e.get("name"), str) and \
            all(isinstance(e.get(k), int) and not isinstance(e.get(k), bool) for k in ("index", "pid")) and \
            (e.get("start_time") is None or _number(e.get("start_time"))) and \
            isinstance(e.get("fingerprint"), str) and isinstance(e.get("folder"), str) and \
            all(_number(e.get(k, 0)) for k in ("restarts", "stop_signal", "graceful_timeout"))
        if not ok or e["pid"] <= 0 or e["index"] < 0:
            errors.append(f"processes[{n}]: not a process record: {e!r}"[:200])
            continue
        rec = Record(e["name"], e["index"], e["pid"], e["start_time"], e["fingerprint"], e["folder"],
                     int(e.get("restarts", 0)), int(e.get("stop_signal", _signal.SIGTERM)),
                     float(e.get("graceful_timeout", 30.0)))
        if rec.key in seen:
            errors.append(f"processes[{n}]: a second record for {rec.name}/{rec.index} (pid {rec.pid})")
            continue
        seen.add(rec.key)
        out.append(rec)
    return out, errors


def not_same_process(record: Record, start_time_now: float | None) -> str | None:
    """Why the recorded pid is not (provably) our process any more, or None when it is: it
    exists and started when ours did."""
    if start_time_now is None:
        return "gone: it exited while no daemon watched it"
    if record.start_time is None:
        return "its start time was not recorded, so it cannot be told from another process with its pid; left alone"
    if abs(start_time_now - record.start_time) > START_TIME_SLACK:
        return (f"pid {record.pid} now belongs to another process (started at {start_time_now:.2f}, ours at "
                f"{record.start_time:.2f}); left alone")
    return None


def adopted(record: Record, started_at: float, fingerprint_then: str) -> Slot:
    """The slot of a process adopted from an earlier daemon (STARTING; RUNNING once it has lived
    start_seconds, at once for one that already has). `started_at` on the loop's clock;
    `fingerprint_then`: what the spec in force would start it with in its recorded folder. If
    that is not what it was started with, its slot's fingerprint matches nothing, and the plan
    rolls it."""
    same = fingerprint_then and digest(fingerprint_then) == record.fingerprint
    return Slot(record.name, record.index, S.STARTING, started_at=started_at, spawns=1,
                restarts=record.restarts, folder=record.folder, reason="adopted from an earlier run",
                fingerprint=fingerprint_then if same else "adopted, started otherwise: " + record.fingerprint)
