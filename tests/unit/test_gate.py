"""The gate of a held listening socket (ultrascaled/effects/procs.py): closed, it lets no new connection
in and keeps the ones already queued; open, it takes connections again. Real sockets on
loopback; nothing here waits on a timer that a busy machine could miss (a dropped SYN is only
retransmitted, and dropped again, while the gate stays closed)."""
from __future__ import annotations

import select
import socket

from ultrascaled.effects import procs


def connecting(port: int) -> socket.socket:
    c = socket.socket()
    c.setblocking(False)
    c.connect_ex(("127.0.0.1", port))
    return c


def established(c: socket.socket, wait: float) -> bool:
    _, writable, _ = select.select([], [c], [], wait)
    return bool(writable) and c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0


def test_a_closed_gate_keeps_the_queue_and_lets_nothing_new_in_until_it_opens():
    s = procs.listen("127.0.0.1", 0)
    port = s.getsockname()[1]
    first = connecting(port)
    assert established(first, 5), "an open gate: the connection is queued"
    procs.set_gate(s, False)
    procs.set_gate(s, False)                      # closing twice is fine
    second = connecting(port)
    assert not established(second, 0.3), "a closed gate: the SYN is dropped"
    accepted, _ = s.accept()                      # ... and the queued one is still there
    first.sendall(b"ping")
    assert accepted.recv(4) == b"ping"
    procs.set_gate(s, True)
    procs.set_gate(s, True)                       # opening an open gate is fine
    third = connecting(port)                      # (the second's SYN is retransmitted after 1 s)
    assert established(third, 5), "an open gate again"
    for sock in (s, first, second, third, accepted):
        sock.close()


def test_a_socket_can_listen_with_its_gate_closed():
    s = procs.listen("127.0.0.1", 0, gate_closed=True)
    c = connecting(s.getsockname()[1])
    assert not established(c, 0.3)
    procs.set_gate(s, True)
    d = connecting(s.getsockname()[1])
    assert established(d, 5)
    for sock in (c, d, s):
        sock.close()
