"""A worker type's `autoscale:` on its queue's depth, pure: the Redis list it names, the URL as it
may be shown (its password as `***`), and the checks across its keys (validate.py calls them).

The keys themselves are declared in schema.py (QueueSource, QueueAutoscale); the loop that reads
the depth and scales is supervise/queue_scale_loop.py, the decision core/autoscale.py's.
"""
from __future__ import annotations

import importlib.util
import re
import sys
from typing import Any
from urllib.parse import parse_qsl, urlsplit

SCHEMES = ("redis", "rediss", "unix")
SHORTHANDS = ("list", "rq", "celery")


def list_name(queue: Any) -> str:
    """The Redis list whose length is the depth: `list` as given, `rq: NAME` -> `rq:queue:NAME`
    (RQ's key), `celery: NAME` -> `NAME` (kombu's Redis transport keeps a queue in the list of
    its name)."""
    if queue.list is not None:
        return queue.list
    if queue.rq is not None:
        return f"rq:queue:{queue.rq}"
    return queue.celery or ""


def mask_url(url: str) -> str:
    """`url` with its password (userinfo or `?password=`) as `***`, for events, the API and
    `--check`; the rest (scheme, host, port, db) stays, so an operator can tell which broker."""
    if not isinstance(url, str):
        return url
    out = re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)([^@/?#]*:)[^@/?#]*@", r"\1\2***@", url)
    out = re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)([^:@/?#]+)@", r"\1***@", out)   # redis://password@host
    return re.sub(r"([?&]password=)[^&#]*", r"\1***", out, flags=re.IGNORECASE)


def secrets_of(url: str) -> list[str]:
    """The password parts of `url`, to take out of an error text that might quote them."""
    try:
        parts = urlsplit(url)
        found = [parts.password or ""]
        if parts.username and parts.password is None:
            found.append(parts.username)
        found += [v for k, v in parse_qsl(parts.query) if k.lower() == "password"]
    except ValueError:
        return []
    return [s for s in found if len(s) >= 3]


def scrub(text: str, url: str) -> str:
    """An error text with the URL masked and no password left in it."""
    text = text.replace(url, mask_url(url))
    for secret in secrets_of(url):
        text = text.replace(secret, "***")
    return text


def redis_py_missing() -> bool:
    """True when the daemon's own Python cannot import redis-py (it is not among the daemon's
    dependencies: only a spec that autoscales on a queue needs it)."""
    return importlib.util.find_spec("redis") is None


def errors(kind: str, raw: dict, section: Any, sub: str, bad: set[str]) -> list[tuple[str, str]]:
    """(key, message) for one process type's `autoscale:`: only on a worker; a queue with a
    Redis URL and exactly one of list / rq / celery; min..max within the type's; redis-py
    importable by the daemon. `raw`: the entry as written, `section` the built ProcessType."""
    given = raw.get("autoscale")
    key = f"{sub}.autoscale"
    if given is None:
        return []
    if kind != "worker":
        return [(key, f"not a key of a {kind}: only a worker type (`kind: worker`) autoscales "
                      "on its queue")]
    if any(k.startswith(key) for k in bad):
        return []          # a value already refused: its own message says it
    a = section.autoscale
    q = a.queue
    out: list[tuple[str, str]] = []
    if q.redis is None:
        out.append((f"{key}.queue.redis", "is required: the URL of the Redis broker whose list "
                    "is the queue, e.g. redis://127.0.0.1:6379/0"))
    else:
        scheme = q.redis.split("://", 1)[0].lower() if "://" in q.redis else ""
        if scheme not in SCHEMES:
            out.append((f"{key}.queue.redis", f"must be a redis://, rediss:// or unix:// URL, got "
                        f"{mask_url(q.redis)[:80]!r}"))
        else:
            try:
                parts = urlsplit(q.redis)
                parts.port   # noqa: B018 - raises on a port that is not a number
                if scheme != "unix" and not parts.hostname:
                    raise ValueError("no host")
            except ValueError as exc:
                out.append((f"{key}.queue.redis", f"is not a valid URL ({exc}): "
                            f"{mask_url(q.redis)[:80]!r}"))
    named = [k for k in SHORTHANDS if getattr(q, k) is not None]
    if len(named) != 1:
        out.append((f"{key}.queue", "needs exactly one of list (a Redis list), rq (an RQ queue's "
                    "name) and celery (a Celery queue's name), got "
                    + (" and ".join(named) if named else "none")))
    elif not getattr(q, named[0]):
        out.append((f"{key}.queue.{named[0]}", "must not be empty"))
    lo, hi = a.bounds(section)
    if not section.min <= lo <= hi <= section.max:
        which = "min" if not section.min <= lo <= section.max or lo > hi else "max"
        out.append((f"{key}.{which}", f"must keep {key}.min <= max within {sub}.min..max "
                    f"({section.min}..{section.max}), got {lo}..{hi}"))
    elif lo == hi:
        where = f"{key}.max" if a.max is not None else f"{sub}.max"
        why = "" if a.max is not None or "max" in raw else f" ({sub}.max defaults to its count)"
        out.append((where, f"leaves nothing to scale: the autoscaler keeps {sub} within "
                    f"{lo}..{hi}{why}; set {sub}.max to the most processes it may run"))
    if q.redis is not None and redis_py_missing():
        out.append((f"{key}.queue.redis", f"reading the queue needs redis-py in the daemon's "
                    f"Python ({sys.executable}), which cannot import it: pip install 'redis>=5' "
                    "there (or the ultrascale[app] extra)"))
    return out
