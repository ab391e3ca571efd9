"""ultrascalectl: the operator's CLI. Standard library only, so it answers in milliseconds.

Exit codes: 0 done; 1 the operation failed or timed out; 2 bad arguments; 3 the daemon cannot
be reached; 4 the daemon refused the request (its message says why).
"""
from __future__ import annotations

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
    """A minimal HTTP/1.0 client over a socket (TLS for https://): urllib alone costs ~30 ms of
    imports. Bodies are JSON and say so; a request without a body sends no Content-Type."""

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

    def fetch(self, method: str, path: str, body: bytes | None = None) -> tuple[int, dict, bytes]:
        status, headers, f = self.open(method, path, body)
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

    def request(self, method: str, path: str, body: dict | None = None) -> dict:
        status, _, raw = self.fetch(method, path, json.dumps(body).encode() if body is not None else None)
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
    rows = [("PORT", "PID", "STATE", "UPTIME", "WORKERS", "RSS/WORKER", "RESTARTS", "UPSTREAM", "LAST EXIT")]
    for i in fleet["instances"]:
        workers = i.get("workers") or []
        rss = ",".join(fmt_bytes(w["rss"]) for w in workers) or "-"
        rows.append((str(i["port"]), str(i["pid"] or "-"), i["state"], fmt_uptime(i.get("uptime")),
                     str(len(workers)), rss, str(i["restarts"]), "yes" if i.get("in_upstream") else "no",
                     i.get("last_exit") or "-"))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    mem = fleet.get("memory", {})
    head = (f"fleet {fleet['fleet']}: {fleet['ready']}/{fleet['desired']} ready; "
            f"memory {fmt_bytes(mem.get('total_rss_bytes'))} of {fmt_bytes(mem.get('budget_bytes'))}")
    up = fleet.get("upstream") or {}
    if up.get("ok") is False:
        head += f"\nupstream update FAILED: {up.get('error')}"
    notes = [f"  {i['port']}: {i['reason']}" for i in fleet["instances"]
             if i["state"] in ("backoff", "fatal") and i.get("reason")]
    return "\n".join([head, *lines] + (["reasons:", *notes] if notes else []))


def wait_until(api: Api, done, timeout: float, show) -> dict:
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
        if time.monotonic() >= deadline:
            raise CtlError(f"timed out after {timeout:g}s; {line}", EXIT_FAILED)
        time.sleep(0.1)


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


def cmd_status(api: Api, args) -> int:
    fleet = api.request("GET", "/fleet")
    print(json.dumps(fleet, indent=2) if args.json else render_status(fleet))
    ok = fleet["ready"] == fleet["desired"]
    return 0 if ok else EXIT_FAILED


def cmd_scale(api: Api, args) -> int:
    api.request("POST", "/fleet/scale", {"instances": args.instances})
    if args.no_wait:
        print(f"desired instances: {args.instances}")
        return 0
    fleet = wait_until(api, fleet_converged, args.timeout, progress)
    print(f"fleet at {fleet['ready']} instances: ports {', '.join(map(str, fleet['ports'])) or 'none'}")
    return 0


def cmd_restart(api: Api, args) -> int:
    if args.all == (args.port is not None):
        raise CtlError("give a PORT or --all", EXIT_USAGE)
    path = "/fleet/restart" if args.all else f"/instances/{args.port}/restart"
    started = api.request("POST", path)
    ports = started.get("restarting", [])
    if args.no_wait:
        print(f"restarting: {', '.join(map(str, ports))}")
        return 0
    t0 = time.time()

    def done(fleet):
        inst = {i["port"]: i for i in fleet["instances"]}
        return fleet_converged(fleet) and all(
            p in inst and inst[p]["since"] >= t0 - 1 and inst[p]["state"] == "running" for p in ports)
    wait_until(api, done, args.timeout, progress)
    print(f"restarted: {', '.join(map(str, ports))}")
    return 0


