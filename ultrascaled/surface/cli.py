"""ultrascalectl: the operator's CLI. Standard library only, so it answers in milliseconds.

Exit codes: 0 done; 1 the operation failed or timed out; 2 bad arguments; 3 the daemon cannot
be reached; 4 the daemon refused the request (its message says why). Every command, its
options and examples: docs/cli.md.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import socket
import time

DEFAULT_API = "http://127.0.0.1:9000"
EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_REFUSED = 1, 2, 3, 4


class CtlError(Exception):
    def __init__(self, message: str, code: int):
        self.code = code
        super().__init__(message)


class Api:
    """A minimal HTTP/1.0 client over a socket (TLS for https://): http.client or urllib would
    cost ~25-30 ms of imports on every call. Bodies are JSON and say so; a request without a
    body sends no Content-Type."""

    def __init__(self, base: str, token: str | None, timeout: float = 10.0, ca_file: str | None = None):
        self.base = base.rstrip("/")
        scheme, sep, rest = self.base.partition("://")
        if not sep or scheme not in ("http", "https"):
            raise CtlError(f"--api must look like http://HOST:PORT or https://HOST:PORT, got {base!r}",
                           EXIT_USAGE)
        host, _, port = rest.rpartition(":")
        if not (port.isascii() and port.isdigit()) or not host:
            raise CtlError(f"--api must look like {scheme}://HOST:PORT, got {base!r}", EXIT_USAGE)
        self.host, self.port = host.strip("[]"), int(port)
        self.tls = scheme == "https"
        self.ca_file = ca_file
        self.token = token
        self.timeout = timeout

    def connect(self, timeout: float | None) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=timeout)
        if not self.tls:
            return sock
        import ssl  # only for https: it costs ~10 ms of imports
        try:
            ctx = ssl.create_default_context(cafile=self.ca_file)
            return ctx.wrap_socket(sock, server_hostname=self.host)
        except ssl.SSLError as exc:
            sock.close()
            why = ": ".join(filter(None, [exc.reason, getattr(exc, "verify_message", None)])) or str(exc)
            hint = "" if self.ca_file else " (give the API's CA with --ca-file)"
            raise CtlError(f"TLS with {self.base} failed: {why}{hint}", EXIT_UNREACHABLE)
        except OSError:
            sock.close()
            raise

    def open(self, method: str, path: str, body: bytes | None = None, timeout: float | None = -1):
        """Send the request; return (status, headers, socket file positioned at the body)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        head = [f"{method} {path} HTTP/1.0", f"Host: {host}:{self.port}"]
        if self.token:
            head.append(f"Authorization: Bearer {self.token}")
        if body is not None:
            head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        try:
            sock = self.connect(self.timeout if timeout == -1 else timeout)
            sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + (body or b""))
            f = sock.makefile("rb")
            sock.close()  # the file keeps the connection open
            status = int(f.readline().split()[1])
            headers = {}
            while (line := f.readline().strip()):
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            return status, headers, f
        except (OSError, IndexError, ValueError) as exc:
            reason = getattr(exc, "strerror", None) or exc
            raise CtlError(f"cannot reach ultrascaled at {self.base}: {reason}", EXIT_UNREACHABLE)

    def fetch(self, method: str, path: str, body: bytes | None = None,
              timeout: float | None = -1) -> tuple[int, dict, bytes]:
        status, headers, f = self.open(method, path, body, timeout)
        with f:
            try:
                return status, headers, f.read()
            except OSError as exc:
                raise CtlError(f"lost the connection to {self.base}: {exc}", EXIT_UNREACHABLE)

    @staticmethod
    def check(status: int, raw: bytes) -> None:
        """Raise the daemon's error (code and message) for a non-2xx answer."""
        if 200 <= status < 300:
            return
        try:
            err = json.loads(raw)["error"]
        except (ValueError, KeyError, TypeError):
            raise CtlError(f"HTTP {status}", EXIT_REFUSED)
        msg = err.get("message", "")
        if err.get("errors"):
            msg += "\n" + "\n".join(f"  {e}" for e in err["errors"])
        raise CtlError(f"{err.get('code', status)}: {msg}", EXIT_REFUSED)

    def request(self, method: str, path: str, body: dict | None = None, timeout: float | None = -1) -> dict:
        status, _, raw = self.fetch(method, path, json.dumps(body).encode() if body is not None else None, timeout)
        self.check(status, raw)
        try:
            return json.loads(raw or b"{}")
        except ValueError:
            raise CtlError(f"not JSON from {self.base}{path}", EXIT_FAILED)


def fmt_bytes(n: int | None) -> str:
    if not n:
        return "-"
    return f"{n / (1024 * 1024):.0f}M"


