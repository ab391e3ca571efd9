"""The traffic log at nginx (ultrascaled/observe/accesslog.py): the parser on nginx's real shapes and on
hostile lines (hypothesis), the bounded per-port windows, the tail through rotation,
truncation, torn and huge lines, and the alert rules per instance. Pure or plain files: fast."""
from __future__ import annotations

import asyncio
import json
import math
import os
import random
import re

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ultrascaled.observe import accesslog as al
from ultrascaled.core.traffic import TrafficWindow
from ultrascaled.observe.accesslog import BOUNDS, SLOTS, LogTail, TrafficMonitor, TrafficStore, parse_line
from ultrascaled.observe.alert_rules import (AlertState, MetricSample, build_rules, evaluate, instance_rules,
                                             with_traffic)
from ultrascaled.observe.alerts import Sampler
from ultrascaled.spec import AlertsSection
from ultrascaled.spec.nginx import NginxSettings
from ultrascaled.effects.nginx_render import TRAFFIC_FIELDS, render_main_conf, traffic_log_format

FUZZ = settings(max_examples=40, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])
FUZZ_SMALL = settings(FUZZ, max_examples=30)
T0 = 1_700_000_000.0


def line(t=T0, s=200, a="127.0.0.1:8001", u="200", ut="0.010", rt=0.011, m="GET", p="/") -> bytes:
    """A line as nginx writes it with the rendered log_format (escape=json)."""
    values = {"msec": f"{t:.3f}", "status": str(s), "upstream_addr": a, "upstream_status": u,
              "upstream_response_time": ut, "request_time": f"{rt:.3f}", "request_method": m,
              "uri": json.dumps(p)[1:-1]}
    return re.sub(r"\$(\w+)", lambda m: values[m.group(1)], TRAFFIC_FIELDS).encode()


# ---- the format and the parser --------------------------------------------------------------

def test_the_rendered_log_format_is_the_one_parsed_and_every_proxied_location_logs():
    conf = render_main_conf(NginxSettings(prefix="/srv/n")).decode()
    assert traffic_log_format("ultrascale") in conf
    assert "access_log /srv/n/logs/traffic.log ultrascale_traffic;" in conf
    assert json.loads(line())["a"] == "127.0.0.1:8001"   # the format is one JSON object
    off = render_main_conf(NginxSettings(prefix="/srv/n", traffic_log="off")).decode()
    assert "traffic" not in off


def test_the_operators_own_access_log_is_kept_beside_the_traffic_log():
    conf = render_main_conf(NginxSettings(prefix="/srv/n", access_log="logs/access.log")).decode()
    server = conf[conf.index("server {"):]
    assert "access_log /srv/n/logs/traffic.log ultrascale_traffic;" in server
    assert "access_log /srv/n/logs/access.log;" in server


@pytest.mark.parametrize("raw, tries, status, upstream", [
    (line(), [(8001, 200, 0.010)], 200, 0.010),
    # nginx retried: connection refused on 8001 (502), then 8002 answered
    (line(a="127.0.0.1:8001, 127.0.0.1:8002", u="502, 200", ut="0.000, 0.012"),
     [(8001, 502, 0.0), (8002, 200, 0.012)], 200, 0.012),
    # an internal redirect to another upstream group: " : " separates the groups
    (line(a="127.0.0.1:8001 : 127.0.0.1:8003", u="404 : 200", ut="0.001 : 0.002"),
     [(8001, 404, 0.001), (8003, 200, 0.002)], 200, 0.003),
    # nginx answered itself (no instance ready: return 503): no try, fleet only
    (line(s=503, a="", u="", ut=""), [], 503, None),
    (line(s=499, a="-", u="-", ut="-"), [], 499, None),
    # no live upstream: nginx logs the group's name; a try with no status
    (line(s=502, a="ultrascale", u="502", ut="0.000"), [(None, 502, 0.0)], 502, 0.0),
    (line(s=504, a="127.0.0.1:8001", u="-", ut="-"), [(8001, None, None)], 504, None),
    (line(a="unix:/run/app.sock", u="200", ut="0.004"), [(None, 200, 0.004)], 200, 0.004),
    (line(a="[::1]:8001", u="200", ut="0.004"), [(8001, 200, 0.004)], 200, 0.004),
    # lists of different lengths: nothing can be attributed, the client's request still counts
    (line(a="127.0.0.1:8001, 127.0.0.1:8002", u="200", ut="0.001"), [], 200, 0.001),
])
def test_nginx_shapes(raw, tries, status, upstream):
    ln = parse_line(raw)
    assert ln is not None
    assert [tuple(t) for t in ln.tries] == tries
    assert ln.status == status
    assert (ln.upstream_seconds is None) == (upstream is None)
    if upstream is not None:
        assert math.isclose(ln.upstream_seconds, upstream)


