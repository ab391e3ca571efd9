""":func:`export`: one spec and its options in, the checked objects and their notes out.

Pure: nothing read or written. The objects come in the order `kubectl apply` wants them.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ultrascaled.export.kube.checks import (check_ingress, check_int32, check_options, k8s_name,
                                            worker_names)
from ultrascaled.export.kube.manifests import (configmap, controller_settings, cronjob, deployment,
                                               hpa, ingress, ingress_hosts, pdb, queue_hpa,
                                               release_job, service, worker_deployment)
from ultrascaled.export.kube.model import Export, Options
from ultrascaled.export.kube.notes import budgets, warnings_for
from ultrascaled.export.kube.tables import NO_EQUIVALENT

if TYPE_CHECKING:  # pragma: no cover
    from ultrascaled.spec import Spec


def export(spec: "Spec", opts: Options = Options()) -> Export:
    """The manifests for `spec`, in the order `kubectl apply` wants them (the ConfigMap before
    the Deployments that read it; one per `kind: worker` type after the web one, then a CronJob
    per `kind: job`), with the
    budgets' verdict and what is not carried."""
    check_options(opts)
    name = k8s_name(spec.name)
    check_ingress(spec, ingress_hosts(spec))
    workers = worker_names(spec, name)
    objs = [configmap(spec, name, opts)]
    if spec.deploy.release_command:   # the release phase, before the Deployment that it precedes
        objs.append(release_job(spec, name, opts))
    objs.append(deployment(spec, name, opts))
    objs += [worker_deployment(spec, name, opts, key, part) for key, part in workers.items()]
    objs += [cronjob(spec, name, opts, key, part) for key, part in worker_names(spec, name, "job").items()]
    objs.append(service(spec, name, opts))
    if spec.nginx.socketio:
        objs.append(service(spec, name, opts, "-socketio"))
    if spec.autoscale.enabled:
        objs.append(hpa(spec, name, opts))
    objs += [queue_hpa(spec, name, opts, key, part) for key, part in workers.items()
             if spec.processes[key].autoscale.enabled]
    objs += [pdb(spec, name, opts), ingress(spec, name, opts)]
    if spec.nginx.socketio:
        objs.append(ingress(spec, name, opts, socketio=True))
    for obj in objs:
        check_int32(obj, f"{obj['kind']} {obj['metadata']['name']}")
    lines, problems = budgets(spec, opts)
    return Export(name=name, manifests=objs, budget=lines, budget_problems=problems,
                  not_carried=list(NO_EQUIVALENT), controller=controller_settings(spec),
                  warnings=warnings_for(spec, name, opts))