def fmt_uptime(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def render_status(fleet: dict) -> str:
    rows = [("PORT", "PID", "STATE", "UPTIME", "WORKERS", "RSS/WORKER", "RESTARTS", "UPSTREAM", "LAST EXIT",
             "RELEASE")]
    for i in fleet["instances"]:
        workers = i.get("workers") or []
        rss = ",".join(fmt_bytes(w["rss"]) for w in workers) or "-"
        rows.append((str(i["port"]), str(i["pid"] or "-"), i["state"], fmt_uptime(i.get("uptime")),
                     str(len(workers)), rss, str(i["restarts"]), "yes" if i.get("in_upstream") else "no",
                     i.get("last_exit") or "-", i.get("release") or "app.directory"))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    mem = fleet.get("memory", {})
    head = (f"fleet {fleet['fleet']}: {fleet['ready']}/{fleet['desired']} ready; "
            f"memory {fmt_bytes(mem.get('total_rss_bytes'))} of {fmt_bytes(mem.get('budget_bytes'))}")
    g = fleet.get("gunicorn") or {}
    if g.get("worker_class"):
        head += (f"; {g.get('workers')} x {g['worker_class']} per instance"
                 + (f" ({g['requests_per_worker']} requests at once each)"
                    if g.get("requests_per_worker") else ""))
    if (fleet.get("deploy") or {}).get("rollout"):
        head += "\n" + deploy_progress(fleet)
    up = fleet.get("upstream") or {}
    if up.get("ok") is False:
        head += f"\nupstream update FAILED: {up.get('error')}"
    notes = [f"  {i['port']}: {i['reason']}" for i in fleet["instances"]
             if i["state"] in ("backoff", "fatal") and i.get("reason")]
    return "\n".join([head, *lines] + render_spares(fleet.get("spares") or [])
                      + (["reasons:", *notes] if notes else []))


def render_spares(spares: list[dict]) -> list[str]:
    """Warm spares, apart from the serving instances (docs/spares.md): never in the upstream."""
    if not spares:
        return []
    rows = [("SPARE", "PID", "STATE", "READY", "RELEASE", "NOTE")]
    for s in spares:
        rows.append((str(s["port"]), str(s.get("pid") or "-"), s["state"], "yes" if s.get("ready") else "no",
                     s.get("release") or "app.directory", s.get("reason") or ""))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    ready = sum(1 for s in spares if s.get("ready"))
    return [f"spares: {ready}/{len(spares)} ready (not capacity; a takeover hands one a serving port)",
            *("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows)]


def wait_until(api: Api, done, timeout: float, show, failed=None, *, fatal_fails: bool = True,
               interval: float = 0.1, after_timeout: str = "") -> dict:
    """Poll /fleet until `done`; exit 1 at once when a wanted instance is FATAL (it would only
    run out the timeout; unless `fatal_fails` is off) or `failed(fleet)` names a failure, else
    when `timeout` runs out (`after_timeout` is added to that message)."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        fleet = api.request("GET", "/fleet")
        line = show(fleet)
        if line != last:
            print(line, file=sys.stderr)
            last = line
        if done(fleet):
            return fleet
        problems = (fatal(fleet) if fatal_fails else []) + (failed(fleet) if failed else [])
        if problems:
            raise CtlError("\n".join(problems), EXIT_FAILED)
        if time.monotonic() >= deadline:
            raise CtlError(f"timed out after {timeout:g}s; {line}{after_timeout}", EXIT_FAILED)
        time.sleep(interval)


def fatal(fleet: dict) -> list[str]:
    """Wanted instances that are FATAL with no restart pending, with their reasons: they stay
    so until an operator restart or a reload."""
    wanted = set(fleet["ports"])
    return [f"instance {i['port']} is FATAL: {i.get('reason') or 'no reason given'}"
            for i in fleet["instances"]
            if i["port"] in wanted and i["state"] == "fatal" and not i.get("restart_pending")]


def restart_failed(ports: list[int]):
    """Restarts of `ports` given up: the replacement master could not start (the running one
    serves on), with the reason."""
    def check(fleet: dict) -> list[str]:
        return [f"instance {i['port']} could not be restarted (its running master serves on): {i['restart_failed']}"
                for i in fleet["instances"] if i["port"] in ports and i.get("restart_failed")
                and not i.get("restart_pending")]
    return check


def progress(fleet: dict) -> str:
    states: dict[str, int] = {}
    for i in fleet["instances"]:
        states[i["state"]] = states.get(i["state"], 0) + 1
    parts = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
    return f"{fleet['ready']}/{fleet['desired']} ready ({parts or 'no instances'})"


def fleet_converged(fleet: dict) -> bool:
    ports = set(fleet["ports"])
    inst = {i["port"]: i for i in fleet["instances"]}
    return (set(inst) == ports and all(i["serving"] and not i.get("restart_pending")
                                       for i in inst.values()))


def worker_types(api: Api) -> dict:
    """GET /processes without `web`: the `processes:` worker types ({} for a daemon without
    any, or one too old to answer)."""
    try:
        types = api.request("GET", "/processes")
    except CtlError as exc:
        if exc.code == EXIT_REFUSED:
            return {}
        raise
    return {n: t for n, t in types.items() if n != "web"}


def table(rows: list[tuple[str, ...]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    return [indent + "  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]


def fmt_when(t: float | None, now: float) -> str:
    """A Unix time as local HH:MM:SS with how far it is from now."""
    if t is None:
        return "-"
    d = t - now
    rel = f"in {fmt_uptime(d)}" if d >= 0 else f"{fmt_uptime(-d)} ago"
    return f"{time.strftime('%H:%M:%S', time.localtime(t))} ({rel})"


def job_line(name: str, t: dict, now: float) -> str:
    when = f"schedule {t['schedule']}" if t.get("schedule") else f"every {t.get('every')}"
    last = t.get("last_run")
    said = f"last run {last['run']} {last['outcome']} {fmt_when(last.get('started'), now)}" if last else "no run yet"
    return f"{name} (job, {when}, {t.get('concurrency')}): next {fmt_when(t.get('next_run'), now)}; {said}"


def render_workers(types: dict) -> str:
    """The worker and job types after the web instances: one table per type (a job's: its runs going)."""
    out, now = [], time.time()
    for name, t in types.items():
        if t["kind"] == "job":
            out.append(job_line(name, t, now) + (f"; runs skipped: waiting for {', '.join(t['waiting_for'])}"
                                                 if t.get("waiting_for") else ""))
            if not t["instances"]:
                continue
            rows = [("RUN", "PID", "STATE", "UPTIME", "REASON")]
            rows += [(str(i.get("run", i.get("index", "-"))), str(i["pid"] or "-"), i["state"],
                      fmt_uptime(i.get("uptime")), i.get("reason") or "") for i in t["instances"]]
        else:
            waiting = t.get("waiting_for") or []
            out.append(f"{name} ({t['kind']}): {t['ready']}/{t['desired']} running"
                       + (f", waiting for {', '.join(waiting)}" if waiting else ""))
            rows = [("INDEX", "PID", "STATE", "UPTIME", "RSS", "RESTARTS", "REASON")]   # RSS: its process tree
            rows += [(str(i.get("index", "-")), str(i["pid"] or "-"), i["state"], fmt_uptime(i.get("uptime")),
                      fmt_bytes(i.get("rss")), str(i["restarts"]), i.get("reason") or "") for i in t["instances"]]
        out += table(rows)
    return "\n".join(out)


def cmd_status(api: Api, args) -> int:
    fleet = api.request("GET", "/fleet")
    types = {} if args.json else worker_types(api)
    print(json.dumps(fleet, indent=2) if args.json else
          "\n".join(filter(None, [render_status(fleet), render_workers(types)])))
    ok = fleet["ready"] == fleet["desired"] and all(t["ready"] == t["desired"] for t in types.values()
                                                    if t["kind"] != "job")
    return 0 if ok else EXIT_FAILED


def processes_converged(wanted: dict[str, int]):
    """Each worker type in `wanted` runs exactly that many processes, all running."""
    def done(types: dict) -> bool:
        return all(name in types and types[name]["desired"] == n and len(types[name]["instances"]) == n
                   and all(i["state"] == "running" for i in types[name]["instances"])
                   for name, n in wanted.items())
    return done


def wait_processes(api: Api, wanted: dict[str, int], timeout: float) -> dict:
    """Poll GET /processes until the worker types run as `wanted`; exit 1 at once when a
    wanted process is FATAL (it stays so until the type is scaled again)."""
    deadline = time.monotonic() + timeout
    done, last = processes_converged(wanted), None
    while True:
        types = api.request("GET", "/processes")
        line = "; ".join(f"{n}: {types.get(n, {}).get('ready', 0)}/{c} running" for n, c in wanted.items())
        if line != last:
            print(line, file=sys.stderr)
            last = line
        if done(types):
            return types
        fatal = [f"{n} process {i.get('index')} is FATAL: {i.get('reason') or 'no reason given'}"
                 for n, c in wanted.items() for i in types.get(n, {}).get("instances", [])
                 if i["state"] == "fatal" and i.get("index", 0) < c]
        if fatal:
            raise CtlError("\n".join(fatal), EXIT_FAILED)
        if time.monotonic() >= deadline:
            raise CtlError(f"timed out after {timeout:g}s; {line}", EXIT_FAILED)
        time.sleep(0.1)


def cmd_scale(api: Api, args) -> int:
    workers = {name: n for name, n in args.targets if name != "web"}
    if args.instances is not None:
        answer = api.request("POST", "/fleet/scale", {"instances": args.instances})
        if isinstance(answer, dict) and answer.get("autoscale"):
            print(f"note: {answer['autoscale']}", file=sys.stderr)
    for name, n in workers.items():
        answer = api.request("POST", f"/processes/{name}/scale", {"instances": n})
        if isinstance(answer, dict) and answer.get("autoscale"):   # the type's queue autoscaling paused
            print(f"note: {answer['autoscale']}", file=sys.stderr)
    if args.no_wait:
        said = ([f"desired instances: {args.instances}"] if args.instances is not None else []) + \
            [f"desired {name}: {n}" for name, n in workers.items()]
        print("\n".join(said))
        return 0
    started = time.monotonic()
    if args.instances is not None:
        fleet = wait_until(api, fleet_converged, args.timeout, progress)
        print(f"fleet at {fleet['ready']} instances: ports {', '.join(map(str, fleet['ports'])) or 'none'}")
    if workers:
        left = max(0.0, args.timeout - (time.monotonic() - started))
        types = wait_processes(api, workers, left)
        for name in workers:
            print(f"{name} at {types[name]['ready']} processes running")
    return 0


def pids(fleet: dict) -> dict[int, int | None]:
    return {i["port"]: i["pid"] for i in fleet["instances"]}


def restarted(fleet: dict, ports: list[int], before: dict[int, int | None]) -> bool:
    """Every one of `ports` runs a new process (a pid other than `before`'s) and serves."""
    inst = {i["port"]: i for i in fleet["instances"]}
    return all(p in inst and inst[p]["state"] == "running" and inst[p]["serving"]
               and not inst[p].get("restart_pending") and inst[p]["pid"] not in (None, before.get(p))
               for p in ports)


def port_or_type(text: str) -> int | str:
    """`restart`'s target: a port (digits) or a process type's name."""
    if text.isdigit():
        return count(text)
    if 0 < len(text) <= 64 and all(c.isascii() and (c.isalnum() or c in "-_") for c in text):
        return text
    raise argparse.ArgumentTypeError(f"must be a port or a process type name, got {text[:40]!r}")


def restart_type(api: Api, args) -> int:
    """`restart NAME`: a worker type one process at a time; wait until each runs a new pid."""
    before = {i["index"]: i["pid"] for i in api.request("GET", "/processes").get(args.port, {}).get("instances", [])}
    answer = api.request("POST", f"/processes/{args.port}/restart")
    if args.no_wait:
        print(f"{answer['process']}: restarting {', '.join(map(str, answer['restarting'])) or 'nothing'}")
        return 0
    deadline = time.monotonic() + args.timeout
    while True:
        t = api.request("GET", "/processes").get(args.port, {})
        insts = t.get("instances", [])
        fatal = [i for i in insts if i["state"] == "fatal"]
        if fatal:
            raise CtlError(f"{args.port} process {fatal[0]['index']} is FATAL: {fatal[0].get('reason')}", EXIT_FAILED)
        done = [i for i in insts if i["state"] == "running" and i["pid"] != before.get(i["index"])]
        if len(done) == len(insts) == t.get("desired", -1):
            print(f"{args.port}: restarted {len(done)} processes")
            return 0
        if time.monotonic() > deadline:
            raise CtlError(f"{args.port}: {len(done)} of {t.get('desired')} processes restarted "
                           f"after {args.timeout:g}s", EXIT_FAILED)
        time.sleep(0.2)


def cmd_restart(api: Api, args) -> int:
    if args.port == "web":   # the web type: the fleet's rolling restart
        args.all, args.port = True, None
    if isinstance(args.port, str):
        return restart_type(api, args)
    path = "/fleet/restart" if args.all else f"/instances/{args.port}/restart"
    before = {} if args.no_wait else pids(api.request("GET", "/fleet"))
    ports = api.request("POST", path).get("restarting", [])
    if args.no_wait:
        print(f"restarting: {', '.join(map(str, ports))}")
        return 0
    wait_until(api, lambda f: fleet_converged(f) and restarted(f, ports, before), args.timeout, progress,
               restart_failed(ports))
    print(f"restarted: {', '.join(map(str, ports))}")
    return 0


def cmd_reload(api: Api, args) -> int:
    if args.dry_run:
        return cmd_diff(api, args)
    if args.spec:
        raise CtlError("reload: --spec needs --dry-run (a reload reads the daemon's own spec file; "
                       "copy FILE there, then reload)", EXIT_USAGE)
    before = pids(api.request("GET", "/fleet")) if args.wait else {}
    result = api.request("POST", "/fleet/reload")
    if args.json:
        print(json.dumps(result, indent=2))
    ports = result.get("restarting") or []
    changed = ", ".join(result.get("changed") or []) or "nothing"
    if not args.json:
        print(f"spec reloaded; changed: {changed}; restarting: {', '.join(map(str, ports)) or 'none'}")
    if args.wait and ports:
        wait_until(api, lambda f: restarted(f, ports, before), args.timeout, progress, restart_failed(ports))
        print(f"restarted: {', '.join(map(str, ports))}")
    return 0


# ---- ultrascalectl diff / reload --dry-run ------------------------------------------------------

MAX_SPEC_BYTES = 1 << 20   # the daemon's own limit for a spec file (spec/yaml_reader.py)
EXIT_CHANGES, EXIT_INVALID = 1, 2


def read_spec_text(path: str) -> str:
    """FILE's text for the dry run: a regular UTF-8 file of at most 1 MiB (the daemon checks it
    again as it checks its own)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise CtlError(f"--spec: {exc.strerror}: {path}", EXIT_USAGE)
    try:
        import stat
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise CtlError(f"--spec: {path} is not a regular file", EXIT_USAGE)
        data = os.read(fd, MAX_SPEC_BYTES + 1)
    except OSError as exc:
        raise CtlError(f"--spec: {exc.strerror}: {path}", EXIT_USAGE)
    finally:
        os.close(fd)
    if len(data) > MAX_SPEC_BYTES:
        raise CtlError(f"--spec: {path} is over {MAX_SPEC_BYTES} bytes", EXIT_INVALID)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CtlError(f"--spec: {path} is not UTF-8 text (byte {exc.start})", EXIT_INVALID)


def cmd_diff(api: Api, args) -> int:
    """What a reload would do (POST /fleet/reload/plan): exit 0 nothing would change, 1 it would
    change something, 2 the spec would be refused."""
    body = {}
    if args.spec:
        body = {"spec": read_spec_text(args.spec), "source": os.path.abspath(args.spec)}
    status, _, raw = api.fetch("POST", "/fleet/reload/plan", json.dumps(body).encode())
    if status in (400, 413):
        try:
            err = json.loads(raw)["error"]
        except (ValueError, KeyError, TypeError):
            err = None
        if isinstance(err, dict) and err.get("code") in ("spec_invalid", "too_large"):
            if err["code"] == "too_large":
                err = {**err, "message": err.get("message", "") + "; a spec this large can be planned from "
                       "the daemon's own spec file: put it there and run `diff` without --spec"}
            if args.json:
                print(json.dumps({"refused": err}, indent=2))
            else:
                print("the reload would be refused; the running spec would stay in force:", file=sys.stderr)
                print(f"  {err['code']}: {err.get('message', '')}", file=sys.stderr)
                for e in err.get("errors") or []:
                    print(f"    {e}", file=sys.stderr)
            return EXIT_INVALID
    Api.check(status, raw)
    try:
        plan = json.loads(raw)
    except ValueError:
        raise CtlError("not JSON from the daemon's /fleet/reload/plan", EXIT_FAILED)
    print(json.dumps(plan, indent=2) if args.json else render_plan(plan))
    return EXIT_CHANGES if plan.get("changes") else 0


def _value(v) -> str:
    return json.dumps(v, ensure_ascii=False)


def render_plan(plan: dict) -> str:
    """The dry run as text: the keys changed, diff-style, then what the reload would do."""
    spec, reads = plan.get("spec", "the spec"), plan.get("reload_reads")
    lines = [f"--- the running spec", f"+++ {spec}"]
    for k in plan.get("keys") or []:
        if k.get("old") is not None or k.get("new") is None:
            lines.append(f"-{k['key']}: {_value(k.get('old'))}" if k.get("old") is not None else f"-{k['key']}")
        if k.get("new") is not None:
            lines.append(f"+{k['key']}: {_value(k['new'])}")
    if not plan.get("keys"):
        lines.append(" (no key changed)")
    d = plan["desired"]
    lines.append("")
    lines.append(f"instances: {d['before']}" + (f" -> {d['after']}" if d["after"] != d["before"] else " (unchanged)"))
    if plan.get("added"):
        lines.append(f"  start: {', '.join(map(str, plan['added']))}")
    if plan.get("removed"):
        lines.append(f"  drain and stop: {', '.join(map(str, plan['removed']))}")
    restarting = plan.get("restarting") or []
    if restarting:
        lines.append(f"restart, one at a time: {', '.join(str(r['port']) for r in restarting)}")
        for r in restarting:
            lines.append(f"  {r['port']}: {'; '.join(r['why'])}")
    else:
        lines.append("restart: none")
    ng = plan.get("nginx") or {}
    mode = ng.get("mode") or {}
    if mode.get("before") == "off" and mode.get("after") == "off":
        lines.append("nginx: off")
    elif ng.get("reconfigure"):
        lines.append(f"nginx: its settings are rewritten, checked and nginx reloaded "
                     f"({', '.join(ng.get('keys') or [])} changed)")
    elif ng.get("upstream_changes"):
        how = ("nginx is reloaded at each change" if ng.get("upstream_servers") == "ready"
               else "the ports' gates open and close; nginx is not reloaded")
        lines.append(f"nginx: settings unchanged; the upstream follows the instances ({how})")
    else:
        lines.append("nginx: unchanged")
    mem = (plan.get("budget") or {}).get("memory") or {}

    def budget(b: dict) -> str:
        return (f"{b['instances']} x ({b['workers']} worker{'' if b['workers'] == 1 else 's'} + 1) x {b['worker_limit_mb']} MiB = "
                f"{b['worst_case_mb']} MiB of {b['fleet_budget_mb']} MiB")
    if mem:
        before, after = budget(mem["before"]), budget(mem["after"])
        lines.append(f"memory, worst case: {before}" + (f" -> {after}" if after != before else " (unchanged)"))
    if reads and spec != reads:
        lines.append(f"note: a reload reads {reads}, not {spec}: copy it there, then `ultrascalectl reload`")
    lines.append("the reload would change nothing" if not plan.get("changes") else
                 "nothing was done (dry run)")
    return "\n".join(lines)


def cmd_events(api: Api, args) -> int:
    data = api.request("GET", f"/events?since={args.since}&limit={max(args.lines, 1)}")
    for e in data["events"][-args.lines:] if args.lines else ():
        print(format_event(e), flush=True)
    if not args.follow:
        return 0
    last = max(args.since, data["last"])  # follow on from the history shown
    try:
        for attempt in itertools.count():  # the daemon may end a stream (not read fast enough): go on
            if attempt:
                time.sleep(0.2)
            status, _, f = api.open("GET", f"/events?follow=1&since={last}", timeout=None)
            with f:
                if status != 200:
                    api.check(status, f.read())
                for raw in f:
                    line = raw.decode().rstrip("\n")
                    if line.startswith("data: "):
                        e = json.loads(line[6:])
                        last = e.get("seq") or last
                        print(format_event(e), flush=True)
    except KeyboardInterrupt:
        return 0
    except CtlError as exc:
        if exc.code != EXIT_UNREACHABLE:
            raise
        raise CtlError(f"event stream ended after event {last}: {exc}", EXIT_UNREACHABLE)
    except OSError as exc:
        raise CtlError(f"event stream ended after event {last}: {exc}", EXIT_UNREACHABLE)


def cmd_jobs(api: Api, args) -> int:
    """The jobs with their next and last runs, or one job's runs; --run starts one now."""
    if args.run and not args.name:
        raise CtlError("jobs --run: name the job to run, e.g. `ultrascalectl jobs nightly --run`", EXIT_USAGE)
    if args.name is not None and not (0 < len(args.name) <= 64 and all(
            c.isascii() and (c.isalnum() or c in "-_") for c in args.name)):
        raise CtlError(f"jobs: {args.name[:40]!r} is not a job name (1-64 letters, digits, - and _)", EXIT_USAGE)
    if args.run:
        answer = api.request("POST", f"/jobs/{args.name}/run")
        print(json.dumps(answer, indent=2) if args.json else
              f"{args.name}: run {answer['run']} starting" +
              (" (the run going is stopped first: concurrency replace)" if answer["action"] == "replace" else ""))
        return 0
    now = time.time()
    if not args.name:
        jobs = api.request("GET", "/jobs")
        if args.json:
            print(json.dumps(jobs, indent=2))
        else:
            print("\n".join(job_line(n, j, now) for n, j in jobs.items()) or
                  "no jobs: the spec has no `kind: job` process type")
        return 1 if any((j.get("last_run") or {}).get("outcome") in ("failed", "timed_out", "spawn_failed")
                        for j in jobs.values()) else 0
    data = api.request("GET", f"/jobs/{args.name}/runs?limit={min(max(args.lines, 1), 1000)}")
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    rows = [("RUN", "STARTED", "WHY", "DURATION", "EXIT", "OUTCOME", "LOG FROM")]
    for r in data["runs"]:
        rows.append((str(r["run"]), fmt_when(r.get("started"), now), r.get("why") or "-",
                     "-" if r.get("duration") is None else f"{r['duration']:.1f}s",
                     "-" if r.get("returncode") is None else str(r["returncode"]), r["outcome"],
                     f"{r.get('log')}:{r.get('log_offset')}" if r.get("log") else "-"))
    print("\n".join(table(rows, indent="")) if data["runs"] else f"{args.name}: no run yet")
    return 0


def build_jobs(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", metavar="NAME", help="one job: its runs, newest first")
    p.add_argument("--run", action="store_true", help="run NAME now, as its concurrency allows "
                   "(forbid refuses while a run goes, exit 4)")
    p.add_argument("-n", "--lines", type=count, default=20, metavar="N",
                   help="runs shown, up to 1000 (default %(default)s)")
    add_json(p)


def cmd_alerts(api: Api, args) -> int:
    data = api.request("GET", "/alerts")
    if args.json:
        print(json.dumps(data, indent=2))
    elif not data["firing"]:
        print("no alert is firing")
    for a in data["firing"]:
        print(f"FIRING {a['alert']}: {a['message']} (since {time.strftime('%H:%M:%S', time.localtime(a['since']))})")
    return 1 if data["firing"] else 0


def cmd_traffic(api: Api, args) -> int:
    data = api.request("GET", f"/traffic?seconds={args.seconds}")
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    if not data["enabled"]:
        print("no traffic figures: nginx.traffic_log is off (or nginx.mode is off)")
        return EXIT_FAILED
    print(render_traffic(data))
    return 0


def render_traffic(data: dict) -> str:
    def row(name: str, w: dict) -> str:
        p95 = "-" if w["p95"] is None else f"{w['p95'] * 1000:.0f}"
        return (f"{name:<8}{w['requests']:>10}{w['requests'] / data['seconds']:>9.1f}{w['errors_5xx']:>8}"
                f"{w['rate_5xx'] * 100:>7.1f}%{p95:>9}")
    lines = [f"last {data['seconds']} s, measured at nginx",
             f"{'PORT':<8}{'REQUESTS':>10}{'REQ/S':>9}{'5XX':>8}{'5XX %':>8}{'P95 MS':>9}"]
    lines += [row(str(i["port"]), i) for i in data["instances"]]
    lines.append(row("fleet", data["fleet"]))
    return "\n".join(lines)


def cmd_logs(api: Api, args) -> int:
    status, headers, body = api.fetch("GET", f"/instances/{args.port}/log?lines={args.lines}")
    api.check(status, body)
    sys.stdout.write(body.decode(errors="replace"))
    sys.stdout.flush()
    offset = int(headers.get("x-offset", "0"))
    try:
        while args.follow:
            time.sleep(0.5)
            status, headers, chunk = api.fetch("GET", f"/instances/{args.port}/log?offset={offset}")
            api.check(status, chunk)
            sys.stdout.write(chunk.decode(errors="replace"))
            sys.stdout.flush()
            offset = int(headers.get("x-offset", offset))
    except KeyboardInterrupt:
        pass
    return 0


# ---- releases (docs/deploys.md) -------------------------------------------------------------------

def deploy_progress(fleet: dict) -> str:
    d = fleet.get("deploy") or {}
    r = d.get("rollout")
    if not r:
        return progress(fleet)
    rel = {i["port"]: i.get("release") or "app.directory" for i in fleet["instances"]}
    # the seconds only on a terminal: in a log each new second would be a new line
    soak = (f", canary serving {r['canary_ready_for']}s" if sys.stderr.isatty() else ", canary serving") \
        if r.get("canary_ready_for") is not None else ""
    return (f"{r['kind']} {r['release'] or 'app.directory'}: {r['phase']}{soak}; "
            + ", ".join(f"{p}={v}" for p, v in sorted(rel.items())))


def wait_rollout(api: Api, args, started: dict) -> int:
    """Wait until the rollout `started` ends; 0 when it completed, 1 when it rolled back."""
    begun = started["rollout"]["started"]

    def ended(fleet: dict) -> bool:
        d = fleet.get("deploy") or {}
        end = d.get("last_outcome")
        return d.get("rollout") is None and bool(end) and end.get("ended", 0) >= begun
    fleet = wait_until(api, ended, args.timeout, deploy_progress, fatal_fails=False, interval=0.2,
                       after_timeout=" (the rollout goes on)")
    end = fleet["deploy"]["last_outcome"]
    if end["outcome"] == "completed":
        print(f"{end['kind']} done: the fleet runs release {end['release'] or 'app.directory'} "
              f"({end['seconds']:g}s)")
        return 0
    raise CtlError(f"{end['kind']} of release {end['release'] or 'app.directory'} failed on "
                   f"{end['failure']}: {end['detail']}; rolled back to "
                   f"{end['from'] or 'app.directory'} ({end['seconds']:g}s)", EXIT_FAILED)


def cmd_deploy(api: Api, args) -> int:
    if args.release:
        body = {"release": args.release}
    else:
        body = {"directory": os.path.abspath(args.directory)}
    if args.allow_data:
        body["allow_data"] = True
    # the answer comes once the release is copied and deploy.release_command has run: --timeout bounds both
    started = api.request("POST", "/fleet/deploy", body, timeout=max(api.timeout, args.timeout))
    r = started["rollout"]
    print(f"deploying release {r['release']} (from {r['from'] or 'app.directory'}); canary: "
          f"{r['canary'] or 'none'}")
    return 0 if args.no_wait else wait_rollout(api, args, started)


def cmd_rollback(api: Api, args) -> int:
    started = api.request("POST", "/fleet/rollback")
    r = started["rollout"]
    print(f"rolling back to release {r['release'] or 'app.directory'} (from {r['from']})")
    return 0 if args.no_wait else wait_rollout(api, args, started)


def cmd_releases(api: Api, args) -> int:
    data = api.request("GET", "/fleet/releases")
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    rows = [("RELEASE", "CREATED", "", "PORTS", "PATH")]
    for r in data["releases"]:
        mark = "current" if r["current"] else "previous" if r["previous"] else \
            "app.directory as it started" if r.get("base") else ""
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["created"])) if r["created"] else "-"
        rows.append((r["id"] or "app.directory", created, mark, ",".join(map(str, r["ports"])) or "-", r["path"]))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
    return 0


def build_deploy(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("directory", nargs="?", metavar="DIR",
                       help="folder to copy into a new release (its .git, .venv and __pycache__ are left out)")
    which.add_argument("--release", metavar="NAME", help="a release already in the releases folder")
    p.add_argument("--allow-data", action="store_true",
                   help="copy what looks like data the app writes (SQLite files, upload folders) "
                        "into the release anyway, instead of refusing; see deploy.shared")
    add_wait(p, 600.0)


def build_rollback(p: argparse.ArgumentParser) -> None:
    add_wait(p, 600.0)


def cmd_plan(api, args) -> int:
    from ultrascaled.surface import plan_command
    return plan_command.run(args)


def cmd_export(api, args) -> int:
    from ultrascaled.export import kube
    return kube.run(args)


# ---- ultrascalectl autoscale status|pause|resume --------------------------------------------

def _shown(name: str, v) -> str:
    if v is None:
        return "-"
    if name in ("cpu_utilization", "cpu_wait_percent"):
        return f"{v:.1f}%"
    return f"{v:.3g}s" if name.endswith("_seconds") else f"{v:.3g}"


def render_autoscale(st: dict) -> str:
    if not st["enabled"]:
        head = "autoscale: off (autoscale.enabled is false in the spec)"
    elif st["paused"]:
        until = ("until resumed" if st.get("paused_until") is None else "until " +
                 time.strftime("%H:%M:%S", time.localtime(st["paused_until"])))
        head = f"autoscale: PAUSED {until} ({st.get('paused_reason') or 'operator'})"
    else:
        head = "autoscale: on"
    host = st.get("host_cpu_percent")
    fleet = st.get("fleet_cpu_percent")
    ready = st.get("ready")
    lines = [head, f"instances {st['current']} (ready {ready if ready is not None else '-'}), "
                   f"replicas {st['min_replicas']}..{st['max_replicas']}"
                   + (f", host CPU {host:.0f}%" if host is not None else "")
                   + (f" (the fleet's own {fleet:.0f}%)" if fleet is not None else "")]
    rows = [("signal", "value", "target", "ratio", "wants")]
    for name, target in st["targets"].items():
        sig = st["signals"].get(name, {})
        ratio = sig.get("ratio")
        rows.append((name, _shown(name, sig.get("value")), _shown(name, target),
                     "-" if ratio is None else f"{ratio:.2f}",
                     str(sig.get("desired") if sig.get("desired") is not None else "-")
                     + (f" ({sig['note']})" if sig.get("note") else "")))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4] for r in rows]
    rec = st.get("recommendation")
    lines.append(f"recommendation: {rec if rec is not None else '-'}")
    if st["decisions"]:
        lines.append("last decisions:")
    for d in st["decisions"][-10:]:
        t = time.strftime("%H:%M:%S", time.localtime(d["time"]))
        move = f"{d['current']} -> {d['desired']}" if d["desired"] != d["current"] else str(d["current"])
        lines.append(f"  {t} {d['action']:10} {move:8} {d['reason']}")
    for name, q in (st.get("processes") or {}).items():   # worker types on their queue's depth
        state = "PAUSED (" + (q.get("paused_reason") or "operator") + ")" if q["paused"] else "on"
        depth = q["queue_depth"] if q["queue_depth"] is not None else "-"
        lines.append(f"{name}: autoscale {state}, queue {q['queue']['list']} at {q['queue']['redis']}"
                     f"{'' if q['reachable'] else ' (UNREACHABLE)'}: depth {depth}, target "
                     f"{q['target']:g} per process, processes {q['current']} "
                     f"(running {q.get('running', '-')}), {q['min']}..{q['max']}")
        last = q.get("last")
        if last:
            move = f"{last['current']} -> {last['desired']}" if last["desired"] != last["current"] \
                else str(last["current"])
            lines.append(f"  last: {last['action']} {move} {last['reason']}")
    return "\n".join(lines)


def cmd_autoscale(api: Api, args) -> int:
    if args.action == "status":
        st = api.request("GET", "/autoscale")
    elif args.action == "pause":
        body = {"reason": args.reason}
        if args.duration is not None:
            body["for"] = args.duration
        st = api.request("POST", "/autoscale/pause", body)
    else:
        st = api.request("POST", "/autoscale/resume",
                         {"process": args.process} if args.process else None)
    print(json.dumps(st, indent=2) if args.json else render_autoscale(st))
    return 0


def duration(text: str) -> str:
    """A pause length: 30m, 90s, 2h, 1h30m or seconds (the daemon reads the same)."""
    from ultrascaled.core.autoscale import parse_duration  # standard library only
    try:
        parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc))
    return text


