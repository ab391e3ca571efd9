"""What Kubernetes accepts, checked before anything is built: names, quantities, hosts, int32s.

Each check raises :class:`ExportError` saying what and why; the options are checked first (by
:func:`check_options`, also before the spec is read), the objects' integers last.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from ultrascaled.export.kube.model import ExportError, Options

if TYPE_CHECKING:  # pragma: no cover
    from ultrascaled.spec import Spec

_DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?\Z")
_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")
_IMAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@+-]*\Z")
_CPU = re.compile(r"(?:[0-9]+(?:\.[0-9]{1,3})?|[0-9]+m)\Z")


def k8s_name(spec_name: str) -> str:
    """The objects' name from the spec's `name` (letters, digits, - and _): lower case, `_` as
    `-`; it must then be a DNS-1035 label short enough for `NAME-socketio`."""
    name = spec_name.lower().replace("_", "-")
    if not _DNS1035.match(name) or len(name) > 63 - len("-socketio"):
        raise ExportError(
            f"name: {spec_name!r} cannot name Kubernetes objects: it becomes {name!r}, which must "
            "start with a letter, end with a letter or digit and be at most "
            f"{63 - len('-socketio')} characters (Services are DNS-1035 labels); rename the fleet")
    return name


def worker_names(spec: "Spec", fleet: str, kind: str = "worker") -> dict[str, str]:
    """Each `kind` type's sanitized name (lower case, `_` as `-`, as :func:`k8s_name` does for
    the fleet), by its key in `processes:`, in key order. Its Deployment (a job's CronJob) is
    `FLEET-TYPE` and the sanitized name is its label value: it must be a DNS-1123 label (at most
    63 characters with the fleet's name; 52 for a CronJob, whose Jobs add 11), and no two types
    of any kind may become one name."""
    out: dict[str, str] = {}
    taken: dict[str, str] = {}
    for key in sorted(spec.processes):
        what = "CronJob" if spec.processes[key].kind == "job" else "Deployment"
        part = key.lower().replace("_", "-")
        full = f"{fleet}-{part}"
        longest = 52 if what == "CronJob" else 63
        if not _DNS1123_LABEL.match(part) or len(full) > longest:
            raise ExportError(
                f"processes.{key}: {key!r} cannot name a Kubernetes {what}: it becomes "
                f"{full!r}, which must be a DNS-1123 label (letters, digits and `-`, starting and "
                f"ending with a letter or digit, at most {longest} characters: "
                f"{longest - len(fleet) - 1} for the type beside this fleet's name); rename the type")
        if full in taken:
            raise ExportError(
                f"processes.{taken[full]} and processes.{key}: both become {full!r} "
                "(names are lower case with `_` as `-` in Kubernetes); rename one of them")
        taken[full] = key
        if spec.processes[key].kind == kind:
            out[key] = part
    return out


def cpu_millis(quantity: str) -> int:
    """Millicores of a CPU quantity such as `1`, `0.5` or `250m`."""
    if not isinstance(quantity, str) or not _CPU.match(quantity):
        raise ExportError(f"--cpu-per-worker: must be a CPU quantity such as 1, 0.5 or 250m, "
                          f"got {quantity!r}")
    millis = int(quantity[:-1]) if quantity.endswith("m") else round(float(quantity) * 1000)
    if millis < 1:
        raise ExportError(f"--cpu-per-worker: must be more than 0, got {quantity!r}")
    return millis


_HOST = re.compile(r"(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z")


def check_ingress(spec: "Spec", hosts: list[str]) -> None:
    """The Ingresses' hosts (from nginx.server_name, by manifests.ingress_hosts) and paths."""
    bad = [h for h in hosts if not _HOST.match(h) or len(h) > 253]
    if bad:
        raise ExportError(f"nginx.server_name: {', '.join(map(repr, bad))} cannot be an Ingress "
                          "host (a DNS name, or *.name; nginx regular expressions and ports "
                          "have no Ingress equivalent)")
    if spec.nginx.socketio and spec.nginx.socketio_path.rstrip("/") == "":
        raise ExportError("nginx.socketio_path: `/` is also the path of every other request; "
                          "two Ingresses cannot both take it (use e.g. /socket.io/)")


INT32_MAX = 2 ** 31 - 1


def check_int32(value: Any, where: str) -> None:
    """Kubernetes' integer fields (probe thresholds, replicas, ports, HPA values) are int32: a
    spec key without an upper bound (health.failures, health.start_timeout) can overflow one."""
    if isinstance(value, dict):
        for k, v in value.items():
            check_int32(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            check_int32(v, f"{where}[{i}]")
    elif isinstance(value, int) and not isinstance(value, bool) and value > INT32_MAX:
        raise ExportError(f"{where} would be {value}, more than Kubernetes takes ({INT32_MAX}); "
                          "lower the spec key it comes from (docs/kubernetes.md, \"Where every "
                          "spec key goes\")")


def check_options(opts: Options) -> None:
    if opts.image is not None and (not _IMAGE.match(opts.image) or len(opts.image) > 512):
        raise ExportError(f"--image: not an image reference (registry/name:tag or "
                          f"name@sha256:...), got {opts.image!r}")
    if opts.namespace is not None and (not _DNS1123_LABEL.match(opts.namespace)
                                       or len(opts.namespace) > 63):
        raise ExportError(f"--namespace: must be a DNS-1123 label (lower case letters, digits "
                          f"and -, at most 63), got {opts.namespace!r}")
    cpu_millis(opts.cpu_per_worker)
    if not 1 <= opts.max_requests <= 10 ** 9:
        raise ExportError(f"--max-requests: must be 1..1000000000, got {opts.max_requests}")
    if opts.nofile < 1:
        raise ExportError(f"--nofile: must be at least 1, got {opts.nofile}")
    if opts.mongo_servers < 1:
        raise ExportError(f"--mongo-servers: must be at least 1, got {opts.mongo_servers}")
