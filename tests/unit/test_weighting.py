"""Losses, SFC weights and accuracy, worked out by hand."""

import math

import pytest
import torch

from mmrm.evaluate.metrics import pairwise_accuracy
from mmrm.model import last_token_index
from mmrm.weighting import (PairWeighting, bradley_terry_loss, confidence_regularization_loss,
                            confidence_regularized_target, effective_sample_share,
                            group_balance_weights, product_of_experts_loss,
                            shortcut_failure_coefficient, weight_statistics)

sigmoid = lambda x: 1 / (1 + math.exp(-x))   # noqa: E731



def test_bradley_terry_loss_per_pair():
    loss = bradley_terry_loss(torch.tensor([2.0, 0.0, -1.0]), torch.tensor([0.0, 0.0, 1.0]))
    # log(1 + e^-2), log 2, log(1 + e^2)
    expected = [math.log1p(math.exp(-2)), math.log(2), math.log1p(math.exp(2))]
    assert loss.tolist() == pytest.approx(expected, rel=1e-6)


def test_sfc_hand_computed():
    text = torch.tensor([3.0, 0.05, 0.0])
    mm = torch.tensor([1.0, 0.45, 0.0])
    # 3/(3+1) = 0.75 ; 0.05/0.5 = 0.1 ; 0/0 -> 0 with eps = 0 (clamped denominator)
    assert shortcut_failure_coefficient(text, mm).tolist() == pytest.approx([0.75, 0.1, 0.0])
    # eps = 0.2: 0.1 + 3/4.2 ; 0.1 + 0.05/0.7 ; 0.1 + 0
    assert shortcut_failure_coefficient(text, mm, eps=0.2).tolist() == pytest.approx(
        [0.1 + 3 / 4.2, 0.1 + 0.05 / 0.7, 0.1])


def test_sfc_is_detached():
    text = torch.tensor([1.0], requires_grad=True)
    mm = torch.tensor([1.0], requires_grad=True)
    assert not shortcut_failure_coefficient(text, mm).requires_grad


def test_pair_weighting_schemes_and_normalisation():
    # margins 0 and 0: the RM's BT loss is log 2 on both pairs
    chosen, rejected = torch.tensor([0.5, 1.0]), torch.tensor([0.5, 1.0])
    cache = {"losses": {"a": 3 * math.log(2), "b": math.log(2)}, "margins": {"a": -2.0,
                                                                            "b": 0.0}}
    plain = PairWeighting("none")(chosen, rejected, ["a", "b"])
    assert plain.weights.tolist() == [1.0, 1.0] and plain.text_loss is None
    assert plain.losses.tolist() == pytest.approx([math.log(2)] * 2)
    # SFC from the cache: 3 log2 / (3 log2 + log2) = 0.75, log2 / 2 log2 = 0.5
    sfc = PairWeighting("sfc", cache)(chosen, rejected, ["a", "b"])
    assert sfc.weights.tolist() == pytest.approx([0.75, 0.5])
    assert sfc.losses.tolist() == pytest.approx([math.log(2)] * 2) and sfc.proxy_loss is None
    normalized = PairWeighting("sfc", cache, normalize=True)(chosen, rejected, ["a", "b"])
    assert normalized.weights.tolist() == pytest.approx([1.2, 0.8])
    # a jointly trained proxy: its rewards give the losses, and it trains on them
    joint = PairWeighting("sfc")(chosen, rejected, ["a", "b"],
                                 (torch.tensor([0.0, 2.0]), torch.tensor([0.0, 0.0])))
    assert joint.proxy_loss is joint.text_loss
    assert joint.weights.tolist() == pytest.approx([0.5, math.log1p(math.exp(-2)) / (
        math.log1p(math.exp(-2)) + math.log(2))])
    with pytest.raises(ValueError, match="needs the text-only proxy's losses"):
        PairWeighting("sfc")(chosen, rejected, ["a", "b"])
    balanced = PairWeighting("group_balance", cache, ["a", "b"])(chosen, rejected, ["b", "a"])
    assert balanced.weights.tolist() == pytest.approx([1.0, 1.0])   # one wrong, one right
    with pytest.raises(ValueError, match="needs the cross-fitted proxies' cache"):
        PairWeighting("poe")
    with pytest.raises(ValueError, match="rerun mmrm train-proxy"):
        PairWeighting("poe", {"losses": cache["losses"]})


