"""The RL study's report on made-up runs: starts, ends, paired differences and the
predictions, worked by hand."""

import json

import pytest

import rl_report as report


def run(rm, seed, gold, sure, reward=(0.0, 1.0)):
    """Thirty windows whose gold and own-cue share go linearly from start to end."""
    windows = []
    for k in range(30):
        t = k / 29
        windows.append({"step": 10 * (k + 1), "rl/gold": gold[0] + t * (gold[1] - gold[0]),
                        "rl/cue/sure": sure[0] + t * (sure[1] - sure[0]),
                        "rl/cue/hedge": 0.3, "rl/length": 10.0,
                        "rl/reward": reward[0] + t * (reward[1] - reward[0])})
    return {"rm": rm, "seed": seed, "windows": windows, "wall_seconds": 60.0, "commit": "x"}


def test_the_report_reads_starts_ends_and_pairs(tmp_path):
    for seed in range(5):
        for rm, gold, sure in (("none", (0.6, 0.6), (0.5, 0.9)),
                               ("neutral", (0.6, 0.8), (0.5, 0.5))):
            path = tmp_path / "runs" / rm / f"seed{seed}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(run(rm, seed, gold, sure)))
    runs = report.load(tmp_path)
    ends = report.start_end(runs["none"][0])
    # the mean of the last three of 30 linear windows: 27/29, 28/29, 29/29 of the way
    assert ends["end"]["rl/cue/sure"] == pytest.approx(0.5 + 0.4 * 28 / 29)
    assert ends["start"]["rl/gold"] == 0.6
    gain = report.paired(runs, "neutral", "rl/gold")
    assert gain["n"] == 5 and gain["mean"] == pytest.approx(0.2 * 28 / 29)
    checks = report.predictions(runs)

    def held(start):
        return next(c["held"] for c in checks if c["claim"].startswith(start))

    assert held("the standard RM's policy: own-cue") is True       # +0.39 by the end
    assert held("the standard RM's policy: gold") is True           # stalls
    assert held("the neutral RM's policy ends >= +0.10") is True
    # the RMs not run yet are "not decided", never a verdict
    assert any(c["held"] is None for c in report.predictions(runs))
    report.write_report(tmp_path)
    assert "| neutral | 5 |" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "gold_vs_reward.png").stat().st_size > 1000


def test_a_prediction_that_fails_its_first_comparison_is_decided_not_a_crash(tmp_path):
    """Prediction 5 with sfc_two_stage's policy below the standard RM's (its first
    comparison false): decided as not held, with both numbers."""
    for seed in range(5):
        for rm, gold in (("none", (0.6, 0.6)), ("neutral", (0.6, 0.8)),
                         ("sfc_two_stage", (0.6, 0.5))):
            path = tmp_path / "runs" / rm / f"seed{seed}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(run(rm, seed, gold, (0.5, 0.5))))
    check = next(c for c in report.predictions(report.load(tmp_path))
                 if c["claim"].startswith("sfc_two_stage's policy ends with gold"))
    assert check["held"] is False and "neutral" in check["detail"]
