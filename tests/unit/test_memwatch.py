"""The watchdog's decision as tables: K consecutive samples over the limit, per pid."""
from ultrascaled.core.memwatch import MemSample, budget_crossed, decide

LIMIT = 100


def w(pid, value, port=8001, role="worker"):
    return MemSample(port, pid, role, value)


def test_a_worker_is_recycled_only_after_k_consecutive_samples_over_the_limit():
    streaks = {}
    streaks, due = decide(streaks, [w(1, 150)], LIMIT, 3)
    assert due == [] and streaks == {1: 1}
    streaks, due = decide(streaks, [w(1, 150)], LIMIT, 3)
    assert due == [] and streaks == {1: 2}
    streaks, due = decide(streaks, [w(1, 150)], LIMIT, 3)
    assert [(r.pid, r.role, r.value, r.limit, r.samples) for r in due] == [(1, "worker", 150, 100, 3)]
    assert streaks == {}


def test_one_sample_under_the_limit_resets_the_streak():
    streaks, _ = decide({}, [w(1, 150)], LIMIT, 3)
    streaks, _ = decide(streaks, [w(1, 150)], LIMIT, 3)
    streaks, due = decide(streaks, [w(1, 90)], LIMIT, 3)
    assert due == [] and streaks == {}


def test_only_the_offender_is_recycled_not_its_neighbours():
    streaks, due = decide({1: 1}, [w(1, 200), w(2, 99), w(3, 100, port=8002)], LIMIT, 2)
    assert [r.pid for r in due] == [1]


def test_a_pid_already_being_recycled_is_not_signalled_again():
    streaks, due = decide({1: 5}, [w(1, 200)], LIMIT, 2, recycling=frozenset({1}))
    assert due == [] and streaks == {1: 6}


def test_a_master_over_the_limit_is_reported_as_master():
    _, due = decide({}, [w(7, 300, role="master")], LIMIT, 1)
    assert due[0].role == "master"


def test_vanished_pids_are_forgotten():
    streaks, _ = decide({1: 2, 2: 1}, [w(2, 150)], LIMIT, 5)
    assert streaks == {2: 2}


def test_budget_crossing_fires_once_and_resolves_once():
    assert budget_crossed(120, 100, was_over=False) is True
    assert budget_crossed(130, 100, was_over=True) is None
    assert budget_crossed(90, 100, was_over=True) is False
    assert budget_crossed(90, 100, was_over=False) is None


# ---- how often to sample: relaxed while everything is far from its limit ---------------------

from ultrascaled.core.memwatch import relaxed_interval, sample_delay, worst_reaction  # noqa: E402

MIB = 2**20
KW = dict(base=1.0, relaxed=5.0, below=0.5)


def test_far_under_the_limit_and_the_budget_samples_at_the_relaxed_interval():
    assert sample_delay(100 * MIB, 500 * MIB, 2000 * MIB, 8192 * MIB, **KW) == 5.0


def test_a_process_over_half_its_limit_brings_back_the_base_interval():
    assert sample_delay(250 * MIB, 500 * MIB, 2000 * MIB, 8192 * MIB, **KW) == 1.0
    assert sample_delay(600 * MIB, 500 * MIB, 2000 * MIB, 8192 * MIB, **KW) == 1.0


def test_a_fleet_near_its_budget_brings_back_the_base_interval():
    assert sample_delay(100 * MIB, 500 * MIB, 5000 * MIB, 8192 * MIB, **KW) == 1.0


def test_an_unsampled_process_or_a_pin_keeps_the_base_interval():
    assert sample_delay(None, 500 * MIB, 0, 8192 * MIB, **KW) == 1.0
    assert sample_delay(1 * MIB, 500 * MIB, 0, 8192 * MIB, pinned=True, **KW) == 1.0


def test_a_relaxed_interval_of_zero_or_below_the_base_turns_relaxing_off():
    assert sample_delay(1 * MIB, 500 * MIB, 0, 8192 * MIB, base=1.0, relaxed=0.0, below=0.5) == 1.0
    assert sample_delay(1 * MIB, 500 * MIB, 0, 8192 * MIB, base=2.0, relaxed=1.0, below=0.5) == 2.0


def test_worst_case_reaction_is_one_relaxed_interval_then_k_minus_one_base_ones():
    assert worst_reaction(1.0, 5.0, 3) == 7.0
    assert worst_reaction(1.0, 0.0, 3) == 3.0     # relaxing off: K x base, as before


def test_the_relaxed_interval_never_outlasts_the_log_size_checks_cadence():
    assert relaxed_interval(1.0, 5.0) == 5.0
    assert relaxed_interval(0.1, 5.0) == 0.5 and worst_reaction(0.1, 5.0, 3) == 0.7
    assert relaxed_interval(3.0, 60.0) == 10.0
    assert relaxed_interval(1.0, 0.0) == 1.0