def build_autoscale(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", title="actions", required=True)
    st = sub.add_parser("status", help="signals, targets, recommendation, the last decisions and why",
                        formatter_class=Formatter)
    add_json(st)
    pause = sub.add_parser("pause", help="hold the count where it is (a manual `scale N` also pauses)",
                           formatter_class=Formatter)
    pause.add_argument("--for", dest="duration", type=duration, default=None, metavar="DURATION",
                       help="for how long: 30m, 90s, 2h, 1h30m or seconds (default: until resumed)")
    pause.add_argument("--reason", default="operator", help="said in the event and the status")
    add_json(pause)
    resume = sub.add_parser("resume", help="let the autoscaler decide again", formatter_class=Formatter)
    resume.add_argument("process", nargs="?", default=None, metavar="NAME",
                        help="a worker type's autoscaling on its queue (default: the web fleet's)")
    add_json(resume)


def format_event(e: dict) -> str:
    t = time.strftime("%H:%M:%S", time.localtime(e["time"])) + f".{int(e['time'] * 1000) % 1000:03d}"
    rest = " ".join(f"{k}={v}" for k, v in e.items() if k not in ("seq", "time", "event", "level"))
    return f"{t} {e['level'][:4].upper():4} {e['event']} {rest}"


def token_of(text: str) -> str | None:
    """The secret of the first token in a token file: a `name:token` or `token` line (the
    daemon reads the same format and knows the caller by the name)."""
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, sep, secret = line.partition(":")
            named = sep and 0 < len(name) <= 64 and all(
                c.isascii() and (c.isalnum() or c in "_.@-") for c in name)
            return secret if named else line
    return None


def count(text: str) -> int:
    """A whole number >= 0 (argparse names the option in its error)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}")
    if n < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {n}")
    return n


def seconds(text: str) -> float:
    try:
        s = float(text)
    except ValueError:
        s = float("nan")
    if s != s:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}")
    if s < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
    return s


def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the daemon's answer as JSON")


def add_wait(p: argparse.ArgumentParser, timeout: float, no_wait: bool = True) -> None:
    if no_wait:
        p.add_argument("--no-wait", action="store_true", help="return once the daemon has taken the request")
    p.add_argument("--timeout", type=seconds, default=timeout, metavar="SECONDS",
                   help="give up waiting after this long, exit 1 (default %(default)g)")


def add_lines(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("-f", "--follow", action="store_true", help=f"then follow new {what} until Ctrl-C")
    p.add_argument("-n", "--lines", type=count, default=50, metavar="N",
                   help=f"show the last N {what} (default %(default)s)")


def scale_target(text: str) -> tuple[str, int]:
    """`N` (the web fleet) or `NAME=N` (a process type; `web=N` is the web fleet)."""
    name, eq, n = text.rpartition("=")
    if not eq:
        return "web", count(text)
    if not name or len(name) > 64 or not all(c.isalnum() or c in "-_" for c in name) or not name.isascii():
        raise argparse.ArgumentTypeError(f"a process type name is letters, digits, - and _, got {name!r}")
    try:
        return name, count(n)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"{name}: {exc}") from None


class ScaleTargets(argparse.Action):
    """INSTANCES...: `targets` [(name, n)], and `instances` the web fleet's count (or None)."""

    def __call__(self, parser, namespace, values, option_string=None):
        names = [name for name, _ in values]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            parser.error(f"INSTANCES: {', '.join(twice)} given twice (a bare N is web)")
        namespace.targets = list(values)
        namespace.instances = dict(values).get("web")


def build_scale(p: argparse.ArgumentParser) -> None:
    p.add_argument("instances", type=scale_target, nargs="+", action=ScaleTargets, metavar="INSTANCES",
                   help="the number of web instances wanted (N), or NAME=N for each process type to "
                        "scale (Heroku's ps:scale form: worker=3 web=4)")
    add_wait(p, 120.0)


def build_restart(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("port", nargs="?", type=port_or_type, metavar="PORT|TYPE",
                       help="the instance on PORT, or every process of a worker TYPE one at a time")
    which.add_argument("--all", action="store_true", help="every instance, one at a time")
    add_wait(p, 300.0)


def build_reload(p: argparse.ArgumentParser) -> None:
    p.add_argument("--wait", action="store_true",
                   help="wait until every instance the reload restarts runs again and serves")
    add_wait(p, 300.0, no_wait=False)
    p.add_argument("--dry-run", action="store_true",
                   help="show what the reload would do and do nothing (as `diff`; exit 0 nothing, "
                        "1 changes, 2 refused)")
    add_diff_options(p)


def add_diff_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--spec", metavar="FILE",
                   help="plan the reload to this spec file instead of the daemon's own spec file")
    add_json(p)


def build_diff(p: argparse.ArgumentParser) -> None:
    add_diff_options(p)


def build_logs(p: argparse.ArgumentParser) -> None:
    p.add_argument("port", type=count, metavar="PORT", help="the instance")
    add_lines(p, "lines")


def build_events(p: argparse.ArgumentParser) -> None:
    add_lines(p, "events")
    p.add_argument("--since", type=count, default=0, metavar="SEQ",
                   help="only events after this sequence number (default %(default)s: all)")


def build_traffic(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seconds", type=count, default=60, metavar="N",
                   help="the last N seconds, 1..3600 (default %(default)s)")
    add_json(p)


def build_plan(p: argparse.ArgumentParser) -> None:
    from ultrascaled.surface import plan_command  # ~60 ms of imports that only `plan` pays
    plan_command.add_arguments(p)


def build_export(p: argparse.ArgumentParser) -> None:
    from ultrascaled.export import kube  # the exporter's imports are paid only by `export`
    kube.add_arguments(p)


# name: (function, one-line help, what adds its arguments). Each subcommand's parser is built
# only when that command is given (see Commands).
COMMANDS: dict[str, tuple] = {
    "status": (cmd_status, "the fleet as a table (exit 1 unless every instance serves)", add_json),
    "scale": (cmd_scale, "set the number of instances (or of a process type's: worker=3) and wait "
                         "until they serve", build_scale),
    "restart": (cmd_restart, "restart one instance (PORT), --all one at a time, or a worker TYPE's "
                             "processes one at a time, and wait", build_restart),
    "reload": (cmd_reload, "re-read the spec file; --wait for the restarts it starts", build_reload),
    "diff": (cmd_diff, "what a reload (to --spec FILE) would change, restart and reload, and "
             "nothing done (exit 0 nothing, 1 changes, 2 refused)", build_diff),
    "alerts": (cmd_alerts, "alerts firing now (exit 1 when any)", add_json),
    "jobs": (cmd_jobs, "the scheduled jobs, next and last runs; NAME: its run history; "
             "NAME --run: run it now", build_jobs),
    "logs": (cmd_logs, "an instance's output (PORT); -f follows", build_logs),
    "events": (cmd_events, "recent events; -f follows", build_events),
    "plan": (cmd_plan, "capacity plan for N users from the spec, with the arithmetic", build_plan),
    "traffic": (cmd_traffic, "requests, 5xx and p95 per instance, measured at nginx", build_traffic),
    "autoscale": (cmd_autoscale, "the autoscaler: status, pause [--for 30m], resume", build_autoscale),
    "export": (cmd_export, "the spec as Kubernetes manifests (export kubernetes)", build_export),
    "deploy": (cmd_deploy, "roll the fleet to a new release (DIR copied, or --release NAME): canary "
               "judged, then one instance at a time; rolls back by itself when it fails", build_deploy),
    "rollback": (cmd_rollback, "roll the fleet back to the previous release, one instance at a time",
                 build_rollback),
    "releases": (cmd_releases, "releases on disk, which is current and which ports run each", add_json),
}

DESCRIPTION = "Control an ultrascaled fleet through its API. `ultrascalectl COMMAND --help` for a command."
EPILOG = """exit codes: 0 done, 1 failed or timed out, 2 bad arguments, 3 daemon unreachable,
4 refused by the daemon (its message says why). Every command with examples: docs/cli.md"""


def columns() -> int:
    """The terminal's width as shutil.get_terminal_size() finds it (COLUMNS, else the terminal,
    else 80), without importing shutil: argparse's formatter would, ~2 ms on every call."""
    try:
        return int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        pass
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns or 80
    except (AttributeError, ValueError, OSError):
        return 80


class Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str, width: int | None = None, **kw):
        super().__init__(prog, width=width or max(columns(), 40) - 2, **kw)