@pytest.mark.parametrize("raw", [
    b"", b"\n", b"-", b"[]", b'"x"', b"{", b'{"t":1}', b"null", b"\xff\xfe",
    b'{"t":"1","s":200,"a":"","u":"","ut":"","rt":0}',      # t is not a number
    b'{"t":1,"s":true,"a":"","u":"","ut":"","rt":0}',        # bool is not a status
    b'{"t":1,"s":1000,"a":"","u":"","ut":"","rt":0}',
    b'{"t":-1,"s":200,"a":"","u":"","ut":"","rt":0}',
    b'{"t":1e999,"s":200,"a":"","u":"","ut":"","rt":0}',     # inf
    b'{"t":1,"s":200,"a":5,"u":"","ut":"","rt":0}',
    b'{"t":1,"s":200,"a":"","u":"","ut":"","rt":0' + b"]" * 100000,
    b"[" * 100000,                                              # nesting bomb: RecursionError
])
def test_what_is_not_one_of_our_lines_is_none(raw):
    assert parse_line(raw) is None


def test_a_line_torn_by_a_failed_write_is_read_from_the_next_line_start():
    torn = line(t=T0)[:25] + line(t=T0 + 1, s=500, u="500")
    ln = parse_line(torn)
    assert ln is not None and ln.t == T0 + 1 and ln.status == 500


@FUZZ
@given(st.binary(max_size=400))
@example(b'{"t":1,"s":200,"a":"a:99999999999999999999","u":"","ut":"","rt":0}')
@example(b'{"t":1,"s":200,"a":"1:1, 2:2","u":"1, 2","ut":"nan, inf","rt":0}')
def test_arbitrary_bytes_never_raise(raw):
    ln = parse_line(raw)
    assert ln is None or isinstance(ln, al.Line)


hostile_text = st.text(alphabet=st.sampled_from(list('0123456789.:,- "\\\x00\u00e9unix[]')), max_size=20)
list_item = st.one_of(hostile_text, st.sampled_from(["-", "", "127.0.0.1:8001", "502", "0.001", "1e308",
                                                      "nan", "-1", "8001:", ":8001", "unix:"]))


@FUZZ_SMALL
@given(t=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(), st.text(max_size=5),
                   st.none(), st.booleans()),
       s=st.one_of(st.integers(-10, 2000), st.floats(), st.text(max_size=3), st.none()),
       a=st.lists(list_item, max_size=4), u=st.lists(list_item, max_size=4), ut=st.lists(list_item, max_size=4),
       sep=st.sampled_from([", ", " : ", ","]))
def test_hostile_fields_never_raise_and_what_parses_is_sane(t, s, a, u, ut, sep):
    doc = {"t": t, "s": s, "a": sep.join(a), "u": sep.join(u), "ut": sep.join(ut), "rt": 0.001}
    try:
        raw = json.dumps(doc).encode()
    except ValueError:
        return
    ln = parse_line(raw)
    if ln is None:
        return
    assert math.isfinite(ln.t) and ln.t >= 0 and 0 <= ln.status <= 999
    for tr in ln.tries:
        assert tr.port is None or 0 < tr.port < 65536
        assert tr.status is None or 0 <= tr.status <= 999
        assert tr.seconds is None or (math.isfinite(tr.seconds) and tr.seconds >= 0)


