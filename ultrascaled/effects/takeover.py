"""The channel a warm spare is handed a serving port's socket through (docs/spares.md): one end of
a datagram socketpair stays with the daemon, the other is passed to the spare's master
(ULTRASCALE_TAKEOVER_FD) and inherited by its workers (ultrascaled/shims/ultrascale_spare.py)."""
from __future__ import annotations

import socket


def channel() -> tuple[socket.socket, socket.socket]:
    """(the daemon's end, the spare's end); both close-on-exec until passed on purpose."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)


def hand_over(chan: socket.socket, sock: socket.socket, copies: int) -> int:
    """Send `sock` in `copies` datagrams (the master and each worker take one; the rest wait for a
    worker forked later, which closes its copy). Returns how many were sent: a full buffer stops
    early without blocking the daemon."""
    sent = 0
    chan.setblocking(False)
    for _ in range(copies):
        try:
            socket.send_fds(chan, [b"t"], [sock.fileno()])
        except (BlockingIOError, InterruptedError):
            break
        sent += 1
    return sent
