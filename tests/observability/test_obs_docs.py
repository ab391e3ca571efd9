"""docs/observability.md names every metric render() emits and every alerts key with its default."""
import dataclasses
import re

from prometheus_client.parser import text_string_to_metric_families

from obs_helpers import ROOT, write_many
from test_obs_metrics import NGINX, snapshot
from ultrascaled.observe import metrics
from ultrascaled.observe.alerts import WebhookSink
from ultrascaled.spec import AlertsSection

DOC = (ROOT / "docs" / "observability.md").read_text()


def test_every_emitted_metric_is_documented(tmp_path):
    d = tmp_path / "8001"
    write_many([d], workers=1, requests=20, pool=1)
    counters = {"watchdog_recycles": {8001: 1}, "alerts_fired": 0,
                **WebhookSink("http://127.0.0.1:9/").counters()}
    text = metrics.render(snapshot(), NGINX, counters, {8001: str(d)}).decode()
    names = set()
    for fam in text_string_to_metric_families(text):
        suffix = "_total" if fam.type == "counter" else ""
        names.add(fam.name + suffix)
    documented = set(re.findall(r"`(ultrascale_[a-z_]+)`", DOC))
    assert names - documented == set()
    assert len(names) > 30


def test_every_alerts_key_is_documented_with_its_default():
    for fld in dataclasses.fields(AlertsSection):
        default = "null" if fld.default is None else repr(fld.default)
        row = re.search(rf"^\| `alerts\.{fld.name}` \|[^|]*\| `([^`]*)` \|", DOC, re.M)
        assert row, fld.name
        assert row.group(1) == default, fld.name