@FUZZ_SMALL
@given(st.lists(st.tuples(st.integers(1024, 65535), st.integers(100, 599),
                          st.integers(0, 60000)), min_size=1, max_size=4))
def test_what_nginx_writes_is_attributed_try_by_try(tries):
    raw = line(a=", ".join(f"127.0.0.1:{p}" for p, _, _ in tries), u=", ".join(str(s) for _, s, _ in tries),
               ut=", ".join(f"{ms / 1000:.3f}" for *_, ms in tries))
    ln = parse_line(raw)
    assert [(tr.port, tr.status) for tr in ln.tries] == [(p, s) for p, s, _ in tries]
    assert math.isclose(ln.upstream_seconds, sum(ms for *_, ms in tries) / 1000, abs_tol=1e-6)


# ---- windows ---------------------------------------------------------------------------------

class Clock:
    def __init__(self, t=T0):
        self.t = t

    def __call__(self):
        return self.t


def store(clock=None, window=300.0, **kw):
    return TrafficStore(window, clock=clock or Clock(), **kw)


def test_each_try_counts_for_its_instance_and_the_client_request_for_the_fleet():
    s = store()
    retried = parse_line(line(a="127.0.0.1:8001, 127.0.0.1:8002", u="502, 200", ut="0.000, 0.020"))
    failed = parse_line(line(s=500, u="500", ut="0.030"))
    s.add([retried] * 3 + [failed])
    assert s.window(8001, 10) == TrafficWindow(4, 4, s.window(8001, 10).p95, 10.0)
    w2 = s.window(8002, 10)
    assert (w2.requests, w2.errors_5xx, w2.rate_5xx) == (3, 0, 0.0) and 0.015 <= w2.p95 <= 0.02
    fleet = s.window(None, 10)
    assert (fleet.requests, fleet.errors_5xx) == (4, 1)
    assert s.window(8003, 10) == TrafficWindow(seconds=10.0) and s.window(8003, 10).p95 is None


def test_several_instances_together_merge_their_histograms():
    s = store()
    s.add([parse_line(line(a="127.0.0.1:8001", ut="0.010"))] * 90)
    s.add([parse_line(line(a="127.0.0.1:8002", ut="2.000", s=500, u="500"))] * 10)
    both = s.window_of([8001, 8002], 10)
    assert (both.requests, both.errors_5xx, both.rate_5xx) == (100, 10, 0.1)
    assert 1.5 < both.p95 <= 2.0           # rank 95 of 100 lies among the slow ones
    assert s.window_of([8001, 8001], 10) == s.window(8001, 10)
    assert s.window_of([], 10) == TrafficWindow(seconds=10.0) == s.window_of([9999], 10)


def test_the_window_covers_the_last_seconds_only():
    clock = Clock()
    s = store(clock)
    s.add([parse_line(line(t=T0 - 100, s=500, u="500"))] * 5)
    s.add([parse_line(line(t=T0 - 5))] * 7)
    assert s.window(8001, 10).requests == 7
    assert s.window(8001, 60).requests == 7
    w = s.window(8001, 120)
    assert (w.requests, w.errors_5xx) == (12, 5)
    assert s.window(8001, 100000).requests == 12       # cut to the store's span
    clock.t = T0 + 400                                  # everything aged out
    assert s.window(8001, 300) == TrafficWindow(seconds=300.0)


def test_behind_a_reader_a_window_ends_with_the_last_slot_complete_before_the_read():
    s = store(Clock(T0 + 30))
    s.add([parse_line(line(t=T0 - 1))] * 3 + [parse_line(line(t=T0))] * 2)
    s.until = T0 + 0.5            # read at T0 + 0.5: the slot of T0 is not complete yet
    assert s.window(8001, 1).requests == 3
    s.until = T0 + 1.2
    assert s.window(8001, 1).requests == 2 and s.window(8001, 2).requests == 5


