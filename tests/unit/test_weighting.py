"""Losses, SFC weights and accuracy, worked out by hand."""

import math

import pytest
import torch

from mmrm.evaluate import pairwise_accuracy
from mmrm.model import last_token_index
from mmrm.weighting import (Weighting, bradley_terry_loss, group_balance_weights, pair_weights,
                            shortcut_failure_coefficient, weight_statistics)

pytestmark = pytest.mark.unit


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


def test_pair_weights_schemes_and_normalisation():
    mm, text = torch.tensor([1.0, 1.0]), torch.tensor([3.0, 1.0])
    assert pair_weights(Weighting.NONE, mm, None).tolist() == [1.0, 1.0]
    assert pair_weights("sfc_joint", mm, text).tolist() == pytest.approx([0.75, 0.5])
    assert pair_weights("sfc_two_stage", mm, text, normalize=True).tolist() == \
        pytest.approx([1.2, 0.8])
    with pytest.raises(ValueError, match="needs the text-only proxy"):
        pair_weights("sfc_joint", mm, None)


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