def cmd_reload(api: Api, args) -> int:
    result = api.request("POST", "/fleet/reload")
    changed = ", ".join(result.get("changed") or []) or "nothing"
    restarting = ", ".join(map(str, result.get("restarting") or [])) or "none"
    print(f"spec reloaded; changed: {changed}; restarting: {restarting}")
    return 0


def cmd_events(api: Api, args) -> int:
    if not args.follow:
        data = api.request("GET", f"/events?limit={args.lines}")
        for e in data["events"]:
            print(format_event(e))
        return 0
    last = max(0, args.since)
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


def cmd_alerts(api: Api, args) -> int:
    data = api.request("GET", "/alerts")
    if args.json:
        print(json.dumps(data, indent=2))
    elif not data["firing"]:
        print("no alert is firing")
    for a in data["firing"]:
        print(f"FIRING {a['alert']}: {a['message']} (since {time.strftime('%H:%M:%S', time.localtime(a['since']))})")
    return 1 if data["firing"] else 0


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


def cmd_plan(api, args) -> int:
    import argparse

    from ultrascaled import capacity  # imported here: it costs ~60 ms that `status` must not pay
    p = argparse.ArgumentParser(prog="ultrascalectl plan", description="Capacity plan for N users.")
    capacity.add_arguments(p)
    return capacity.run(p.parse_args(args.rest))


def format_event(e: dict) -> str:
    t = time.strftime("%H:%M:%S", time.localtime(e["time"])) + f".{int(e['time'] * 1000) % 1000:03d}"
    rest = " ".join(f"{k}={v}" for k, v in e.items() if k not in ("seq", "time", "event", "level"))
    return f"{t} {e['level'][:4].upper():4} {e['event']} {rest}"


# The command table. argparse would cost ~17 ms of imports and set-up on every call, about a
# third of `status`; this small parser covers what the commands need.
# name: (function, help, positionals [(name, type, required)], options {flag: (dest, type, default)})
COMMANDS: dict[str, tuple] = {
    "status": ("cmd_status", "the fleet as a table", [], {"--json": ("json", bool, False)}),
    "scale": ("cmd_scale", "set the number of instances and wait until they serve",
              [("instances", "count", True)],
              {"--no-wait": ("no_wait", bool, False), "--timeout": ("timeout", "seconds", 120.0)}),
    "restart": ("cmd_restart", "restart one instance (PORT), or --all one at a time",
                [("port", "count", False)],
                {"--all": ("all", bool, False), "--no-wait": ("no_wait", bool, False),
                 "--timeout": ("timeout", "seconds", 300.0)}),
    "reload": ("cmd_reload", "re-read the spec file", [], {}),
    "alerts": ("cmd_alerts", "alerts firing now (exit 1 when any)", [], {"--json": ("json", bool, False)}),
    "logs": ("cmd_logs", "an instance's output (PORT); -f follows", [("port", "count", True)],
             {"-f": ("follow", bool, False), "--follow": ("follow", bool, False),
              "-n": ("lines", "count", 50), "--lines": ("lines", "count", 50)}),
    "events": ("cmd_events", "recent events; -f follows", [],
               {"-f": ("follow", bool, False), "--follow": ("follow", bool, False),
                "-n": ("lines", "count", 50), "--lines": ("lines", "count", 50),
                "--since": ("since", "count", 0)}),
    "plan": ("cmd_plan", "capacity plan for N users from the spec, with the arithmetic (plan --help)",
             None, None),
}

USAGE = f"""usage: ultrascalectl [--api URL] [--token-file FILE] [--ca-file FILE] COMMAND [ARGS]

Control an ultrascaled fleet.

options:
  --api URL          daemon API address, http:// or https:// (env ULTRASCALE_API, default {DEFAULT_API})
  --token-file FILE  file with the bearer token, `token` or `name:token` (env ULTRASCALE_TOKEN_FILE)
  --ca-file FILE     CA certificate(s) to verify an https:// API with (env ULTRASCALE_CA_FILE)

commands:
""" + "".join(f"  {name:<9}{spec[1]}\n" for name, spec in COMMANDS.items()) + """
exit codes: 0 done, 1 failed or timed out, 2 bad arguments, 3 daemon unreachable, 4 refused"""


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