def test_lines_older_than_the_span_or_from_the_future_count_in_totals_but_not_in_windows():
    s = store()
    s.add([parse_line(line(t=T0 - 1))] * 2)
    s.add([parse_line(line(t=T0 - 1000))])
    s.add([parse_line(line(t=T0 - 1 + 300 * 1000, s=500, u="500"))])   # the slot of T0 - 1, 1000 rings later
    assert s.window(8001, 300) == TrafficWindow(2, 0, s.window(8001, 300).p95, 300.0) and s.late == 2
    s = store()
    s.add([parse_line(line(t=T0 - 1000))])
    assert 'status="2xx"} 1.0' in _text(s.families())


def test_p95_is_within_its_bucket_of_the_exact_value():
    rng = random.Random(7)
    s = store()
    values = [rng.lognormvariate(-3, 1.2) for _ in range(2000)]
    s.add(parse_line(line(u="200", ut=f"{v:.3f}")) for v in values)
    exact = sorted(round(v, 3) for v in values)[int(0.95 * len(values)) - 1]
    got = s.window(8001, 10).p95
    assert exact / 1.5 <= got <= exact * 1.5, (exact, got)
    assert max(b / a for a, b in zip(BOUNDS, BOUNDS[1:])) <= 1.5


def test_memory_is_bounded_by_slots_not_by_requests():
    clock = Clock()
    s = store(clock, window=60)
    for k in range(700):                                # 700 s of traffic, 5 requests a second
        clock.t = T0 + k
        s.add([parse_line(line(t=clock.t, a=f"127.0.0.1:{8001 + k % 3}"))] * 5)
    for ring in s._ports.values():
        assert len(ring.data) == SLOTS and sum(d is not None for d in ring.data) <= SLOTS
    assert s.window(8001, 60).requests == pytest.approx(5 * 20, abs=10)


def test_ports_that_left_are_forgotten_and_foreign_ones_never_kept():
    s = store(allowed=lambda p: 8001 <= p <= 8004)
    s.add([parse_line(line(a=f"127.0.0.1:{p}")) for p in (8001, 8002, 9999)])
    assert s.ports() == [8001, 8002] and s.foreign == 1
    s.keep([8002])
    assert s.ports() == [8002] and s.window(8001, 10) == TrafficWindow(seconds=10.0)
    assert s.window(None, 10).requests == 3            # the fleet remembers every request
    assert 'port="8001"' not in _text(s.families())


def _text(fams) -> str:
    from prometheus_client import CollectorRegistry, generate_latest

    class F:
        def collect(self):
            return fams
    r = CollectorRegistry()
    r.register(F())
    return generate_latest(r).decode()


def test_metrics_histogram_is_cumulative_and_matches_the_counts():
    s = store()
    s.add([parse_line(line(ut=f"{v}")) for v in ("0.004", "0.2", "3", "90")])
    text = _text(s.families())
    from prometheus_client.parser import text_string_to_metric_families
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    buckets = {x.labels["le"]: x.value for x in fams["ultrascale_upstream_response_seconds"].samples
               if x.name.endswith("_bucket")}
    assert buckets["0.005"] == 1 and buckets["0.25"] == 2 and buckets["5.0"] == 3
    assert buckets["60.0"] == 3 and buckets["+Inf"] == 4
    counts = {(x.labels["port"], x.labels["status"]): x.value for x in fams["ultrascale_upstream_requests"].samples}
    assert counts[("8001", "2xx")] == 4


# ---- the tail --------------------------------------------------------------------------------

def write(path, data: bytes, mode="ab"):
    with open(path, mode) as f:
        f.write(data)


def test_a_torn_last_line_waits_for_its_newline(tmp_path):
    p = tmp_path / "t.log"
    write(p, b"one\ntw")
    t = LogTail(str(p))
    assert t.read() == [b"one"]
    assert t.read() == []
    write(p, b"o\nthree\n")
    assert t.read() == [b"two", b"three"]


def test_rotation_by_rename_loses_no_line_even_from_late_writers(tmp_path):
    p = tmp_path / "t.log"
    write(p, b"a\nb\n")
    now = [0.0]
    t = LogTail(str(p), clock=lambda: now[0])
    assert t.read() == [b"a", b"b"]
    old = open(p, "ab")                       # an nginx worker that has not reopened yet
    os.rename(p, tmp_path / "t.log.1")
    write(p, b"new1\n")
    old.write(b"c\n")
    old.flush()
    assert sorted(t.read()) == [b"c", b"new1"] and t.rotations == 1
    old.write(b"d\n")                         # still within the grace period
    old.flush()
    write(p, b"new2\n")
    assert sorted(t.read()) == [b"d", b"new2"]
    now[0] = 100.0
    old.close()
    assert t.read() == [] and t._old is None  # the rotated file is let go after the grace


