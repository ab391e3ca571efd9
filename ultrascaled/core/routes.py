"""Routes: request paths folded into a bounded set of names, and the canary's judgement per
route (a route that fails on the canary far more than on the old instances, even at low
traffic).

A route is ``METHOD /path`` with every segment that looks like an id (digits, a UUID, a long
hex or mixed token, anything with characters other than letters, digits, ``-``, ``_``, ``.``)
replaced by ``:id``, at most ``MAX_DEPTH`` segments deep, so ``GET /polls/42/vote/`` and
``GET /polls/7/vote/`` are one route, ``GET /polls/:id/vote/``.

The per-route test is one-sided, for small counts: Fisher's exact test of the canary's 5xx
share on a route against the old instances' on the same route, or, for a route the old
instances never answered (a new route), a binomial test against the old instances' overall 5xx
rate. A route fails with at least ``min_errors`` 5xx on the canary and a p-value under
``p_value`` divided by the number of routes tested (Bonferroni: many routes, one verdict).

Pure: no I/O, no clock.

The two tails are written here rather than taken from scipy (``scipy.stats.fisher_exact``,
``binomtest``): a 40 MB dependency of the daemon for two sums; tests check them against exact
rational arithmetic.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Mapping, Optional

MAX_DEPTH = 6
MAX_PATH = 512
ID = ":id"
_WORD = re.compile(r"[A-Za-z][A-Za-z_.-]{0,39}\Z")
_METHODS = frozenset("GET HEAD POST PUT PATCH DELETE OPTIONS".split())


def _segment(seg: str) -> str:
    if not seg or _WORD.match(seg):
        return seg
    # letters with a few digits (v2, api2, page-2.html, favicon-32x32.png): a name, not an id
    if len(seg) <= 20 and re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]*", seg) and \
            sum(c.isdigit() for c in seg) <= 3:
        return seg
    return ID


def normalise(method: Optional[str], path: Optional[str]) -> Optional[str]:
    """The route name of one request, or None for a line without a path."""
    if not path or not path.startswith("/"):
        return None
    path = path[:MAX_PATH]
    segs = path.split("/")[1:]
    tail = "/" if path.endswith("/") and len(segs) > 1 else ""
    segs = [s for s in segs if s]
    deeper = len(segs) > MAX_DEPTH
    name = "/" + "/".join(_segment(s) for s in segs[:MAX_DEPTH]) + ("/..." if deeper else tail)
    m = method if method in _METHODS else "OTHER"
    return f"{m} {name}"


# ---- the tails ----------------------------------------------------------------------------

def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def _tail(first: int, last: int, log_term) -> float:
    """sum(exp(log_term(x)) for x in first..last), stopping once the terms are negligible."""
    total, peak = 0.0, -math.inf
    for x in range(first, last + 1):
        lt = log_term(x)
        if lt > peak:
            peak = lt
        elif lt < peak - 40:          # past the mode and e^-40 of the largest term: done
            break
        total += math.exp(lt)
    return min(1.0, total)


def fisher_greater(k: int, n: int, k0: int, n0: int) -> float:
    """One-sided Fisher's exact test: P(X >= k) with X the canary's 5xx count when the
    k + k0 5xx of both groups fell at random among the n + n0 requests (hypergeometric)."""
    total, bad = n + n0, k + k0
    if n <= 0 or k <= 0:
        return 1.0
    denom = _log_comb(total, n)
    return _tail(k, min(n, bad),
                 lambda x: _log_comb(bad, x) + _log_comb(total - bad, n - x) - denom)


def binomial_greater(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p)."""
    if k <= 0:
        return 1.0
    if p <= 0:
        return 0.0
    if p >= 1:
        return 1.0
    lp, lq = math.log(p), math.log1p(-p)
    return _tail(k, n, lambda x: _log_comb(n, x) + x * lp + (n - x) * lq)


# ---- the judgement ------------------------------------------------------------------------

Counts = Mapping[str, tuple[int, int]]      # route -> (requests, 5xx)


def delta(before: Counts, after: Counts) -> dict[str, tuple[int, int]]:
    """The figures between two cumulative readings (a route forgotten or reset in between
    counts from zero; routes without requests in between are left out)."""
    out = {}
    for route, (n, bad) in after.items():
        n0, bad0 = before.get(route, (0, 0))
        if n0 > n or bad0 > bad:
            n0 = bad0 = 0
        if n > n0:
            out[route] = (n - n0, bad - bad0)
    return out


@dataclass(frozen=True)
class RouteFailure:
    route: str
    canary_requests: int
    canary_errors: int
    old_requests: int
    old_errors: int
    p: float
    test: str                 # "fisher" (the old instances answered the route) or "binomial"
    baseline: float           # the binomial test's rate (0 with fisher)

    def describe(self, limit: float) -> str:
        if self.test == "fisher":
            old = f"old instances {self.old_errors} of {self.old_requests}"
        else:
            old = f"a route the old instances did not answer, tested against their 5xx rate {self.baseline:.2%}"
        return (f"route {self.route}: canary 5xx on {self.canary_errors} of {self.canary_requests} "
                f"requests vs {old} (p = {self.p:.2g} < {limit:.2g})")


def failing_routes(canary: Counts, old: Counts, old_total: tuple[int, int], *, p_value: float,
                   min_errors: int, fallback_rate: float) -> tuple[list[RouteFailure], float]:
    """The routes that fail, most significant first, and the per-route p-value limit used.
    ``old_total``: the old instances' (requests, 5xx) over every route; with fewer than 20
    requests there, a new route is tested against ``fallback_rate`` instead."""
    tested = [r for r, (n, _) in canary.items() if n > 0]
    limit = p_value / max(1, len(tested))
    req0, err0 = old_total
    base = (err0 + 1) / (req0 + 2) if req0 >= 20 else fallback_rate
    out = []
    for route in tested:
        n, k = canary[route]
        if k < min_errors:
            continue
        n0, k0 = old.get(route, (0, 0))
        if n0 > 0:
            p, test, rate = fisher_greater(k, n, k0, n0), "fisher", 0.0
        else:
            p, test, rate = binomial_greater(k, n, base), "binomial", base
        if p < limit:
            out.append(RouteFailure(route, n, k, n0, k0, p, test, rate))
    out.sort(key=lambda f: (f.p, f.route))
    return out, limit
