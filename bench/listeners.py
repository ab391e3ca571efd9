"""How a port changes hands, at the socket level, side by side in one run (issue 13: "mind what
each option does to connections queued on a listener that closes").

Clients that never retry open a new connection per request and count a request failed when the
connection is refused or reset after they sent it. Like nginx, a client whose connect is refused
or not answered within 0.5 s passes the request to a second port that always serves (that is not
a failure: nginx does the same for every method). The server on the port under test is one
acceptor thread that answers each request after 2 ms, so its accept queue is never empty. Then:

  replace: a new acceptor takes over the port, the old one stops and closes its socket --
    rebind      old closes, new binds and listens again (a stop, then a start)
    reuseport   new binds its own socket with SO_REUSEPORT, then old closes
                (gunicorn's `reuse_port`; Linux resets what waits in the closing socket's queue
                unless the sysctl net.ipv4.tcp_migrate_req is 1)
    shared      new accepts from the same socket (an fd passed to it: what ultrascaled does, and
                what gunicorn's USR2 re-exec does), then old closes its copy
  leave: the port stops serving (scale down) --
    close       old stops accepting and closes
    gate        the socket's gate closes (a drop-all BPF filter: ultrascaled's static upstream),
                the acceptor empties the queue, then stops and closes

    python -m bench listeners [--seconds 3] [--clients 16]
"""
from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import threading
import time

from ultrascaled.effects import procs

ANSWER = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"


def queued(sock: socket.socket) -> int:
    """Connections waiting in a listening socket's accept queue (tcp_info.tcpi_unacked)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 32)
    return struct.unpack_from("I", info, 24)[0]


def listener(port: int = 0, reuseport: bool = False) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuseport:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", port))
    s.listen(128)
    return s


class Acceptor(threading.Thread):
    def __init__(self, sock: socket.socket, service: float):
        super().__init__(daemon=True)
        self.sock, self.service, self.halt = sock, service, threading.Event()
        self.sock.settimeout(0.05)

    def run(self):
        while not self.halt.is_set():
            try:
                c, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            try:
                c.settimeout(2)
                c.recv(1024)
                time.sleep(self.service)
                c.sendall(ANSWER)
            except OSError:
                pass
            finally:
                c.close()

    def stop(self, close: bool = True):
        self.halt.set()
        self.join()
        if close:
            self.sock.close()


class Clients:
    def __init__(self, port: int, fallback: int, n: int):
        self.port, self.fallback = port, fallback
        self.counts = {"ok": 0, "passed to the next port": 0, "failed": 0}
        self.worst = 0.0
        self.halt = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.loop, daemon=True) for _ in range(n)]

    def one(self) -> str:
        for port in (self.port, self.fallback):
            s = socket.socket()
            s.settimeout(0.5)
            try:
                s.connect(("127.0.0.1", port))
            except (ConnectionRefusedError, TimeoutError):
                s.close()
                continue
            try:
                s.settimeout(5)
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                data = s.recv(1024)
                return ("ok" if port == self.port else "passed to the next port") if data.startswith(
                    b"HTTP/1.0 200") else "failed"
            except OSError:
                return "failed"
            finally:
                s.close()
        return "failed"

    def loop(self):
        while not self.halt.is_set():
            t0 = time.monotonic()
            what = self.one()
            with self.lock:
                self.counts[what] += 1
                self.worst = max(self.worst, time.monotonic() - t0)

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.halt.set()
        for t in self.threads:
            t.join()


def run(scheme: str, seconds: float, clients: int, service: float = 0.002) -> dict:
    spare = listener()
    spare_acc = Acceptor(spare, 0)
    spare_acc.start()
    sock = listener(reuseport=scheme == "reuseport")
    port = sock.getsockname()[1]
    old = Acceptor(sock, service)
    old.start()
    new = None
    with Clients(port, spare.getsockname()[1], clients) as cl:
        time.sleep(seconds / 2)
        waiting = queued(sock)
        if scheme == "rebind":
            old.stop()
            new = Acceptor(listener(port), service)
            new.start()
        elif scheme == "reuseport":
            new = Acceptor(listener(port, reuseport=True), service)
            new.start()
            old.stop()
        elif scheme == "shared":
            new = Acceptor(sock.dup(), service)
            new.start()
            old.stop()
        elif scheme == "close":
            old.stop()
        elif scheme == "gate":
            procs.set_gate(sock, False)
            deadline = time.monotonic() + 5
            while queued(sock) and time.monotonic() < deadline:
                time.sleep(0.005)
            old.stop()
        time.sleep(seconds / 2)
    if new:
        new.stop()
    spare_acc.stop()
    return {"scheme": scheme, "queued at the hand-over": waiting, **cl.counts, "slowest (s)": round(cl.worst, 3)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench listeners", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    rows = []
    for scheme in ("rebind", "reuseport", "shared", "close", "gate"):
        for _ in range(args.rounds):
            rows.append(run(scheme, args.seconds, args.clients))
            print(json.dumps(rows[-1]), file=sys.stderr)
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
