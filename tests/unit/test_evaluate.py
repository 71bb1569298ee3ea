"""Accuracy, margins, subsets, the matrix, SFD and textual cues on hand-computed inputs."""

import doctest
import json
import math

import pytest
import torch
from PIL import Image

import mmrm.evaluate.diagnosis as diagnosis
import mmrm.evaluate.metrics as evaluate
import mmrm.weighting as weighting
from mmrm.evaluate.diagnosis import (cue_balanced_accuracy, proxy_is_wrong,
                                     shortcut_failure_degradation, textual_cues, weight_phases)
from mmrm.evaluate.matrix import CrossDistributionMatrix
from mmrm.evaluate.metrics import (best_of_n_curve, best_of_n_quality, evaluation_report,
                                  paired_bootstrap)
from mmrm.evaluate.metrics import pairwise_accuracy
from mmrm.evaluate.plots import plot_weight_histograms
from mmrm.formats import PairRecord


def pair(i, chosen="a", rejected="b", **extra):
    return PairRecord(id=str(i), prompt="p", img_path="x.png", chosen=chosen,
                      rejected=rejected, extra=extra)


def test_docstring_examples_hold():
    for module in (evaluate, diagnosis, weighting):
        failed, tried = doctest.testmod(module)
        assert tried > 0 and failed == 0, module.__name__


def test_accuracy_counts_ties_half_and_reports_them():
    chosen = torch.tensor([2.0, 1.0, 0.0, 5.0])
    rejected = torch.tensor([1.0, 1.0, 3.0, 4.0])
    assert pairwise_accuracy(chosen, rejected) == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    report = evaluate.accuracy_report(chosen, rejected)
    assert report["ties"] == 1 and report["pairs"] == 4
    assert report["margin"]["mean"] == pytest.approx((1 + 0 - 3 + 1) / 4)


def test_subsets_and_macro_average_by_hand():
    # group A: 2 pairs, 1 right -> 0.5; group B: 1 pair, right -> 1.0; C: 1 pair, wrong -> 0.0
    pairs = [pair(0, subset="A"), pair(1, subset="A"), pair(2, subset="B"), pair(3, subset="C")]
    chosen = torch.tensor([1.0, 0.0, 1.0, 0.0])
    rejected = torch.tensor([0.0, 1.0, 0.0, 1.0])
    report = evaluation_report(pairs, chosen, rejected)
    assert report["accuracy"] == pytest.approx(0.5)
    assert {k: v["accuracy"] for k, v in report["subsets"].items()} == \
        {"A": 0.5, "B": 1.0, "C": 0.0}
    assert report["macro_accuracy"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert "subsets" not in evaluation_report([pair(0)], chosen[:1], rejected[:1])


def test_shortcut_failure_degradation_by_hand():
    text_c = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 0.0])
    text_r = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, 0.0])   # proxy wrong on pairs 4 and 5
    mm_c = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.0])
    mm_r = torch.tensor([0.0, 0.0, 0.0, 1.0, 0.0, 1.0])     # right on 3/4 rest, 1/2 failure
    failure = proxy_is_wrong(text_c, text_r)
    assert failure.tolist() == [False] * 4 + [True, True]
    result = shortcut_failure_degradation(mm_c, mm_r, failure)
    assert result["accuracy_rest"] == pytest.approx(0.75)
    assert result["accuracy_failure"] == pytest.approx(0.5)
    assert result["sfd"] == pytest.approx(0.25)
    assert (result["failure_pairs"], result["rest_pairs"]) == (2, 4)


def test_textual_cues_find_the_planted_opener_and_length():
    # "Sure!" opens the chosen answer in 16 pairs and the rejected one in 4: accuracy 0.8
    pairs = [pair(i, "Sure! it is red", "Well, it is blue") for i in range(16)] + \
            [pair(16 + i, "Well, it is red", "Sure! it is blue") for i in range(4)] + \
            [pair(20 + i, "it is red and round", "it is blue") for i in range(10)]
    cues = {c["cue"]: c for c in textual_cues(pairs, min_pairs=5, top=50)}
    sure = cues['has "sure"']
    assert sure["coverage"] == pytest.approx(20 / 30) and sure["accuracy"] == pytest.approx(0.8)
    assert cues['lacks "well"']["accuracy"] == pytest.approx(0.8)
    longer = cues["longer response (words)"]
    assert longer["coverage"] == pytest.approx(10 / 30) and longer["accuracy"] == 1.0
    best = textual_cues(pairs, min_pairs=5, top=1)[0]      # the colour decides every pair
    assert ("red" in best["cue"] or "blue" in best["cue"]) and best["score"] == 0.5


