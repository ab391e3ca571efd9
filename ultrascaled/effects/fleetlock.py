"""One daemon per fleet name and per state folder on a host.

Two fleets must never touch each other's processes, files or nginx. A daemon holds, for its
whole life:
- an exclusive `flock` on `state_dir/ultrascaled.lock` (the file also says who holds it), and
- the fleet's name as an abstract unix socket `@ultrascaled/fleet/NAME` (per network namespace,
  released by the kernel when the daemon dies, however it dies); a second daemon finds the
  holder's pid through SO_PEERCRED.
`state.json` also records the fleet name: a state folder that holds another fleet's state is
refused even while that fleet's daemon is down.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import struct
from pathlib import Path


class FleetLocked(Exception):
    """Another live daemon owns the name or the folder; the message says which."""


class FleetLock:
    def __init__(self, name: str, state_dir: str | os.PathLike):
        self.name = name
        self.state_dir = Path(state_dir)
        self._fd: int | None = None
        self._sock: socket.socket | None = None

    @property
    def lock_path(self) -> Path:
        return self.state_dir / "ultrascaled.lock"

    def acquire(self) -> None:
        """Take both locks or raise FleetLocked (nothing is held then). Idempotent."""
        if self._fd is not None:
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._take_name()
            self._take_folder()
            self._check_state_owner()
        except BaseException:
            self.release()
            raise

    def _take_name(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.bind(_abstract(self.name))
            sock.listen(8)
        except OSError as exc:
            sock.close()
            if exc.errno != errno.EADDRINUSE:
                raise
            holder = name_holder(self.name)
            who = f"ultrascaled pid {holder}" if holder else "another ultrascaled"
            raise FleetLocked(f"fleet name {self.name!r} is already in use on this host by {who}; "
                              f"give this fleet another `name`") from None
        self._sock = sock

    def _take_folder(self) -> None:
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                held = os.read(fd, 256).decode(errors="replace").strip()
            finally:
                os.close(fd)
            raise FleetLocked(f"paths.state_dir {self.state_dir} is in use by another ultrascaled "
                              f"({held or 'unknown'}); give each fleet its own state_dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}, fleet {self.name}\n".encode())
        self._fd = fd

    def _check_state_owner(self) -> None:
        try:
            data = json.loads((self.state_dir / "state.json").read_text())
        except (OSError, ValueError):
            return
        owner = data.get("fleet") if isinstance(data, dict) else None
        if owner is not None and owner != self.name:
            raise FleetLocked(f"paths.state_dir {self.state_dir} holds the state of fleet {owner!r}, not "
                              f"{self.name!r}; give each fleet its own state_dir")

    def release(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _abstract(name: str) -> bytes:
    return b"\0ultrascaled/fleet/" + name.encode()[:90]


def name_holder(name: str) -> int | None:
    """pid of the daemon holding fleet `name` on this host, or None if none does."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        s.settimeout(0.5)
        s.connect(_abstract(name))
        creds = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return struct.unpack("3i", creds)[0]
    except OSError:
        return None
    finally:
        s.close()


def check(name: str, state_dir: str | os.PathLike) -> list[str]:
    """For `--check`: what would stop a daemon from starting here now ([] when nothing)."""
    lock = FleetLock(name, state_dir)
    if not Path(state_dir).is_dir():
        if name_holder(name):
            return [f"fleet name {name!r} is already in use on this host by ultrascaled pid {name_holder(name)}"]
        return []
    try:
        lock.acquire()
    except FleetLocked as exc:
        return [str(exc)]
    except OSError as exc:
        return [f"paths.state_dir {state_dir}: {exc.strerror or exc}"]
    finally:
        lock.release()
    return []


def check_running(name: str, state_dir: str | os.PathLike, pid: int) -> list[str]:
    """For `--check` while ultrascaled `pid` runs fleet `name` here: the name is its own; the
    state folder must be the one that daemon holds (a reload cannot change paths.state_dir)
    and hold this fleet's state. Nothing is created or written."""
    d = Path(state_dir)
    moved = (f"paths.state_dir {d} is not the folder the running fleet {name!r} (ultrascaled pid "
             f"{pid}) holds; a reload cannot change paths.state_dir (restart the daemon to move the fleet)")
    try:
        fd = os.open(d / "ultrascaled.lock", os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return [moved]
    except OSError as exc:
        return [f"paths.state_dir {d}: {exc.strerror or exc}"]
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            held = os.read(fd, 256).decode(errors="replace").strip()
        else:
            return [moved]    # nobody holds the folder: the running fleet uses another one
    finally:
        os.close(fd)
    if not held.startswith(f"pid {pid},"):
        return [f"paths.state_dir {d} is in use by another ultrascaled ({held or 'unknown'}), not by "
                f"the running fleet {name!r} (ultrascaled pid {pid}); give each fleet its own state_dir"]
    lock = FleetLock(name, d)
    try:
        lock._check_state_owner()
    except FleetLocked as exc:
        return [str(exc)]
    return []
