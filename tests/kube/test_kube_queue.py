"""A worker type autoscaled on its queue's depth, exported: HorizontalPodAutoscaler NAME-TYPE on
its Deployment with the External metric of the Redis list and an AverageValue target, its
bounds and behavior, valid against the official schemas; the warning names the adapter it needs."""
from __future__ import annotations

from pathlib import Path

from test_kube import assert_valid, validate  # noqa: F401 (validate is a fixture)
from ultrascaled.export import kube
from ultrascaled.spec import parse_spec

SPEC = """name: shop
processes:
  rq:
    command: [rq, worker, default]
    count: 1
    max: 6
    autoscale:
      queue: {redis: "redis://:secret@127.0.0.1:6379/0", rq: default}
      target: 40
      behavior: {scale_down: {stabilization_window_seconds: 120}}
  celery:
    command: [celery, -A, shop, worker]
"""


def export() -> kube.Export:
    return kube.export(parse_spec(SPEC, base_dir=Path("/srv/shop"), cpu_count=2))


def test_an_autoscaled_worker_type_gets_an_hpa_on_its_queue_depth():
    hpas = {m["metadata"]["name"]: m for m in export().manifests if m["kind"] == "HorizontalPodAutoscaler"}
    assert list(hpas) == ["shop-rq"]                       # not the fixed type, not the web fleet
    spec = hpas["shop-rq"]["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "shop-rq"}
    assert (spec["minReplicas"], spec["maxReplicas"]) == (1, 6)
    (metric,) = spec["metrics"]
    assert metric == {"type": "External", "external": {
        "metric": {"name": "ultrascale_queue_depth", "selector": {"matchLabels": {"queue": "rq_queue_default"}}},
        "target": {"type": "AverageValue", "averageValue": "40"}}}
    assert spec["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 120
    assert "secret" not in repr(export().manifests)        # the broker's password stays out


def test_the_queue_hpa_validates_and_the_warning_names_the_adapter(validate):
    ex = export()
    assert_valid(ex, validate)
    said = "\n".join(ex.warnings)
    assert "HorizontalPodAutoscalers shop-rq" in said and "KEDA" in said and "secret" not in said
