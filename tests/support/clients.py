"""A client that never retries: a new connection per request, any status but 200 or any
transport error is a failure. It is what an operator's service-to-service caller or a POST
sees, where a browser would have retried and hidden the failure."""
from __future__ import annotations

import http.client
import threading
import time


class NoRetryClient(threading.Thread):
    """Requests `method path` (with `body`) to 127.0.0.1:`port` in a loop until stop(), or at
    most `limit` seconds (bounded even if a test forgets to stop it). `seen`: the first word of
    each 200 answer (a release's name, for the deploy tests). `keepalive`: one connection for
    every request, as `wrk` does; a connection the server closed under it is a failure too (then
    a new one). `expect`: the status that counts as answered (the reference app answers a POST
    to /health with its own 405: the request reached the app)."""

    def __init__(self, port: int, method: str = "GET", path: str = "/health", body: bytes | None = None,
                 timeout: float = 10, pause: float = 0.002, limit: float = 240, keepalive: bool = False,
                 expect: int = 200):
        super().__init__(daemon=True)
        self.port, self.method, self.path, self.body = port, method, path, body
        self.timeout, self.pause, self.limit, self.keepalive = timeout, pause, limit, keepalive
        self.expect = expect
        self.ok = 0
        self.failures: list[str] = []
        self.seen: set[str] = set()
        self._halt = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + self.limit
        headers = {"Content-Type": "text/plain"} if self.body is not None else {}
        conn = None
        while not self._halt.is_set() and time.monotonic() < deadline:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            try:
                conn.request(self.method, self.path, body=self.body, headers=headers)
                r = conn.getresponse()
                body = r.read().decode(errors="replace")
                if r.status == self.expect:
                    self.ok += 1
                    self.seen.add(body.split()[0] if body.split() else "")
                else:
                    self.failures.append(f"HTTP {r.status}: {body[:80]}")
            except (OSError, http.client.HTTPException) as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")
                conn.close()
                conn = None
            if not self.keepalive and conn is not None:
                conn.close()
                conn = None
            time.sleep(self.pause)
        if conn is not None:
            conn.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(self.timeout + 20)