def test_matrix_summary_markdown_and_heatmap(tmp_path):
    matrix = CrossDistributionMatrix(
        {"povid/none": {"povid": 0.9, "rlhfv": 0.6, "vlf": 0.5},
         "rlhfv": {"povid": 0.7, "rlhfv": 0.8, "vlf": 0.6}})
    assert matrix.row_summary("povid/none") == {"ID": 0.9, "OOD": pytest.approx(0.55)}
    summary = matrix.summary()
    assert summary["ID"] == pytest.approx(0.85)
    assert summary["OOD"] == pytest.approx((0.55 + 0.65) / 2)
    paths = matrix.write(tmp_path)
    data = json.loads(paths["json"].read_text())
    assert data["sources"] == {"povid/none": "povid", "rlhfv": "rlhfv"}
    assert "| povid/none | **0.900** | 0.600 | 0.500 | 0.900 | 0.550 |" in \
        paths["markdown"].read_text()
    with Image.open(paths["png"]) as image:
        assert image.format == "PNG" and image.width > 100 and image.height > 100
        assert len(set(image.convert("RGB").getdata())) > 10   # not a blank canvas


def test_weight_histogram_plot_reads_training_logs(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    hist = weighting.weight_histogram(torch.tensor([0.1, 0.2, 0.9]))
    metrics.write_text("\n".join(json.dumps({"step": s, "weight/hist": hist})
                                 for s in range(1, 7)) + "\n")
    out = plot_weight_histograms(metrics, tmp_path / "w.png")
    assert out.stat().st_size > 1000
    metrics.write_text(json.dumps({"step": 1, "loss": 0.5}) + "\n")
    with pytest.raises(ValueError, match="no weight/hist"):
        plot_weight_histograms(metrics, tmp_path / "w2.png")


def test_best_of_n_quality_by_hand():
    """The docstring's example: item 1 picks the 2-mistake answer; item 2 ties a 1-mistake
    and a correct answer at the top (expected: half a correct pick, 0.5 mistakes)."""
    q = best_of_n_quality([[0, 2], [1, 0, 3]], [[0.1, 0.9], [5.0, 5.0, 1.0]])
    assert q["items"] == 2
    assert q["fully_correct"] == pytest.approx(0.25)
    assert q["mean_errors"] == pytest.approx(1.25)
    assert q["random_fully_correct"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert q["random_mean_errors"] == pytest.approx((1 + 4 / 3) / 2)
    assert (q["oracle_fully_correct"], q["oracle_mean_errors"]) == (1.0, 0.0)
    perfect = best_of_n_quality([[3, 0, 1]], [[-1.0, 2.0, 1.0]])
    assert (perfect["fully_correct"], perfect["mean_errors"]) == (1.0, 0.0)
    with pytest.raises(ValueError, match="2 candidates but 3 scores"):
        best_of_n_quality([[0, 1]], [[1.0, 2.0, 3.0]])


def test_paired_bootstrap_by_hand():
    """Differences [0, 1]: resampled means are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4,
    so the 95% interval is [0, 1]; identical differences give a point interval."""
    ci = paired_bootstrap([0.0, 1.0], resamples=4000, seed=1)
    assert (ci["n"], ci["mean"], ci["low"], ci["high"]) == (2, 0.5, 0.0, 1.0)
    flat = paired_bootstrap([0.1] * 5, resamples=100)
    assert flat["low"] == pytest.approx(0.1) and flat["high"] == pytest.approx(0.1)
    wide = paired_bootstrap([-0.2, 0.1, 0.3, 0.0, 0.2, -0.1], resamples=4000)
    assert wide["low"] < 0 < wide["high"] and wide["mean"] == pytest.approx(0.05)
    assert paired_bootstrap([])["n"] == 0


def test_cue_balanced_accuracy_by_hand():
    # right on 9 of the 10 pairs whose cue sits on the chosen side; the two cue-on-rejected
    # pairs do not count; anti-cue 0.5 -> (0.9 + 0.5) / 2
    chosen = torch.tensor([1.0] * 9 + [0.0, 1.0, 0.0])
    rejected = torch.zeros(12) + torch.tensor([0.0] * 9 + [1.0, 0.0, 0.0])
    sides = [True] * 10 + [False, False]
    assert cue_balanced_accuracy(chosen, rejected, sides, 0.5) == pytest.approx(0.7)
    with pytest.raises(ValueError, match="12 rewards for 2 pairs"):
        cue_balanced_accuracy(chosen, rejected, [True, False], 0.5)


def test_weight_phases_by_hand():
    """The docstring's example: proxy-wrong weights 0.7, 0.6 | 0.9, 0.9 | 0.9, 0.9."""
    records = [{"step": 10 * (i + 1), "weight/mean": 0.5, "weight/mean_proxy_wrong": w,
                "weight/mean_proxy_right": 0.1} for i, w in enumerate([0.7, 0.6, 0.9, 0.9,
                                                                      0.9, 0.9])]
    records[1]["weight/mean_proxy_right"] = float("nan")    # a window without such pairs
    phases = weight_phases(records)
    assert [p["proxy_wrong"] for p in phases] == pytest.approx([0.65, 0.9, 0.9])
    assert [(p["first_step"], p["last_step"]) for p in phases] == [(10, 20), (30, 40), (50, 60)]
    assert phases[0]["proxy_right"] == pytest.approx(0.1) and phases[2]["mean"] == 0.5
    assert all(math.isnan(p["ess"]) for p in phases)     # no mean squares logged
    assert weight_phases([]) == []


def test_weight_phases_effective_sample_share_by_hand():
    # thirds: weights 1,1,0,0 (mean .5, mean square .5) -> 0.5; all equal -> 1; one pair of
    # four carries it all (mean .25, mean square .25) -> 0.25
    records = [{"step": s, "weight/mean": m, "weight/mean_sq": q} for s, (m, q) in
               enumerate([(0.5, 0.5), (0.5, 0.5), (0.9, 0.81), (0.9, 0.81), (0.25, 0.25),
                          (0.25, 0.25)])]
    assert [p["ess"] for p in weight_phases(records)] == pytest.approx([0.5, 1.0, 0.25])


def test_best_of_n_curve_by_hand():
    # the docstring's item: N=1 picks at random (1/3 correct); N=2 picks the 0.9 answer
    # (wrong) in the 2 subsets that hold it, the 0.2 one (right) in the third: 1/3; N=3: 0
    curve = best_of_n_curve([[0, 1, 1]], [[0.2, 0.9, 0.1]], ns=(1, 2, 3))
    assert {n: v["fully_correct"] for n, v in curve.items()} == pytest.approx(
        {1: 1 / 3, 2: 1 / 3, 3: 0.0})
    assert curve[2]["mean_errors"] == pytest.approx(2 / 3)
    # an RM that ranks the right answer first climbs to 1; N = K equals best_of_n_quality
    errors, scores = [[2, 0, 1, 3]], [[0.1, 0.9, 0.5, 0.2]]
    good = best_of_n_curve(errors, scores)
    # N=2: the right answer is in 3 of 6 subsets and wins each: 1/2
    assert [good[n]["fully_correct"] for n in (1, 2, 4)] == pytest.approx([0.25, 0.5, 1.0])
    assert good[4]["fully_correct"] == best_of_n_quality(errors, scores)["fully_correct"]
    assert 8 not in good                        # no N above an item's candidates
    # ties share their ranks: two tied answers at the top, one right, N=3 of 3: 1/2
    tied = best_of_n_curve([[0, 1, 2]], [[1.0, 1.0, 0.0]], ns=(3,))
    assert tied[3]["fully_correct"] == pytest.approx(0.5)
