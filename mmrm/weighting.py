"""Per-sample losses and the weights that make a reward model shortcut-aware.

Losses here return one value per pair; the training loop reduces them, so a weighting scheme
is one line in that loop (``(weights * losses).mean()``), not a different loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmrm.config import Weighting

__all__ = ["Weighting", "bradley_terry_loss", "shortcut_failure_coefficient", "pair_weights",
           "group_balance_weights", "weight_histogram", "weight_statistics",
           "WEIGHT_BIN_EDGES"]


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Per-pair Bradley-Terry loss ``-log sigmoid(r_chosen - r_rejected)``.

    Worked example: rewards 2.0 vs 0.0 give ``-log(sigmoid(2)) = log(1 + e^-2) = 0.1269``;
    equal rewards give ``log 2 = 0.6931``.
    """
    return -F.logsigmoid(chosen - rejected)


def shortcut_failure_coefficient(text_loss: torch.Tensor, mm_loss: torch.Tensor,
                                 eps: float = 0.0) -> torch.Tensor:
    """The Shortcut-Failure Coefficient of each pair (Li et al., 2025, Sec. 4, Eq. 5).

    ``SFC = eps/2 + L_text / (eps + L_text + L_mm)``, both losses detached, so the weight is
    a constant of the step. ``eps = 0`` gives the plain ratio; ``eps > 0`` keeps the weight
    defined when both losses are ~0 (both models confident and right: weight ~ 1/2).

    Worked example: ``L_text = 3.0`` (proxy confidently wrong), ``L_mm = 1.0`` gives 0.75;
    ``L_text = 0.05`` (proxy right), ``L_mm = 0.45`` gives 0.1.
    """
    text_loss, mm_loss = text_loss.detach(), mm_loss.detach()
    return eps / 2 + text_loss / (eps + text_loss + mm_loss).clamp_min(1e-12)


def pair_weights(scheme: Weighting | str, mm_loss: torch.Tensor,
                 text_loss: torch.Tensor | None, *, eps: float = 0.0,
                 normalize: bool = False, fixed: torch.Tensor | None = None) -> torch.Tensor:
    """Weights of a batch of pairs under ``scheme``; optionally rescaled to mean 1.

    ``fixed``: the batch's weights from a static formula (:func:`group_balance_weights`),
    used instead of SFC's."""
    if Weighting(scheme) is Weighting.NONE:
        return torch.ones_like(mm_loss)
    if fixed is not None:
        weights = fixed
    elif text_loss is None:
        raise ValueError(f"weighting {Weighting(scheme).value} needs the text-only proxy's "
                         f"losses")
    else:
        weights = shortcut_failure_coefficient(text_loss, mm_loss, eps)
    if normalize:
        weights = weights / weights.mean().clamp_min(1e-12)
    return weights


def group_balance_weights(text_losses: dict[str, float]) -> dict[str, float]:
    """Static JTT-style weights from the proxy's per-pair losses: the pairs the proxy gets
    wrong (loss above ``log 2``) and those it gets right each carry half of the total weight,
    and the mean weight is 1. Where the proxy is wrong on none or all pairs, every weight is 1.

    Worked example: losses ``0.1, 0.2, 2.0, 0.05`` (wrong on 1 of 4) give ``2/3, 2/3, 2, 2/3``.
    """
    wrong = dict(zip(text_losses, proxy_wrong(torch.tensor(list(text_losses.values())))
                     .tolist()))
    share = sum(wrong.values()) / max(1, len(wrong))
    if share in (0.0, 1.0):
        return {k: 1.0 for k in wrong}
    return {k: 0.5 / share if w else 0.5 / (1 - share) for k, w in wrong.items()}


def proxy_wrong(text_loss: torch.Tensor) -> torch.Tensor:
    """Where the text-only proxy is wrong: its loss exceeds ``log 2`` (it scores the rejected
    response higher)."""
    return text_loss.detach() > torch.log(torch.tensor(2.0))


#: Fixed bin edges of the logged weight histograms (0 to 2 by 0.05; larger weights, possible
#: with ``normalize`` or ``group_balance``, fall in the last bin), so histograms from any step
#: add up.
WEIGHT_BIN_EDGES = [round(0.05 * i, 2) for i in range(41)]


def weight_histogram(weights: torch.Tensor) -> list[int]:
    """Counts of ``weights`` in :data:`WEIGHT_BIN_EDGES`' bins.

    >>> h = weight_histogram(torch.tensor([0.01, 0.52, 7.0])); (h[0], h[10], h[-1], sum(h))
    (1, 1, 1, 3)
    """
    top = WEIGHT_BIN_EDGES[-1]
    w = weights.detach().float().clamp(0.0, top - 1e-6)
    counts = torch.histc(w, bins=len(WEIGHT_BIN_EDGES) - 1, min=0.0, max=top)
    return [int(c) for c in counts]


def weight_statistics(weights: torch.Tensor, text_loss: torch.Tensor | None) -> dict[str, float]:
    """Mean, quantiles and the mean weight where the text-only proxy is wrong vs right.

    The proxy is wrong on a pair when its loss exceeds ``log 2`` (it scores the rejected
    response higher).
    """
    w = weights.detach().float()
    q = torch.quantile(w, torch.tensor([0.1, 0.5, 0.9]))
    stats = {"weight/mean": w.mean().item(), "weight/p10": q[0].item(),
             "weight/p50": q[1].item(), "weight/p90": q[2].item()}
    if text_loss is not None:
        wrong = proxy_wrong(text_loss)
        stats["weight/proxy_wrong_frac"] = wrong.float().mean().item()
        if wrong.any():
            stats["weight/mean_proxy_wrong"] = w[wrong].mean().item()
        if (~wrong).any():
            stats["weight/mean_proxy_right"] = w[~wrong].mean().item()
    return stats