def test_product_of_experts_with_a_zero_proxy_is_the_standard_loss():
    chosen, rejected = torch.tensor([2.0, 0.0, -1.0]), torch.tensor([0.0, 0.0, 1.0])
    cache = {"losses": {i: math.log(2) for i in "abc"}, "margins": {i: 0.0 for i in "abc"}}
    poe = PairWeighting("poe", cache)(chosen, rejected, list("abc"))
    assert poe.losses.tolist() == pytest.approx(bradley_terry_loss(chosen, rejected).tolist())
    assert poe.weights.tolist() == [1.0, 1.0, 1.0]


def test_product_of_experts_shrinks_the_gradient_where_the_proxy_explains_the_pair():
    # d/dm -log sigmoid(m + t) = -sigmoid(-(m + t)); at m = 0: -0.5 alone, -sigmoid(-3) with
    # a proxy margin of 3 (the proxy explains the pair), -sigmoid(3) where it points the wrong
    # way (-3): such a pair's gradient grows
    margin = torch.zeros(3, requires_grad=True)
    text = torch.tensor([0.0, 3.0, -3.0], requires_grad=True)
    product_of_experts_loss(margin, text).sum().backward()
    assert margin.grad.tolist() == pytest.approx([-0.5, -sigmoid(-3), -sigmoid(3)])
    assert margin.grad[1].abs() < margin.grad[0].abs() / 10
    assert text.grad is None          # the proxy is fixed: no gradient reaches it


def test_weight_statistics_split_by_proxy_correctness():
    weights = torch.tensor([0.9, 0.8, 0.1, 0.2])
    text_loss = torch.tensor([2.0, 1.0, 0.1, 0.3])   # > log 2: proxy wrong on the first two
    stats = weight_statistics(weights, text_loss)
    assert stats["weight/mean_proxy_wrong"] == pytest.approx(0.85)
    assert stats["weight/mean_proxy_right"] == pytest.approx(0.15)
    assert stats["weight/proxy_wrong_frac"] == 0.5
    assert stats["weight/mean"] == pytest.approx(0.5)


def test_pairwise_accuracy_counts_ties_half():
    assert pairwise_accuracy(torch.tensor([2.0, 1.0, 0.0, 5.0]),
                             torch.tensor([1.0, 1.0, 3.0, 4.0])) == 0.625


def test_last_token_index_right_and_left_padding():
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert last_token_index(mask).tolist() == [2, 4, 4]


def test_group_balance_weights_by_hand():
    # the proxy is wrong (loss > log 2) on c only: c carries half the weight, a, b, d the rest
    w = group_balance_weights({"a": 0.1, "b": 0.2, "c": 2.0, "d": 0.05})
    assert w == pytest.approx({"a": 2 / 3, "b": 2 / 3, "c": 2.0, "d": 2 / 3})
    assert sum(w.values()) / len(w) == pytest.approx(1.0)
    assert w["c"] == pytest.approx(sum(w.values()) / 2)
    # a proxy right (or wrong) everywhere leaves nothing to balance
    assert group_balance_weights({"a": 0.1, "b": 0.6}) == {"a": 1.0, "b": 1.0}
    assert group_balance_weights({"a": 0.8, "b": 3.0}) == {"a": 1.0, "b": 1.0}
    assert group_balance_weights({}) == {}


def test_confidence_regularized_target_by_hand():
    # Utama et al.'s scaled teacher, p^(1-b) / (p^(1-b) + (1-p)^(1-b)), written out:
    # teacher margin 2 (p = 0.8808), proxy margin 0 (b = 1/2): 0.9385 / (0.9385 + 0.3453)
    p, b = sigmoid(2.0), 0.5
    by_formula = p ** (1 - b) / (p ** (1 - b) + (1 - p) ** (1 - b))
    teacher, proxy = torch.tensor([2.0, 2.0, 2.0, -1.0]), torch.tensor([0.0, 40.0, -40.0, 0.0])
    target = confidence_regularized_target(teacher, proxy)
    assert by_formula == pytest.approx(0.7311, abs=1e-4)
    # a proxy sure of the chosen answer flattens the target to 1/2; one sure of the rejected
    # answer leaves the teacher's own probability; a teacher that prefers the rejected
    # answer keeps doing so (flattened): sigmoid(-0.5)
    assert target.tolist() == pytest.approx([by_formula, 0.5, sigmoid(2.0), sigmoid(-0.5)],
                                            rel=1e-5)


