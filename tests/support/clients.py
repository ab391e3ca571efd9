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
    each 200 answer (a release's name, for the deploy tests)."""

    def __init__(self, port: int, method: str = "GET", path: str = "/health", body: bytes | None = None,
                 timeout: float = 10, pause: float = 0.002, limit: float = 240):
        super().__init__(daemon=True)
        self.port, self.method, self.path, self.body = port, method, path, body
        self.timeout, self.pause, self.limit = timeout, pause, limit
        self.ok = 0
        self.failures: list[str] = []
        self.seen: set[str] = set()
        self._halt = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + self.limit
        headers = {"Content-Type": "text/plain"} if self.body is not None else {}
        while not self._halt.is_set() and time.monotonic() < deadline:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            try:
                conn.request(self.method, self.path, body=self.body, headers=headers)
                r = conn.getresponse()
                body = r.read().decode(errors="replace")
                if r.status == 200:
                    self.ok += 1
                    self.seen.add(body.split()[0] if body.split() else "")
                else:
                    self.failures.append(f"HTTP {r.status}: {body[:80]}")
            except (OSError, http.client.HTTPException) as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")
            finally:
                conn.close()
            time.sleep(self.pause)

    def stop(self) -> None:
        self._halt.set()
        self.join(self.timeout + 20)