def test_a_rotated_file_nginx_could_not_leave_is_followed_for_as_long_as_it_grows(tmp_path):
    p = tmp_path / "traffic.log"
    write(p, line() + b"\n")
    now = [0.0]
    events = []

    async def reopen():        # the master makes the new file; its workers fail to reopen it
        write(p, b"")
        return True

    m = TrafficMonitor(str(p), ports=lambda: [8001], max_bytes=10, backups=1, reopen=reopen,
                       emit=lambda name, **f: events.append(name), clock=lambda: T0 + 2)
    m.tail.clock = lambda: now[0]
    worker = open(tmp_path / "traffic.log", "ab")

    async def main():
        await m.tick()                         # reads the line, rotates
        for k in range(3):
            now[0] += 100                      # long past the grace
            worker.write(line(s=500, u="500") + b"\n")
            worker.flush()
            await m.tick()
    asyncio.run(main())
    assert m.window(8001, 10).requests == 4 and m.window(8001, 10).errors_5xx == 3
    assert events.count("traffic.log_rotated") == 1          # held while nginx writes to .1
    assert events.count("traffic.log_reopen_failed") == 1
    worker.close()


def test_a_file_renamed_away_and_not_yet_recreated_is_still_followed(tmp_path):
    p = tmp_path / "t.log"
    write(p, b"a\n")
    t = LogTail(str(p))
    t.read()
    w = open(p, "ab")
    os.rename(p, tmp_path / "t.log.1")        # nginx could not reopen (disk full): it goes on in .1
    w.write(b"b\n")
    w.flush()
    assert t.read() == [b"b"]
    w.close()


def test_truncation_in_place_restarts_at_zero(tmp_path):
    p = tmp_path / "t.log"
    write(p, b"a\nb\nhalf")
    t = LogTail(str(p))
    assert t.read() == [b"a", b"b"]
    write(p, b"c\n", mode="wb")               # copytruncate
    assert t.read() == [b"c"] and t.truncations == 1 and t.torn == 1


def test_a_huge_line_is_dropped_with_bounded_memory(tmp_path):
    p = tmp_path / "t.log"
    t = LogTail(str(p), max_line=1000, backlog=1 << 30)
    write(p, b"x" * 3_000_000)                # no newline yet: read over several calls
    for _ in range(3):
        assert t.read(budget=1 << 20) == []
        assert len(t._partial) <= 1000
    write(p, b"x" * 10 + b"\nok\n" + b"y" * 5000 + b"\nfine\n")
    assert t.read() == [b"ok", b"fine"] and t.oversized == 2


def test_reads_are_bounded_by_the_budget_and_a_reader_far_behind_skips(tmp_path):
    p = tmp_path / "t.log"
    t = LogTail(str(p), max_lag=100_000)
    t.read()                                  # missing file: nothing, no error raised
    assert t.error
    write(p, b"".join(b"%06d\n" % i for i in range(10_000)))   # 70 kB
    got = t.read(budget=7000)
    assert len(got) == 1000 and t.lag == 63_000
    write(p, b"".join(b"%06d\n" % i for i in range(10_000, 40_000)))  # now 210 kB behind
    got = t.read(budget=7000)
    assert t.skipped > 0 and got[-1] == b"039999" and len(got) < 1000


@pytest.mark.parametrize("kind", ["fifo", "dir", "devzero"])
def test_what_is_not_a_regular_file_is_refused_without_hanging(tmp_path, kind):
    p = tmp_path / "t.log"
    if kind == "fifo":
        os.mkfifo(p)
    elif kind == "dir":
        p.mkdir()
    else:
        p.symlink_to("/dev/zero")
    t = LogTail(str(p))
    assert t.read() == [] and "not a regular file" in t.error
    assert t.pending()


