"""gunicorn worker classes, pure: which names `gunicorn.worker_class` takes, and how many requests
one worker of each serves at once (what the planner, the budgets and the autoscaler's limits
count with).

gunicorn's own short names (`sync`, `gthread`, `gevent`, `eventlet`) and any dotted class path
`module.Class` (gunicorn imports it, e.g. `uvicorn_worker.UvicornWorker` for an ASGI app). The
uvicorn classes are known: each serves many connections on one event loop and sets no limit of
its own (uvicorn's `limit_concurrency` is off by default), so they are counted with
`gunicorn.concurrency`, by default `gunicorn.worker_connections`. Any other dotted class must
state its figure in `gunicorn.concurrency`: nothing here can know it.
"""
from __future__ import annotations

import re
from typing import Optional, Protocol


class GunicornSection(Protocol):   # schema.GunicornSection's keys read here (schema imports us)
    worker_class: str
    threads: int
    worker_connections: int
    concurrency: Optional[int]

BUILTIN = ("gevent", "sync", "gthread", "eventlet")
# uvicorn's gunicorn workers: `uvicorn-worker`'s, and the same classes in uvicorn itself
# (deprecated since uvicorn 0.30, still shipped). Value: the package that brings each.
UVICORN = {"uvicorn_worker.UvicornWorker": "uvicorn-worker",
           "uvicorn_worker.UvicornH11Worker": "uvicorn-worker",
           "uvicorn.workers.UvicornWorker": "uvicorn",
           "uvicorn.workers.UvicornH11Worker": "uvicorn"}
DEPRECATED = {"uvicorn.workers.UvicornWorker": "uvicorn_worker.UvicornWorker",
              "uvicorn.workers.UvicornH11Worker": "uvicorn_worker.UvicornH11Worker"}
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_DOTTED_CLASS = re.compile(rf"{_IDENT}(?:\.{_IDENT})+\Z")
MAX_LENGTH = 200


def is_dotted(worker_class: str) -> bool:
    return bool(_DOTTED_CLASS.match(worker_class))


def is_uvicorn(worker_class: str) -> bool:
    return worker_class in UVICORN


def split(worker_class: str) -> tuple[str, str]:
    """`module.Class` -> (module, Class)."""
    module, _, cls = worker_class.rpartition(".")
    return module, cls


def class_error(value: str) -> str | None:
    """Why `value` is not a worker class gunicorn.worker_class accepts, or None."""
    if value in BUILTIN or (len(value) <= MAX_LENGTH and is_dotted(value)):
        return None
    shown = value if len(value) <= 60 else value[:60] + "..."
    return (f"must be one of {', '.join(BUILTIN)}, or a worker class as a dotted path "
            f"`module.Class` (for an ASGI app: uvicorn_worker.UvicornWorker), got {shown!r}")


def concurrency_error(g: GunicornSection) -> tuple[str, str] | None:
    """(key, message) when gunicorn.concurrency does not fit gunicorn.worker_class, or None."""
    wc, c = g.worker_class, g.concurrency
    if c is None:
        if is_dotted(wc) and not is_uvicorn(wc):
            return ("gunicorn.concurrency",
                    f"required for gunicorn.worker_class {wc}, a class ultrascaled does not know: "
                    "say how many requests one of its workers serves at once (1 for a worker "
                    "that handles one request at a time; an async worker's connection limit), "
                    "e.g. `concurrency: 100`; the planner, the budgets and the autoscaler count "
                    "with it")
        return None
    instead = {"sync": "a sync worker serves 1 request at a time (for more: gthread with "
                       "gunicorn.threads, or more gunicorn.workers)",
               "gthread": "gthread serves gunicorn.threads requests at a time: set that",
               "gevent": "gevent serves gunicorn.worker_connections at a time: set that",
               "eventlet": "eventlet serves gunicorn.worker_connections at a time: set that"}.get(wc)
    if instead is not None:
        return ("gunicorn.concurrency", f"is for a dotted gunicorn.worker_class only; {instead}")
    return None


def requests_per_worker(g: GunicornSection) -> tuple[int, str]:
    """Requests one worker serves at once, and the formula."""
    wc = g.worker_class
    if wc == "sync":
        return 1, "1 (worker_class sync: one request at a time)"
    if wc == "gthread":
        return g.threads, f"gunicorn.threads = {g.threads} (worker_class gthread)"
    if wc in ("gevent", "eventlet"):
        return g.worker_connections, (f"gunicorn.worker_connections = {g.worker_connections} "
                                      f"(worker_class {wc})")
    if g.concurrency is not None:
        return g.concurrency, f"gunicorn.concurrency = {g.concurrency} (worker_class {wc})"
    # uvicorn (no limit of its own: counted as worker_connections); an unknown class without
    # gunicorn.concurrency is refused by validation, so this is only a stand-in there
    return g.worker_connections, (f"gunicorn.worker_connections = {g.worker_connections} "
                                  f"(worker_class {wc}: uvicorn sets no per-worker limit; "
                                  "gunicorn.concurrency overrides)")


def open_connections_per_worker(g: GunicornSection) -> int:
    """Client connections one worker may hold open: a sync worker closes each after its answer;
    gthread (idle keep-alive ones included), gevent and eventlet up to worker_connections; a
    dotted class as many as it serves at once (its concurrency)."""
    if g.worker_class == "sync":
        return 1
    if g.worker_class in BUILTIN:
        return g.worker_connections
    return requests_per_worker(g)[0]
