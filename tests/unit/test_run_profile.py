"""The run-profile benchmark's arithmetic and timers, by hand on small cases."""

import pytest

pytestmark = pytest.mark.unit


def test_shares_are_of_the_run_and_the_rest_is_what_no_part_took(benchmark_script):
    profile = benchmark_script("run_profile")
    parts = {"forward": 4.0, "backward": 3.0, "encoding": 1.0, "test": 0.5}
    got = profile.shares(parts, 10.0)
    assert got["forward_share"] == pytest.approx(0.4)
    assert got["test_share"] == pytest.approx(0.05)
    assert got["rest_share"] == pytest.approx(0.15)          # 10 - 8.5
    assert got["steps_share"] == pytest.approx(0.7)          # forward + backward


def test_the_floor_keeps_only_each_variants_steps_and_adds_the_bases(benchmark_script):
    profile = benchmark_script("run_profile")
    # 3,600 s of none at share 0.5 and 7,200 s of sfc_joint at 0.75: 1,800 + 5,400 s of
    # steps, plus 1,800 s of bases, over 2 jobs = 4,500 s as the grid ran
    seconds, shares = {"none": 3600.0, "sfc_joint": 7200.0}, {"none": 0.5, "sfc_joint": 0.75}
    assert profile.floor_hours(seconds, shares, 40.0, 40.0, 2, 1800.0) == \
        pytest.approx(4500 / 3600)
    # today's standard run takes 30 s against the grid's 40: the steps shrink to 3/4, the
    # bases do not: (7,200 * 0.75 + 1,800) / 2 = 3,600 s
    assert profile.floor_hours(seconds, shares, 40.0, 30.0, 2, 1800.0) == pytest.approx(1.0)


def test_timers_sum_the_seconds_inside_wrapped_methods_even_when_they_raise(
        benchmark_script, monkeypatch):
    profile = benchmark_script("run_profile")
    clock = iter([10.0, 12.5, 20.0, 21.0, 30.0, 30.25])
    monkeypatch.setattr(profile.time, "perf_counter", lambda: next(clock))

    class Model:
        def forward(self, x):
            if x < 0:
                raise ValueError("negative")
            return 2 * x

    timers = profile.Timers()
    timers.wrap(Model, "forward", "forward")
    assert Model().forward(3) == 6                          # 2.5 s
    with pytest.raises(ValueError):
        Model().forward(-1)                                 # 1 s, counted all the same
    assert timers.seconds == {"forward": 3.5, "backward": 0.0, "encoding": 0.0, "test": 0.0}
    timers.reset()
    Model().forward(1)                                      # 0.25 s, after the reset
    assert timers.seconds["forward"] == 0.25
