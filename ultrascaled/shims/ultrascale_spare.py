"""gunicorn's sync and gthread workers, for a warm spare: they can be handed a serving port's
listening socket while they run (docs/spares.md).

The daemon starts a spare with `--worker-class ultrascale_spare.SyncWorker` (or `ThreadWorker`)
and `ULTRASCALE_TAKEOVER_FD`, one end of a datagram socketpair it keeps the other end of. At a
takeover it sends the port's socket (SCM_RIGHTS) in several datagrams; the master and each worker
take one each, on a thread that waits for it from the start:
- a worker adds the socket to what it accepts on, at once (the sync worker's select is woken by
  its pipe; the gthread worker registers it through its method queue, on its main thread);
- the master appends it to its LISTENERS, so that a worker it forks later (max_requests, the
  memory watchdog) accepts on it too. Such a worker inherits the socket, and closes the copy a
  leftover datagram brings.
The master's thread is started from `check_config`, which gunicorn's Arbiter.start calls in the
master before it forks a worker. Only gunicorn is imported here: the app's interpreter need not
have ultrascaled installed.
"""
import os
import socket
import sys
import threading
import time

from gunicorn import sock as gsock
from gunicorn.workers import gthread, sync

ENV = "ULTRASCALE_TAKEOVER_FD"


def _channel():
    fd = os.environ.get(ENV)
    if not fd:
        return None
    try:
        return socket.socket(fileno=os.dup(int(fd)))
    except (OSError, ValueError):
        return None


def _receive(chan, cfg, log):
    """One datagram's socket, as a gunicorn listener (None: the channel closed)."""
    try:
        _, fds, _, _ = socket.recv_fds(chan, 16, 4)
    except OSError:
        return None
    if not fds:
        return None
    for extra in fds[1:]:
        os.close(extra)
    raw = socket.socket(fileno=fds[0])
    addr = raw.getsockname()
    fam = raw.family
    raw.detach()
    cls = gsock.TCP6Socket if fam == socket.AF_INET6 else gsock.TCPSocket
    return cls(addr, cfg, log, fd=fds[0])   # it listens already: gunicorn keeps its backlog


def _same(a, b):
    try:
        return a.getsockname() == b.getsockname()
    except OSError:
        return False


def _master_thread(arbiter, chan):
    lst = _receive(chan, arbiter.cfg, arbiter.log)
    if lst is None:
        return
    if any(_same(lst, known) for known in arbiter.LISTENERS):
        lst.close()
        return
    arbiter.LISTENERS.append(lst)
    arbiter.log.info("Spare: took over %s", lst)


class _TakesOver:
    @classmethod
    def check_config(cls, cfg, log):
        parent = getattr(super(), "check_config", None)   # gthread has one, sync none
        if parent is not None:
            parent(cfg, log)
        chan = _channel()
        arbiter = sys._getframe(1).f_locals.get("self")    # Arbiter.start's self
        if chan is not None and hasattr(arbiter, "LISTENERS"):
            threading.Thread(target=_master_thread, args=(arbiter, chan), daemon=True,
                             name="ultrascale-takeover").start()

    def init_process(self):
        chan = _channel()
        if chan is not None:
            threading.Thread(target=self._worker_thread, args=(chan,), daemon=True,
                             name="ultrascale-takeover").start()
        super().init_process()

    def _worker_thread(self, chan):
        lst = _receive(chan, self.cfg, self.log)
        if lst is None:
            return
        if any(_same(lst, known) for known in self.sockets):   # inherited from the master already
            lst.close()
            return
        while not getattr(self, "booted", False):
            time.sleep(0.01)
        self._add_listener(lst)
        self.log.info("Spare: worker %s took over %s", self.pid, lst)


class SyncWorker(_TakesOver, sync.SyncWorker):
    def _add_listener(self, lst):
        lst.setblocking(0)
        self.sockets.append(lst)
        self.wait_fds = self.sockets + [self.PIPE[0]]
        try:
            os.write(self.PIPE[1], b".")   # wake select(): the next one waits on the new socket too
        except OSError:
            pass


class ThreadWorker(_TakesOver, gthread.ThreadWorker):
    def _add_listener(self, lst):
        def add():
            lst.setblocking(False)
            self.sockets.append(lst)
            if getattr(self, "_accepting", True):   # (gunicorn 23's gthread registers them all at once)
                import selectors
                self.poller.register(lst, selectors.EVENT_READ, self.accept)
        self.method_queue.defer(add)