def test_confidence_regularization_loss_and_its_gradient_by_hand():
    margin = torch.tensor([0.0, 2.0, 0.0], requires_grad=True)
    target = torch.tensor([0.7311, 0.7311, 1.0])
    loss = confidence_regularization_loss(margin, target)
    # margin 0: -(s log 1/2 + (1-s) log 1/2) = log 2; margin 2: -(s log sig(2) + (1-s) log
    # sig(-2)); target 1 is the Bradley-Terry loss
    expected = [math.log(2), -(0.7311 * math.log(sigmoid(2)) + 0.2689 * math.log(sigmoid(-2))),
                math.log(2)]
    assert loss.tolist() == pytest.approx(expected, rel=1e-5)
    assert loss[2].item() == pytest.approx(bradley_terry_loss(torch.tensor([0.0]),
                                                              torch.tensor([0.0])).item())
    loss.sum().backward()
    # d/dm = sigmoid(m) - s: -0.2311, 0.8808 - 0.7311 (an RM more sure than its target is
    # pulled back), -0.5
    assert margin.grad.tolist() == pytest.approx([0.5 - 0.7311, sigmoid(2) - 0.7311, -0.5],
                                                 rel=1e-4)


def test_conf_reg_weighting_uses_teacher_and_proxy_margins_and_reports_its_gradient_share():
    chosen, rejected = torch.tensor([0.0, 1.0]), torch.tensor([0.0, 0.0])
    cache = {"losses": {"a": 0.1, "b": 2.0}, "margins": {"a": 40.0, "b": -40.0}}
    terms = PairWeighting("conf_reg", cache, teacher={"a": 3.0, "b": 3.0})(
        chosen, rejected, ["a", "b"])
    # a: the proxy is sure (target 1/2), margin 0: loss log 2, gradient share 0 of BT's;
    # b: the proxy is wrong (target sigmoid(3)), margin 1: share (s - sig(1)) / sig(-1)
    s = sigmoid(3.0)
    assert terms.losses.tolist() == pytest.approx(
        [math.log(2), -(s * math.log(sigmoid(1)) + (1 - s) * math.log(sigmoid(-1)))], rel=1e-5)
    assert terms.weights.tolist() == [1.0, 1.0]
    assert terms.effective.tolist() == pytest.approx([0.0, (s - sigmoid(1)) / sigmoid(-1)],
                                                     abs=1e-6)
    with pytest.raises(ValueError, match="teacher"):
        PairWeighting("conf_reg", cache)


def test_effective_weights_of_poe_are_its_gradient_ratio():
    chosen, rejected = torch.tensor([0.0, 0.0]), torch.tensor([0.0, 0.0])
    cache = {"losses": {"a": 0.1, "b": 2.0}, "margins": {"a": 3.0, "b": -3.0}}
    terms = PairWeighting("poe", cache)(chosen, rejected, ["a", "b"])
    # at margin 0: sigmoid(-(0 + t)) / sigmoid(0) = 2 sigmoid(-t)
    assert terms.effective.tolist() == pytest.approx([2 * sigmoid(-3), 2 * sigmoid(3)])
    sfc = PairWeighting("sfc", cache)(chosen, rejected, ["a", "b"])
    assert sfc.effective is sfc.weights          # a reweighting's share is its weight


def test_effective_sample_share_by_hand():
    # two of four pairs carry all the weight: half the sample
    w = torch.tensor([1.0, 1.0, 0.0, 0.0])
    stats = weight_statistics(w, None)
    assert stats["weight/mean_sq"] == pytest.approx(0.5)
    assert effective_sample_share(stats["weight/mean"], stats["weight/mean_sq"]) == 0.5
    # equal weights: the whole sample; (sum w)^2 / (n sum w^2) for 3, 1: 16 / (2 * 10) = 0.8
    assert effective_sample_share(0.7, 0.49) == pytest.approx(1.0)
    assert effective_sample_share(2.0, 5.0) == pytest.approx(0.8)
    assert math.isnan(effective_sample_share(0.0, 0.0))