def test_the_first_open_reads_only_the_recent_history(tmp_path):
    p = tmp_path / "t.log"
    write(p, b"".join(b"%06d\n" % i for i in range(1000)))
    got = LogTail(str(p), backlog=70).read()
    assert got == [b"%06d" % i for i in range(990, 1000)]


def test_monitor_rotates_past_max_bytes_and_reopens(tmp_path):
    p = tmp_path / "traffic.log"
    write(p, line() * 50 + b"\n")
    write(p, b"\n".join(line() for _ in range(50)) + b"\n", mode="wb")
    reopened = []

    async def reopen():
        reopened.append(1)
        write(p, line(s=500, u="500") + b"\n")       # what nginx writes after it reopened
        return True

    m = TrafficMonitor(str(p), ports=lambda: [8001], max_bytes=1000, backups=2, reopen=reopen,
                       clock=lambda: T0 + 2)

    async def main():
        await m.tick()
        await m.tick()
    asyncio.run(main())
    assert reopened == [1] and (tmp_path / "traffic.log.1").exists()
    w = m.window(8001, 10)
    assert (w.requests, w.errors_5xx) == (51, 1)



def test_monitor_rotates_nginx_error_log_past_max_bytes_too(tmp_path):
    # the static upstream makes nginx log each try of a closed port: its error.log must not
    # grow without bound either
    p, err = tmp_path / "traffic.log", tmp_path / "error.log"
    write(p, line() + b"\n")
    err.write_bytes(b"x" * 999)
    reopened = []

    async def reopen():
        reopened.append(1)
        return True

    m = TrafficMonitor(str(p), ports=lambda: [8001], max_bytes=1000, backups=2, reopen=reopen,
                       clock=lambda: T0 + 2, companions=(str(err),))
    asyncio.run(m.tick())
    assert reopened == [] and not (tmp_path / "error.log.1").exists()
    err.write_bytes(b"x" * 1000)
    asyncio.run(m.tick())
    assert reopened == [1] and (tmp_path / "error.log.1").stat().st_size == 1000
    assert not (tmp_path / "traffic.log.1").exists(), "the traffic log was not big enough"


# ---- alerts per instance ---------------------------------------------------------------------

SECTION = AlertsSection(error_rate=0.05, error_rate_for=0, p95_latency_seconds=1.0, p95_latency_for=0,
                        min_requests=5)


class Source:
    def __init__(self, windows):
        self.windows = windows

    def window(self, port, seconds):
        return self.windows.get(port, TrafficWindow())


def test_one_bad_instance_fires_its_own_alert_and_the_fleets():
    src = Source({None: TrafficWindow(100, 50, 0.02), 8001: TrafficWindow(50, 50, 0.01),
                  8002: TrafficWindow(50, 0, 0.02)})
    sample = with_traffic(MetricSample(interval=10), src, [8001, 8002])
    rules = instance_rules(SECTION, sample.instances)
    state, ts = evaluate(build_rules(SECTION) + rules, AlertState(), sample, 0)
    fired = {(t.name, t.labels.get("port")) for t in ts if t.status == "firing"}
    assert fired == {("error_rate", None), ("error_rate", 8001)}
    assert any("instance 8001: 5xx rate 100.00%" in t.message for t in ts)
    assert any("at nginx" in t.message for t in ts if not t.labels)
    # 8001 leaves the fleet: its alert resolves, the fleet's stays
    later = with_traffic(MetricSample(interval=10), src, [8002])
    state, ts = evaluate(build_rules(SECTION) + instance_rules(SECTION, later.instances), state, later, 10)
    assert [(t.name, t.status, t.labels) for t in ts] == [("error_rate", "resolved", {"port": 8001})]


def test_a_quiet_instance_is_not_judged():
    src = Source({8001: TrafficWindow(3, 3, 5.0)})     # under min_requests
    sample = with_traffic(MetricSample(interval=10), src, [8001])
    _, ts = evaluate(instance_rules(SECTION, [8001]), AlertState(), sample, 0)
    assert ts == []


