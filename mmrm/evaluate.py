"""Scoring pairs and measuring reward models: accuracy, margins, the cross-distribution matrix."""

from __future__ import annotations

import torch

from mmrm.data import PairCollator


@torch.no_grad()
def score_pairs(model, collator: PairCollator, pairs: list, batch_size: int = 32
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards of the chosen and the rejected response of each pair (float32, on CPU)."""
    was_training = model.training
    model.eval()
    chosen, rejected = [], []
    device = next(model.parameters()).device
    for start in range(0, len(pairs), batch_size):
        batch = collator(pairs[start:start + batch_size])
        inputs = {k: (v.to(device) if torch.is_tensor(v) else v)
                  for k, v in batch.items() if k != "ids"}
        rewards = model(**inputs, sequences_per_image=2).float().cpu()
        c, r = rewards.chunk(2)
        chosen.append(c)
        rejected.append(r)
    model.train(was_training)
    if not chosen:
        return torch.zeros(0), torch.zeros(0)
    return torch.cat(chosen), torch.cat(rejected)


def pairwise_accuracy(chosen: torch.Tensor, rejected: torch.Tensor) -> float:
    """Share of pairs whose chosen response scores higher; a tie counts one half.

    >>> pairwise_accuracy(torch.tensor([2., 1., 0.]), torch.tensor([1., 1., 3.]))
    0.5
    """
    if len(chosen) == 0:
        return float("nan")
    wins = (chosen > rejected).float().sum() + 0.5 * (chosen == rejected).float().sum()
    return (wins / len(chosen)).item()
