"""The compile benchmark's arithmetic, by hand on small cases."""

import pytest

pytestmark = pytest.mark.unit


def test_speedups_compare_warm_passes_and_charge_compiling_beyond_any_first_run(
        benchmark_script):
    bench = benchmark_script("compile_speed")
    # [first pass, warm pass] seconds per kind
    passes = {"eager": {"none": [33.0, 30.0], "proxy": [16.0, 15.0]},
              "compiled": {"none": [123.0, 20.0], "proxy": [45.0, 12.0]}}
    got = bench.speedups(passes)
    assert got["none"]["ratio"] == pytest.approx(1.5)             # 30 / 20
    assert got["proxy"]["ratio"] == pytest.approx(1.25)           # 15 / 12
    assert got["none"]["compile_extra"] == pytest.approx(100.0)   # (123 - 20) - (33 - 30)
    assert got["proxy"]["compile_extra"] == pytest.approx(32.0)   # (45 - 12) - (16 - 15)
    assert (got["none"]["eager"], got["none"]["compiled"]) == (30.0, 20.0)
    # more warm passes: their median
    passes = {"eager": {"none": [33.0, 30.0, 36.0, 31.0]},
              "compiled": {"none": [123.0, 20.0, 19.0, 40.0]}}
    got = bench.speedups(passes)["none"]
    assert (got["eager"], got["compiled"]) == (31.0, 20.0)
    assert got["compile_extra"] == pytest.approx(101.0)           # (123 - 20) - (33 - 31)


def test_compiled_grid_divides_each_variant_by_its_own_speed_up(benchmark_script):
    bench = benchmark_script("compile_speed")
    # 3,600 s of none at 1.5x and 7,200 s of sfc_joint at 2x: 2,400 + 3,600 s of runs, plus
    # 1,800 s of bases, over 2 jobs = 3,900 s; plus 900 s compiling once = 4,800 s
    hours = bench.compiled_grid_hours({"none": 3600.0, "sfc_joint": 7200.0},
                                      {"none": 1.5, "sfc_joint": 2.0, "proxy": 9.0}, 2, 1800.0,
                                      900.0)
    assert hours == pytest.approx(4800 / 3600)


def test_accuracy_difference_reads_rms_splits_and_the_proxies_in_and_out_of_sample(
        benchmark_script):
    bench = benchmark_script("compile_speed")
    rm = {"accuracy": {"povid@0.95": 0.90, "rlhfv@0.95": 0.70}}
    assert bench.accuracy_difference(
        rm, {"accuracy": {"povid@0.95": 0.92, "rlhfv@0.95": 0.65}}) == pytest.approx(0.05)

    def proxy(test, inside, outside):
        return {"test": {"accuracy": test, "margin": [0.1]}, "accuracy_in_sample": inside,
                "accuracy_out_of_sample": outside}
    assert bench.accuracy_difference(proxy(0.8, 0.9, 0.85), proxy(0.8, 0.9, 0.81)) == \
        pytest.approx(0.04)
    assert bench.accuracy_difference(proxy(0.8, 0.9, 0.85), proxy(0.77, 0.9, 0.85)) == \
        pytest.approx(0.03)


def test_no_warm_pass_is_refused_before_any_run(benchmark_script, capsys):
    bench = benchmark_script("compile_speed")
    with pytest.raises(SystemExit):
        bench.parse_args(["--warm-passes", "0"])
    assert "--warm-passes must be at least 1, not 0" in capsys.readouterr().err
    assert bench.parse_args([]).warm_passes == 2
