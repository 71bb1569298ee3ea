"""The training recipe's optimizer and learning-rate schedule, worked out by hand."""

import math

import pytest
import torch
from torch import nn

from mmrm.config import TrainConfig
from mmrm.train import build_optimizer



def _config(**optim) -> TrainConfig:
    return TrainConfig.model_validate({"model": "unused", "output_dir": "unused",
                                       "data": {"train": ["unused"]},
                                       "optim": {"lr": 1.0, **optim}})


def test_weight_decay_only_on_matrices_and_the_fused_kernel_by_default():
    module = nn.Sequential(nn.Linear(3, 2), nn.LayerNorm(2))
    optimizer, _ = build_optimizer(module, _config(weight_decay=0.1), total_steps=10)
    decay, no_decay = optimizer.param_groups
    assert [p.shape for p in decay["params"]] == [torch.Size([2, 3])]
    assert len(no_decay["params"]) == 3          # the linear bias, the norm's weight and bias
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)
    assert optimizer.defaults["fused"] is True
    optimizer, _ = build_optimizer(module, _config(fused=False), total_steps=10)
    assert not optimizer.defaults["fused"]


def test_linear_warmup_then_cosine_to_zero():
    optimizer, scheduler = build_optimizer(nn.Linear(2, 1), _config(warmup_ratio=0.2),
                                           total_steps=10)
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    # warm-up int(0.2 * 10) = 2 steps: 1/2, 2/2; then 0.5 * (1 + cos(pi * (step - 2) / 8))
    expected = [0.5, 1.0] + [0.5 * (1 + math.cos(math.pi * (s - 2) / 8)) for s in range(2, 10)]
    assert lrs == pytest.approx(expected)
