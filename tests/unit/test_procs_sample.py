"""The sampler's direct /proc reads (effects/procs.py) against psutil's, on real processes, and
the identity check before a worker is signalled."""
import os
import signal
import subprocess
import sys
import time

import psutil

from ultrascaled.effects import procs

PARENT = ("import subprocess, sys, time; c = subprocess.Popen([sys.executable, '-c', "
          "'import time; x = [0] * 10**6; time.sleep(30)']); print(c.pid, flush=True); time.sleep(30)")


def _group():
    p = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    child = int(p.stdout.readline())
    time.sleep(0.3)
    return p, child


def test_sample_group_reads_the_same_rss_and_cpu_as_psutil():
    p, child = _group()
    try:
        master, workers = procs.sample_group(p.pid, "rss")
        assert [w.pid for w in workers] == [child]
        for m in (master, workers[0]):
            q = psutil.Process(m.pid)
            assert abs(m.rss - q.memory_info().rss) <= 64 * 1024   # read a moment apart
            t = q.cpu_times()
            assert abs(m.cpu - (t.user + t.system)) <= 0.05
        assert workers[0].rss > 8 << 20, "the child's list of a million items is resident"
        full, _ = procs.sample_group(p.pid, "uss")
        assert full.uss is not None and 0 < full.uss <= full.rss
    finally:
        p.kill()
        p.wait()
        procs.forget_pids([p.pid, child])


def test_a_vanished_pid_samples_as_none():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    assert procs.sample_group(p.pid) == (None, [])


def test_signal_worker_signals_only_the_process_it_saw():
    p, child = _group()
    try:
        assert not procs.signal_worker(child, 0), "never sampled: not signalled"
        procs.sample_group(p.pid)
        procs._STARTS[child] = b"1"            # as if the pid had been taken by another process
        assert not procs.signal_worker(child, signal.SIGTERM)
        assert psutil.pid_exists(child)
        procs.sample_group(p.pid)              # seen again: its own start time
        assert procs.signal_worker(child, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while psutil.Process(child).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
            time.sleep(0.02)
        assert psutil.Process(child).status() == psutil.STATUS_ZOMBIE
    finally:
        p.kill()
        p.wait()
        procs.forget_pids([p.pid, child])
    assert os.getpid() not in procs._STARTS


def test_without_the_kernels_children_file_one_pass_over_proc_serves_the_round(monkeypatch):
    p, child = _group()
    scans = []
    real = procs.children_map
    monkeypatch.setattr(procs, "children_of", lambda pid: None)
    monkeypatch.setattr(procs, "children_map", lambda: scans.append(1) or real())
    monkeypatch.setattr(procs, "_ROUND_MAP", (-1.0, {}))
    try:
        for _ in range(3):                      # three instances of one round
            _, workers = procs.sample_group(p.pid)
            assert [w.pid for w in workers] == [child]
        assert len(scans) == 1
    finally:
        p.kill()
        p.wait()
        procs.forget_pids([p.pid, child])
