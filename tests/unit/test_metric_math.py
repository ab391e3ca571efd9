"""Counter and bucket deltas between two scrapes, including the fast path of an idle fleet."""
from ultrascaled.observe.metric_math import LATENCY_BUCKET, REQUESTS, bucket_deltas, delta, histogram_quantile


B1 = {LATENCY_BUCKET: {frozenset({"le": "0.1"}.items()): 5.0, frozenset({"le": "+Inf"}.items()): 6.0}}
B2 = {LATENCY_BUCKET: {frozenset({"le": "0.1"}.items()): 9.0, frozenset({"le": "+Inf"}.items()): 12.0}}
R1 = {REQUESTS: {frozenset({"status": "2xx"}.items()): 6.0}}
R2 = {REQUESTS: {frozenset({"status": "2xx"}.items()): 10.0, frozenset({"status": "5xx"}.items()): 2.0}}


def test_an_unchanged_scrape_has_zero_deltas_and_zero_buckets():
    assert delta(R1, R1, REQUESTS) == 0.0
    assert bucket_deltas(B1, B1) == {0.1: 0.0, float("inf"): 0.0}
    assert histogram_quantile(0.95, bucket_deltas(B1, B1)) is None


def test_deltas_count_growth_and_a_restart_counts_its_current_value():
    assert delta(R1, R2, REQUESTS) == 6.0
    assert delta(R1, R2, REQUESTS, lambda lab: lab.get("status") == "5xx") == 2.0
    assert bucket_deltas(B1, B2) == {0.1: 4.0, float("inf"): 6.0}
    assert bucket_deltas(B2, B1) == {0.1: 5.0, float("inf"): 6.0}     # went down: restarted


def test_buckets_of_several_instances_add_up_an_idle_one_adds_zeros():
    into = bucket_deltas(B1, B2)
    bucket_deltas(B1, B1, into=into)
    assert into == {0.1: 4.0, float("inf"): 6.0}
