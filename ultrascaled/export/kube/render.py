"""The export as deterministic YAML: one stream, or one file per object and a kustomization.

The notes travel with the objects as a comment header.
"""
from __future__ import annotations

import yaml

from ultrascaled.export.kube.model import GENERATED_MARK, Export


def _dump(obj: dict) -> str:
    return yaml.safe_dump(obj, sort_keys=False, default_flow_style=False, width=100,
                          allow_unicode=False)


def header(ex: Export) -> str:
    """The notes as YAML comments: they travel with the manifests. A line break inside a note
    (from a spec value) is shown as \\n, so that no note can end the comment."""
    out = [GENERATED_MARK + f" for fleet `{ex.name}`.",
           "# Where each field comes from, and what to set up first: docs/kubernetes.md.", "#",
           "# Budgets at instances.max pods (nothing in the cluster enforces them):"]
    out += [f"#   {line}" for line in ex.budget]
    if ex.budget_problems:
        out.append(f"# DOES NOT FIT: {len(ex.budget_problems)} budget(s) cannot hold:")
        out += [f"#   {p}" for p in ex.budget_problems]
    else:
        out.append("# FITS: every budget holds.")
    out += ["#", "# No Kubernetes equivalent (the nearest safe setting is carried):"]
    out += [f"#   - {n}" for n in ex.not_carried]
    out += ["#", "# Controller-wide in the managed nginx; set them in the ingress-nginx "
            "controller's ConfigMap", "# (shared by every Ingress of the cluster):"]
    out += [f"#   {k}: \"{v}\"" for k, v in ex.controller.items()]
    if ex.warnings:
        out += ["#", "# Before applying:"]
        out += [f"#   - {w}" for w in ex.warnings]
    return "\n".join(line.translate(_BREAKS) for line in out) + "\n"


# What YAML reads as a line break (PyYAML: also NEL, LS and PS), shown escaped in a comment.
_BREAKS = str.maketrans({c: ascii(c)[1:-1] for c in "\r\n\x85\u2028\u2029"})


def render_stream(ex: Export) -> str:
    """One multi-document YAML stream: the header, then each object after `---`."""
    return header(ex) + "".join("---\n" + _dump(m) for m in ex.manifests)


def file_name(obj: dict) -> str:
    return f"{obj['kind'].lower()}-{obj['metadata']['name']}.yaml"


def render_files(ex: Export) -> dict[str, str]:
    """One file per object, and a kustomization.yaml (`kubectl apply -k DIR`) listing them and
    holding the header."""
    files = {file_name(m): f"{GENERATED_MARK}.\n" + _dump(m) for m in ex.manifests}
    kust = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            "resources": list(files)}
    files["kustomization.yaml"] = header(ex) + _dump(kust)
    return files
