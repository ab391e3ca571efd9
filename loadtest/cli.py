"""Command line: ``ultrascale-loadtest URL [options]`` (see docs/loadtest.md).

Exit codes: 0 all targets met (or none given), 1 a target missed, 2 bad arguments or a
non-loopback target.
"""
from __future__ import annotations

import argparse
import sys

from .httpclient import LoopbackError, parse_target
from .runner import Config, ConfigError, progress_printer, run, write_json
from .stats import Targets

EXIT_OK, EXIT_MISSED, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse already exits 2 and names the argument
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"loadtest: error: {message}\n")


def _path_weight(text: str) -> tuple[str, float]:
    path, sep, weight = text.rpartition(":")
    if sep:
        try:
            w = float(weight)
        except ValueError:
            path, w = text, 1.0
    else:
        path, w = text, 1.0
    if not path.startswith("/"):
        raise argparse.ArgumentTypeError(f"path must start with '/': {text!r}")
    if not w > 0:
        raise argparse.ArgumentTypeError(f"weight must be > 0: {text!r}")
    return path, w


def _series(text: str) -> list[int]:
    try:
        steps = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated user counts, got {text!r}") from None
    if not steps or any(s < 1 for s in steps):
        raise argparse.ArgumentTypeError(f"user counts must be >= 1, got {text!r}")
    return steps


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="loadtest", description="Closed-loop HTTP/1.1 load generator for loopback targets.")
    p.add_argument("url", help="target, e.g. http://127.0.0.1:8080/ (loopback only)")
    p.add_argument("-u", "--users", type=int, default=10, help="concurrent virtual users (default 10)")
    p.add_argument("-d", "--duration", type=float, default=None,
                   help="seconds to run (default 10 unless --requests is given)")
    p.add_argument("-n", "--requests", type=int, default=None, help="stop after N requests in total")
    p.add_argument("--think", type=float, default=0.0, metavar="MS",
                   help="think time per user between requests, ms (default 0)")
    p.add_argument("--ramp", type=float, default=0.0, metavar="SECONDS",
                   help="start the users evenly over this many seconds (default 0)")
    p.add_argument("--path", dest="paths", action="append", type=_path_weight, metavar="/PATH[:WEIGHT]",
                   help="endpoint mix, relative to URL's host, repeatable (default: URL's path)")
    p.add_argument("--timeout", type=float, default=2.0, help="per-request timeout, seconds (default 2)")
    p.add_argument("-p", "--procs", type=int, default=None,
                   help="worker processes (default: min(CPU cores, users))")
    p.add_argument("-q", "--quiet", action="store_true", help="no live progress on stderr")
    p.add_argument("--json", metavar="FILE", help="write the full result as JSON to FILE ('-' = stdout)")
    t = p.add_argument_group("targets (exit 1 when missed)")
    t.add_argument("--max-p99", type=float, metavar="MS")
    t.add_argument("--max-p95", type=float, metavar="MS")
    t.add_argument("--max-error-rate", type=float, metavar="PCT")
    t.add_argument("--min-rps", type=float, metavar="N")
    s = p.add_argument_group("series mode")
    s.add_argument("--series", type=_series, metavar="U1,U2,...",
                   help="one step per user count (each bounded by --duration), Markdown table")
    s.add_argument("--fleet-api", metavar="URL", help="daemon API to read fleet memory from (GET /fleet)")
    s.add_argument("--chart", metavar="FILE.png", help="draw the series with matplotlib")
    return p


def config_from_args(args) -> Config:
    duration = args.duration
    if duration is None and args.requests is None:
        duration = 10.0
    return Config(
        url=args.url, users=args.users, duration=duration, requests=args.requests,
        think_ms=args.think, ramp=args.ramp, paths=args.paths, timeout=args.timeout,
        procs=args.procs,
        targets=Targets(max_p99_ms=args.max_p99, max_p95_ms=args.max_p95,
                        max_error_rate_pct=args.max_error_rate, min_rps=args.min_rps))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    config = config_from_args(args)
    try:
        config.validate()
        if args.series:
            if args.duration is None and args.requests is not None:
                raise ConfigError("--series", "each step is bounded by --duration; give --duration")
            if args.fleet_api:
                try:
                    parse_target(args.fleet_api)
                except LoopbackError as exc:
                    raise ConfigError("--fleet-api", str(exc)) from None
        elif args.fleet_api or args.chart:
            raise ConfigError("--fleet-api/--chart", "only valid together with --series")
    except (ConfigError, LoopbackError, ValueError) as exc:
        msg = str(exc) if isinstance(exc, ConfigError) else f"argument url: {exc}"
        parser.error(msg)
    # the summary goes to stdout unless the JSON does
    out = sys.stderr if args.json == "-" else sys.stdout
    if args.series:
        from .series import run_series
        return run_series(config, args.series, fleet_api=args.fleet_api, chart=args.chart,
                          quiet=args.quiet, json_dest=args.json, out=out, parser=parser)
    progress = None if args.quiet else progress_printer(sys.stderr)
    result = run(config, progress=progress)
    out.write(result.summary() + "\n")
    out.flush()
    if args.json:
        write_json(args.json, result.to_dict())
    return EXIT_OK if result.passed else EXIT_MISSED