def test_the_sampler_takes_requests_errors_and_latency_from_the_traffic_source():
    src = Source({None: TrafficWindow(40, 4, 3.0), 8001: TrafficWindow(40, 4, 3.0)})
    src.ports = lambda: [8001, 8002]
    src.serving = lambda: [8001]         # 8002 is stopped: its refused connections judge nothing
    times = iter([0.0, 10.0])
    sampler = Sampler(lambda: [], clock=lambda: next(times), cpu_count=2, traffic=src)

    async def two():
        await sampler()
        return await sampler()
    s = asyncio.run(two())
    assert (s.requests, s.errors_5xx, s.p95_latency, s.source) == (40, 4, 3.0, "nginx")
    assert s.instances[8001].rate_5xx == 0.1 and set(s.instances) == {8001}


def test_figures_age_out_when_the_log_goes_away(tmp_path):
    p = tmp_path / "traffic.log"
    write(p, b"\n".join(line(t=T0 - 1, s=500, u="500") for _ in range(20)) + b"\n")
    now = [T0 + 1]
    events = []
    m = TrafficMonitor(str(p), ports=lambda: [8001], clock=lambda: now[0],
                       emit=lambda name, **f: events.append(name))
    asyncio.run(m.tick())
    assert m.window(8001, 10).errors_5xx == 20
    os.unlink(p)
    now[0] = T0 + 30
    asyncio.run(m.tick())                     # still following the unlinked file: nothing new
    assert m.window(8001, 10) == TrafficWindow(seconds=10.0)    # the old 500s do not keep an alert firing


@pytest.mark.parametrize("nginx, says", [
    ("{access_log: logs/traffic.log}", "nginx.access_log (line 1): is the traffic log's file"),
    ("{traffic_window: 5}", "nginx.traffic_window (line 1): must be 10..3600 seconds"),
    ("{traffic_log: 'a;b'}", "nginx.traffic_log (line 1): must be off, '' or a path"),
    ("{mode: system, upstream_file: /etc/u/up.conf, traffic_log: rel.log}",
     "nginx.traffic_log (line 1): must be an absolute path in system mode"),
])
def test_traffic_settings_that_cannot_work_are_refused_naming_the_key(nginx, says):
    from ultrascaled.spec import SpecError, parse_spec
    with pytest.raises(SpecError) as err:
        parse_spec(f"nginx: {nginx}")
    assert any(e.startswith(says) for e in err.value.errors), err.value.errors


def test_the_windows_of_busy_instances_take_a_bounded_size():
    import tracemalloc
    ports = 4
    lines = [parse_line(line(t=T0 - k, a=f"127.0.0.1:{8001 + p}", ut="0.0%02d" % (k % 90)))
             for k in range(SLOTS) for p in range(ports)]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    s = store()
    for _ in range(2):                        # more requests fill the same slots: no growth
        s.add(lines)
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert sum(d is not None for r in s._ports.values() for d in r.data) == ports * SLOTS
    # (ports + 1) x slots x (the 288-byte array and its list slot), plus the per-port totals
    assert used < (ports + 1) * SLOTS * 400, used


def test_an_unreadable_traffic_log_leaves_the_apps_own_metrics_to_the_alerts(tmp_path):
    m = TrafficMonitor(str(tmp_path / "missing.log"), ports=lambda: [8001], clock=lambda: T0)
    asyncio.run(m.tick())
    assert not m.active and "missing.log" in m.tail.error
    app = [_counter(3, 2)]
    times = iter([0.0, 10.0])
    sampler = Sampler(lambda: app, clock=lambda: next(times), cpu_count=2, traffic=m)

    async def two():
        await sampler()
        app[0] = _counter(30, 20)
        return await sampler()
    s = asyncio.run(two())
    assert (s.source, s.requests, s.errors_5xx, s.instances) == ("app", 27, 18, {})


def _counter(total: float, errors: float):
    from prometheus_client.metrics_core import CounterMetricFamily
    c = CounterMetricFamily("ultrascale_http_requests", "", labels=["instance", "status"])
    c.add_metric(["8001", "2xx"], total - errors)
    c.add_metric(["8001", "5xx"], errors)
    return c
