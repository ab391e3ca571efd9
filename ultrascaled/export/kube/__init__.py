"""Kubernetes manifests from the fleet spec (`ultrascalectl export kubernetes`): the package's face.

The same spec that runs a fleet on one host becomes, on a cluster, a Deployment (one gunicorn
master per pod), a Service, a HorizontalPodAutoscaler, a PodDisruptionBudget, a ConfigMap with
the app's environment, an Ingress for ingress-nginx carrying what the managed nginx does, and a
Deployment for each worker type of `processes:`.
:func:`export` is pure (spec and options in, plain dicts and notes out, nothing read or
written); :func:`render_stream` / :func:`render_files` turn the result into deterministic YAML;
:func:`run` is the command (it reads the spec file and writes the output). Which spec key goes
where, and which are not carried and why: :data:`CARRIED` and :data:`NOT_CARRIED`, checked
against the spec's declared keys by tests/kube. docs/kubernetes.md explains the choices.

The modules, from the bottom up: model.py (options, result, error, shared constants),
tables.py (where each spec key goes), checks.py (what Kubernetes accepts), manifests.py (the
objects), notes.py (budgets and warnings), build.py (:func:`export`), render.py (YAML),
write.py (the output folder), cli.py (the command); __main__.py rewrites docs/kubernetes.md's
tables.
"""
from ultrascaled.export.kube.build import export
from ultrascaled.export.kube.checks import check_options
from ultrascaled.export.kube.cli import add_arguments, run
from ultrascaled.export.kube.model import (ANNOTATION, DEFAULT_MAX_REQUESTS, DEFAULT_POD_NOFILE,
                                           ENV_HASH, EXIT_OK, EXIT_OVER_BUDGET, EXIT_USAGE,
                                           EXPORT_CPU_COUNT, GENERATED_MARK, PROCESS_TYPE,
                                           RAISE_NOFILE, Export, ExportError, Options)
from ultrascaled.export.kube.render import render_files, render_stream
from ultrascaled.export.kube.tables import (CARRIED, NO_EQUIVALENT, NOT_CARRIED, tables_markdown,
                                            with_tables)
from ultrascaled.export.kube.write import write_dir

__all__ = [
    "ANNOTATION", "CARRIED", "DEFAULT_MAX_REQUESTS", "DEFAULT_POD_NOFILE", "ENV_HASH", "EXIT_OK",
    "EXIT_OVER_BUDGET", "EXIT_USAGE", "EXPORT_CPU_COUNT", "GENERATED_MARK", "NOT_CARRIED",
    "NO_EQUIVALENT", "PROCESS_TYPE", "RAISE_NOFILE", "Export", "ExportError", "Options", "add_arguments",
    "check_options", "export", "render_files", "render_stream", "run", "tables_markdown",
    "with_tables", "write_dir",
]
