"""`ultrascalectl export kubernetes`: its arguments, and the command that runs it.

:func:`run` reads the spec file, writes the output, says the verdict and returns the exit code.
"""
from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from ultrascaled.export.kube.build import export
from ultrascaled.export.kube.checks import check_options
from ultrascaled.export.kube.model import (DEFAULT_MAX_REQUESTS, DEFAULT_POD_NOFILE,
                                           EXIT_OK, EXIT_OVER_BUDGET, EXIT_USAGE,
                                           EXPORT_CPU_COUNT, ExportError, Options)
from ultrascaled.export.kube.render import render_files, render_stream
from ultrascaled.export.kube.write import write_dir
from ultrascaled.spec.errors import SpecError
from ultrascaled.spec.loader import DEFAULT_SPEC, FALLBACK_SPEC, default_spec_path, load_spec

if TYPE_CHECKING:  # pragma: no cover
    import argparse



def add_arguments(parser: "argparse.ArgumentParser") -> None:
    parser.add_argument("target", choices=["kubernetes"], metavar="TARGET",
                        help="what to export to: kubernetes")
    parser.add_argument("--spec", metavar="PATH", default=None,
                        help=f"fleet spec (default: $ULTRASCALE_SPEC, else "
                             f"{DEFAULT_SPEC}, else {FALLBACK_SPEC})")
    parser.add_argument("--image", metavar="IMAGE", default=None,
                        help="container image with the app and gunicorn (default NAME:latest)")
    parser.add_argument("--namespace", metavar="NS", default=None,
                        help="metadata.namespace of every object (default: none, kubectl's)")
    parser.add_argument("--output", "-o", metavar="DIR|-", default="-",
                        help="a folder for one file per object and a kustomization.yaml, or - "
                             "for one YAML stream on stdout (default -)")
    parser.add_argument("--cpu-per-worker", metavar="CPU", default="1",
                        help="CPU request per gunicorn worker, and of each worker type's pod "
                             "(processes:), e.g. 1, 0.5 or 250m (default 1)")
    parser.add_argument("--max-requests", type=int, metavar="N", default=DEFAULT_MAX_REQUESTS,
                        help="gunicorn --max-requests when the spec's gunicorn.max_requests is 0 "
                             f"(default {DEFAULT_MAX_REQUESTS}; jitter N/10)")
    parser.add_argument("--nofile", type=int, metavar="N", default=DEFAULT_POD_NOFILE,
                        help="open-file hard limit of your nodes, which the container raises its "
                             f"soft limit to; for the budget check (default {DEFAULT_POD_NOFILE}, "
                             "systemd's default)")
    parser.add_argument("--mongo-servers", type=int, metavar="N", default=1,
                        help="MongoDB servers each client connects to (default 1)")


def run(args: "argparse.Namespace") -> int:
    """0 written and every budget holds; 1 written but a budget cannot hold (or the spec's own
    budgets fail: nothing written); 2 bad arguments or an invalid spec (nothing written)."""
    path = args.spec or default_spec_path()
    opts = Options(image=args.image, namespace=args.namespace, cpu_per_worker=args.cpu_per_worker,
                   max_requests=args.max_requests, nofile=args.nofile,
                   mongo_servers=args.mongo_servers)
    err = sys.stderr.write
    try:
        check_options(opts)
        spec = load_spec(path, cpu_count=EXPORT_CPU_COUNT)
        ex = export(spec, opts)
    except ExportError as exc:
        err(f"ultrascalectl export: {exc}\n")
        return EXIT_USAGE
    except SpecError as exc:
        if exc.over_budget_only:
            err(f"{path}: budgets that cannot hold (the daemon refuses this spec too; nothing "
                "written):\n")
            err("".join(f"  {e}\n" for e in exc.errors))
            return EXIT_OVER_BUDGET
        err(f"{path}: invalid spec:\n")
        err("".join(f"  {e}\n" for e in exc.errors))
        return EXIT_USAGE
    if args.output == "-":
        sys.stdout.write(render_stream(ex))
        sys.stdout.flush()
        where = "stdout"
    else:
        try:
            removed = write_dir(args.output, render_files(ex))
        except OSError as exc:
            err(f"ultrascalectl export: --output {args.output}: {exc.strerror or exc}\n")
            return EXIT_USAGE
        except ExportError as exc:
            err(f"ultrascalectl export: {exc}\n")
            return EXIT_USAGE
        where = args.output
        for fname in removed:
            err(f"removed {os.path.join(args.output, fname)} (an earlier export's, no longer made)\n")
    err(f"{len(ex.manifests)} objects for fleet `{ex.name}` written to {where}\n")
    for w in ex.warnings:
        err(f"warning: {w}\n")
    if ex.budget_problems:
        err(f"DOES NOT FIT at instances.max = {spec.instances.max} pods:\n")
        err("".join(f"  {p}\n" for p in ex.budget_problems))
        return EXIT_OVER_BUDGET
    err(f"FITS: every budget holds at instances.max = {spec.instances.max} pods\n")
    return EXIT_OK