class UsageError(Exception):
    pass


class Args:
    def __init__(self, **kw):
        self.__dict__.update(kw)


def _convert(kind, text: str, what: str):
    if kind == "count":
        try:
            n = int(text)
        except ValueError:
            raise UsageError(f"{what}: must be a whole number, got {text!r}")
        if n < 0:
            raise UsageError(f"{what}: must not be negative, got {n}")
        return n
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"{what}: must be a number of seconds, got {text!r}")


def parse_args(argv: list[str]) -> Args:
    args = Args(api=os.environ.get("ULTRASCALE_API", DEFAULT_API),
                token_file=os.environ.get("ULTRASCALE_TOKEN_FILE"),
                ca_file=os.environ.get("ULTRASCALE_CA_FILE"), cmd=None, help=False)
    i = 0
    while i < len(argv) and argv[i].startswith("-"):  # global options
        flag, _, inline = argv[i].partition("=")
        if flag in ("-h", "--help"):
            args.help = True
            return args
        if flag not in ("--api", "--token-file", "--ca-file"):
            raise UsageError(f"unknown option {flag}")
        if not inline:
            i += 1
            if i >= len(argv):
                raise UsageError(f"{flag} needs a value")
            inline = argv[i]
        setattr(args, flag[2:].replace("-", "_"), inline)
        i += 1
    if i >= len(argv):
        raise UsageError("give a COMMAND")
    args.cmd, rest = argv[i], argv[i + 1:]
    if args.cmd not in COMMANDS:
        raise UsageError(f"unknown command {args.cmd!r}; commands: {', '.join(COMMANDS)}")
    func, _, positionals, options = COMMANDS[args.cmd]
    args.func = globals()[func]
    if positionals is None:  # plan: the planner parses its own arguments
        args.rest = rest
        return args
    for flag, (dest, _, default) in options.items():
        setattr(args, dest, default)
    values = []
    j = 0
    while j < len(rest):
        word = rest[j]
        if word in ("-h", "--help"):
            args.help = True
            return args
        if word.startswith("-") and not word.lstrip("-").isdigit():
            flag, _, inline = word.partition("=")
            if flag not in options:
                raise UsageError(f"{args.cmd}: unknown option {flag}; options: {', '.join(options) or 'none'}")
            dest, kind, _ = options[flag]
            if kind is bool:
                setattr(args, dest, True)
            else:
                if not inline:
                    j += 1
                    if j >= len(rest):
                        raise UsageError(f"{args.cmd}: {flag} needs a value")
                    inline = rest[j]
                setattr(args, dest, _convert(kind, inline, f"{args.cmd} {flag}"))
        else:
            values.append(word)
        j += 1
    if len(values) > len(positionals):
        raise UsageError(f"{args.cmd}: unexpected argument(s) {' '.join(values[len(positionals):])}")
    for k, (name, kind, required) in enumerate(positionals):
        if k < len(values):
            setattr(args, name, _convert(kind, values[k], f"{args.cmd} {name.upper()}"))
        elif required:
            raise UsageError(f"{args.cmd}: give {name.upper()}")
        else:
            setattr(args, name, None)
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
    except UsageError as exc:
        print(f"{USAGE.splitlines()[0]}\nultrascalectl: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.help:
        print(USAGE)
        return 0
    token = None
    if args.token_file:
        try:
            with open(args.token_file) as f:
                token = token_of(f.read())
        except OSError as exc:
            print(f"ultrascalectl: --token-file: {exc.strerror}: {args.token_file}", file=sys.stderr)
            return EXIT_USAGE
    try:
        if args.cmd == "plan":  # works from the spec file, without the daemon
            return args.func(None, args)
        return args.func(Api(args.api, token, ca_file=args.ca_file), args)
    except CtlError as exc:
        print(f"ultrascalectl: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
