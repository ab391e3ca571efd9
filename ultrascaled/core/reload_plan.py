"""What a spec reload does, decided before anything is done: the one decision that a reload
(`POST /fleet/reload`, SIGHUP) applies and that its dry run (`POST /fleet/reload/plan`,
`ultrascalectl diff`) shows, so a dry run never shows what a reload would not do.

`decide` is pure: it reads the running spec, the new one, the count, each instance's state and
the fingerprint it was started with, and a function giving the fingerprint a port would start
with under a spec. It raises ScaleRefused with the reload's own refusal, or returns a
ReloadDecision: the keys changed, the count before and after, which ports start, stop and
restart (each with why), whether nginx is reconfigured, and the memory budget before and after.
"""
from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from ultrascaled.core.control import ScaleRefused
from ultrascaled.core.plan import ReloadDiff, reload_diff
from ultrascaled.core.states import State
from ultrascaled.spec import Spec, budget_errors
from ultrascaled.spec.envfile import FileEnv, looks_secret

MIB = 1 << 20

S = State
# The keys whose change makes nginx take the new settings (the static upstream lists the
# instances' whole range): nginx.* and these.
NGINX_INSTANCE_KEYS = ("instances.max", "instances.base_port", "instances.host")
# Values never shown: an app.env value whose name looks secret (spec/envfile.SECRETISH, or
# PASS/AUTH in it), and every variable read from app.env_file (app.file_env.NAME: those files
# hold the secrets) are shown as HIDDEN.
SECRET_NAME = re.compile(r"PASS|AUTH", re.IGNORECASE)
HIDDEN = "(hidden)"


@dataclass(frozen=True)
class KeyChange:
    key: str          # dotted path: gunicorn.workers, app.env.DJANGO_DEBUG
    old: Any          # JSON-ready; None for a key that was not there (an app.env entry)
    new: Any


@dataclass(frozen=True)
class ReloadDecision:
    spec: Spec
    count_before: int
    count: int                                  # the count the fleet runs at after the reload
    sections: tuple[str, ...]                   # top-level sections changed (the reload's `changed`)
    keys: tuple[KeyChange, ...]                 # every leaf key changed
    diff: ReloadDiff                            # ports added, removed, restarted
    why: Mapping[int, tuple[str, ...]] = field(default_factory=dict)   # port -> why it restarts
    nginx_keys: tuple[str, ...] = ()            # keys that make nginx take new settings

    @property
    def nginx_reconfigure(self) -> bool:
        return bool(self.nginx_keys)

    @property
    def changes_anything(self) -> bool:
        d = self.diff
        return bool(self.keys or d.added or d.removed or d.changed or self.count != self.count_before)


def memory_budget(spec: Spec, count: int) -> dict[str, Any]:
    """The memory arithmetic a reload checks (spec/budget.py): worst case, every process at
    memory.worker_limit_mb, against memory.fleet_budget_mb."""
    w, limit = spec.workers, spec.memory.worker_limit_mb
    return {"instances": count, "workers": w, "worker_limit_mb": limit,
            "worst_case_mb": count * (w + 1) * limit, "fleet_budget_mb": spec.memory.fleet_budget_mb}


def decide(old: Spec, new: Spec, count: int, instances: Mapping[int, tuple[State, str]],
           fingerprint: Callable[[Spec, int], str], *, shutting_down: bool = False,
           smallest_process: Callable[[str], int | None] = lambda metric: None) -> ReloadDecision:
    """The reload of `old` (running at `count`) to `new`. `instances`: port -> (state, the
    fingerprint it was started with); `fingerprint(spec, port)`: what `port` would be started
    with under `spec`; `smallest_process(metric)`: the smallest process of the fleet as measured
    now, in bytes (None: not measured). Raises ScaleRefused("spec_invalid", ...) as the reload refuses."""
    if new.name != old.name or new.paths.state_dir != old.paths.state_dir:
        raise ScaleRefused("spec_invalid", "`name` and `paths.state_dir` cannot change on a reload; "
                           "restart the daemon to move the fleet")
    smallest = smallest_process(new.memory.metric)
    if smallest is not None and new.memory.worker_limit_mb * MIB < smallest:
        raise ScaleRefused("spec_invalid", f"memory.worker_limit_mb: {new.memory.worker_limit_mb} MiB is below "
                           f"the smallest process this fleet runs ({smallest / MIB:.0f} MiB {new.memory.metric}, "
                           "measured now): every process would be over it from its boot and recycled again and "
                           f"again; give at least {math.ceil(smallest / MIB * 1.5)} (1.5 x that)")
    sections = tuple(f.name for f in fields(Spec) if f.name != "source" and getattr(old, f.name) != getattr(new, f.name))
    after = count if new.instances.count == old.instances.count else new.instances.count
    after = max(new.instances.min, min(new.instances.max, after))
    errors = budget_errors(new, after)
    if errors:
        raise ScaleRefused("spec_invalid", "; ".join(errors))
    keys = key_changes(old, new)
    changed_keys = {k.key for k in keys}
    nginx_keys = tuple(k for k in sorted(changed_keys) if k.startswith("nginx.") or k in NGINX_INSTANCE_KEYS)
    wanted = () if shutting_down else tuple(new.port(i) for i in range(after))
    diff = reload_diff(dict(instances), wanted, {p: fingerprint(new, p) for p in wanted})
    why = {p: restart_reasons(old, new, p, instances[p], fingerprint, keys) for p in diff.changed}
    return ReloadDecision(new, count, after, sections, keys, diff, why, nginx_keys)