class Commands(argparse._SubParsersAction):
    """argparse's subcommands, each parser built when its command is chosen: building every one
    on every call would cost `status` ~1 ms for parsers it never uses, and `plan`'s needs the
    planner's ~60 ms of imports. argparse has no public way to defer a subparser; this subclass
    of its own goes in through `add_subparsers(action=...)`."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self._builders: dict[str, tuple] = {}

    def add_command(self, name: str, help: str, build) -> None:
        self._choices_actions.append(self._ChoicesPseudoAction(name, (), help))
        self._name_parser_map[name] = None  # a valid choice; built in __call__
        self._builders[name] = (help, build)

    def __call__(self, parser, namespace, values, option_string=None):
        name = values[0]
        if self._name_parser_map.get(name) is None:
            help, build = self._builders[name]
            del self._name_parser_map[name]
            build(self.add_parser(name, description=help, formatter_class=Formatter))
        super().__call__(parser, namespace, values, option_string)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The parsed command line; SystemExit as argparse raises it (2 usage error, 0 --help)."""
    env = os.environ.get
    p = argparse.ArgumentParser(prog="ultrascalectl", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=Formatter)
    p.add_argument("--api", metavar="URL", default=env("ULTRASCALE_API", DEFAULT_API),
                   help=f"daemon API address, http:// or https:// (env ULTRASCALE_API, "
                        f"default {DEFAULT_API})")
    p.add_argument("--token-file", metavar="FILE", default=env("ULTRASCALE_TOKEN_FILE"),
                   help="file with the bearer token, `token` or `name:token` (env ULTRASCALE_TOKEN_FILE)")
    p.add_argument("--ca-file", metavar="FILE", default=env("ULTRASCALE_CA_FILE"),
                   help="CA certificate(s) to verify an https:// API with (env ULTRASCALE_CA_FILE)")
    sub = p.add_subparsers(action=Commands, dest="cmd", metavar="COMMAND", title="commands", required=True)
    for name, (_, help, build) in COMMANDS.items():
        sub.add_command(name, help, build)
    args = p.parse_args(argv)
    args.func = COMMANDS[args.cmd][0]
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:  # argparse printed the usage error or the help
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    token = None
    if args.token_file:
        try:
            with open(args.token_file) as f:
                token = token_of(f.read())
        except OSError as exc:
            print(f"ultrascalectl: --token-file: {exc.strerror}: {args.token_file}", file=sys.stderr)
            return EXIT_USAGE
    try:
        if args.cmd in ("plan", "export"):  # work from the spec file, without the daemon
            return args.func(None, args)
        return args.func(Api(args.api, token, ca_file=args.ca_file), args)
    except CtlError as exc:
        print(f"ultrascalectl: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # stdout closed early (`| head`): no traceback, and none at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print("ultrascalectl: stdout was closed before the output was written", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