def restart_reasons(old: Spec, new: Spec, port: int, seen: tuple[State, str],
                    fingerprint: Callable[[Spec, int], str], keys: tuple[KeyChange, ...]) -> tuple[str, ...]:
    """Why `port` restarts: its state (FATAL and BACKOFF are tried again by any reload), or the
    changed keys that each, alone, change the command it starts with."""
    state, running = seen
    if state in (S.FATAL, S.BACKOFF):
        return (f"it is {state.value}: a reload starts it again",)
    base = _fp(fingerprint, old, port)
    found = []
    for k in keys:
        if k.key == "name" or k.key.startswith("paths.state_dir"):
            continue
        try:
            one = with_key(old, k.key, lookup(new, k.key))
        except (KeyError, AttributeError, TypeError, ValueError):
            continue
        fp = _fp(fingerprint, one, port)
        if fp is not None and fp != base:
            found.append(k.key)
    if found:
        return tuple(f"{k} changed" for k in found)
    if base is not None and running != base:
        return ("it runs another command than the running spec starts (adopted, or started "
                "before); the new spec's command differs too",)
    return ("its command changes (several keys together)",)


def _fp(fingerprint: Callable[[Spec, int], str], spec: Spec, port: int) -> str | None:
    try:
        return fingerprint(spec, port)
    except Exception:  # noqa: BLE001 - a key that cannot stand alone names no reason
        return None


# ---- keys: a spec as dotted leaves -----------------------------------------------------------

def leaves(value: Any, prefix: str = "") -> dict[str, Any]:
    """{dotted key: value} for every leaf of a spec (dataclass sections; app.env per variable,
    and app.env_file's variables as app.file_env.NAME)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for f in fields(value):
            if f.metadata.get("internal") and f"{prefix}{f.name}" != "app.file_env":
                continue
            out.update(leaves(getattr(value, f.name), f"{prefix}{f.name}."))
        return out
    if prefix == "processes." and isinstance(value, Mapping):   # processes.NAME.KEY
        out = {}
        for name, entry in value.items():
            out.update(leaves(entry, f"processes.{name}."))
        return out
    if (prefix in ("app.env.", "app.file_env.") or PROCESS_ENV.fullmatch(prefix)) and isinstance(value, Mapping):
        return {f"{prefix}{k}": value[k] for k in value}
    return {prefix[:-1]: value}


PROCESS_ENV = re.compile(r"processes\.[A-Za-z0-9_-]+\.env\.")


def key_changes(old: Spec, new: Spec) -> tuple[KeyChange, ...]:
    a, b = leaves(old), leaves(new)
    out = []
    for key in sorted(a.keys() | b.keys()):
        va, vb = a.get(key), b.get(key)
        if va != vb or (key in a) != (key in b):
            out.append(KeyChange(key, shown(key, va), shown(key, vb)))
    return tuple(out)


def shown(key: str, value: Any) -> Any:
    """A value as JSON can carry it; an app.env value named like a secret is HIDDEN."""
    if value is not None and (key.startswith("app.file_env.") or (key.startswith("app.env.") and (
            looks_secret(key[8:]) or SECRET_NAME.search(key[8:])))):
        return HIDDEN
    var = key.rpartition(".")[2]
    if value is not None and PROCESS_ENV.match(key) and (looks_secret(var) or SECRET_NAME.search(var)):
        return HIDDEN   # a worker type's env: named like a secret, as app.env's
    return plain(value)


def plain(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in fields(value)}
    return str(value)


def lookup(spec: Any, key: str) -> Any:
    if key.startswith("app.env."):
        return spec.app.env.get(key[8:], _ABSENT)
    if key.startswith("app.file_env."):
        return spec.app.file_env.get(key[13:], _ABSENT)
    obj = spec
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


_ABSENT = object()


def with_key(spec: Any, key: str, value: Any) -> Any:
    """`spec` with one dotted key set to `value` (an app.env or app.env_file variable: added,
    changed or removed)."""
    if key.startswith("app.file_env."):
        env = dict(spec.app.file_env.items())
        name = key[13:]
        if value is _ABSENT:
            env.pop(name, None)
        else:
            env[name] = value
        return dataclasses.replace(spec, app=dataclasses.replace(spec.app, file_env=FileEnv(env)))
    if key.startswith("app.env."):
        env = dict(spec.app.env)
        name = key[8:]
        if value is _ABSENT:
            env.pop(name, None)
        else:
            env[name] = value
        return dataclasses.replace(spec, app=dataclasses.replace(spec.app, env=env))
    head, _, rest = key.partition(".")
    if not rest:
        return dataclasses.replace(spec, **{head: value})
    return dataclasses.replace(spec, **{head: with_key(getattr(spec, head), rest, value)})


def describe(d: ReloadDecision, old: Spec) -> dict[str, Any]:
    """The decision as the API answers it (the dry run), JSON-ready."""
    diff = d.diff
    nginx_on = d.spec.nginx.mode != "off" or old.nginx.mode != "off"
    upstream = bool(diff.added or diff.removed)
    return {
        "changes": d.changes_anything,
        "changed": list(d.sections),
        "keys": [{"key": k.key, "old": k.old, "new": k.new} for k in d.keys],
        "desired": {"before": d.count_before, "after": d.count},
        "restarting": [{"port": p, "why": list(d.why.get(p, ()))} for p in diff.changed],
        "added": list(diff.added),
        "removed": list(diff.removed),
        "unchanged": list(diff.unchanged),
        "nginx": {
            "mode": {"before": old.nginx.mode, "after": d.spec.nginx.mode},
            "reconfigure": d.nginx_reconfigure and nginx_on,
            "keys": list(d.nginx_keys),
            "upstream_changes": upstream and nginx_on,
            "upstream_servers": d.spec.nginx.upstream_servers,
        },
        "budget": {"memory": {"before": memory_budget(old, d.count_before),
                              "after": memory_budget(d.spec, d.count)}},
    }
