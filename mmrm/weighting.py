"""Per-sample losses and the weights that make a reward model shortcut-aware.

Losses here return one value per pair; the training loop reduces them, so a weighting scheme
is one object the loop calls (:class:`PairWeighting`, then ``(weights * losses).mean()``),
not a different loop. Where the text-only proxy's rewards come from (trained jointly, or
cross-fitted and cached) is ``shortcut.proxy``; how they become weights (SFC, group balance)
or a different per-pair loss (product of experts, confidence regularization) is
``shortcut.weighting``.

Every scheme also reports an *effective* weight per pair: how much of the standard
Bradley-Terry gradient the pair gets (``d loss / d margin`` over ``d BT / d margin``). For
reweighting schemes it is the weight itself; for the product of experts and confidence
regularization, which change the loss instead, it is their gradient ratio. Training logs it,
so a run whose weights collapse (a few pairs carry the loss, or none) shows it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mmrm.config import ProxySource, Weighting

__all__ = ["Weighting", "ProxySource", "bradley_terry_loss", "shortcut_failure_coefficient",
           "product_of_experts_loss", "confidence_regularized_target",
           "confidence_regularization_loss", "PairTerms", "PairWeighting",
           "group_balance_weights", "weight_histogram", "weight_statistics",
           "effective_sample_share", "WEIGHT_BIN_EDGES"]


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


def product_of_experts_loss(margin: torch.Tensor, text_margin: torch.Tensor) -> torch.Tensor:
    """Per-pair loss of the product of experts ``-log sigmoid(margin + text_margin)``, the
    proxy's margin fixed (Clark et al., 2019, Sec. 3.2.1; He et al., 2019): where the text-only
    proxy already explains a pair, the reward model's gradient on it shrinks.

    The gradient with respect to ``margin`` is ``-sigmoid(-(margin + text_margin))``. Worked
    example: margin 0 gives -0.5 alone (the standard loss's gradient); with a proxy margin of
    3 it is ``-sigmoid(-3) = -0.0474``: ten times smaller. A proxy margin of 0 gives the
    standard Bradley-Terry loss.
    """
    return -F.logsigmoid(margin + text_margin.detach())


def confidence_regularized_target(teacher_margin: torch.Tensor,
                                  proxy_margin: torch.Tensor) -> torch.Tensor:
    """The probability that the chosen response wins which confidence regularization trains
    towards (Utama et al., 2020, "Mind the Trade-off", Sec. 3, Eq. 2, for pairs): the
    teacher's ``p_T = sigmoid(teacher margin)``, flattened by the text-only proxy's
    confidence ``beta = sigmoid(proxy margin)``::

        s = p_T^(1 - beta) / (p_T^(1 - beta) + (1 - p_T)^(1 - beta))
          = sigmoid((1 - beta) * teacher margin)

    (the second line since ``p_T / (1 - p_T) = e^(teacher margin)``). Where the proxy is
    sure the chosen response wins (beta -> 1) the target goes to 1/2: the pair teaches
    little; where the proxy is wrong (beta -> 0) the target is the teacher's own.

    Worked example: teacher margin 2 (p_T = 0.8808), proxy margin 0 (beta = 1/2): s =
    sigmoid(1) = 0.7311, i.e. 0.8808^0.5 / (0.8808^0.5 + 0.1192^0.5) = 0.9385 / 1.2838.
    """
    beta = torch.sigmoid(proxy_margin.detach())
    return torch.sigmoid((1 - beta) * teacher_margin.detach())


def confidence_regularization_loss(margin: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-pair cross-entropy of ``sigmoid(margin)`` (the reward model's probability that the
    chosen response wins) against ``target`` (:func:`confidence_regularized_target`)::

        -(s log sigmoid(margin) + (1 - s) log sigmoid(-margin))

    ``target = 1`` gives the Bradley-Terry loss. Its gradient with respect to the margin is
    ``sigmoid(margin) - s``. Worked example: margin 0, target 0.7311 gives
    ``-(0.7311 log 0.5 + 0.2689 log 0.5) = log 2 = 0.6931`` and gradient -0.2311.
    """
    target = target.detach()
    return -(target * F.logsigmoid(margin) + (1 - target) * F.logsigmoid(-margin))


@dataclass
class PairTerms:
    """One batch's per-pair terms, as the training loop reduces them:
    ``(weights * losses).mean()`` (plus ``proxy_loss.mean()`` where the proxy trains in the
    same step)."""

    losses: torch.Tensor              # what the reward model minimises, per pair
    weights: torch.Tensor             # per pair, detached
    bt_loss: torch.Tensor             # the reward model's own Bradley-Terry loss (logged)
    text_loss: torch.Tensor | None    # the proxy's BT loss per pair (logged; SFC's input)
    proxy_loss: torch.Tensor | None   # the jointly trained proxy's loss (with its gradient)
    effective: torch.Tensor | None = None   # per pair, detached: the share of the standard
    # BT gradient the pair gets (the weight, or a changed loss's gradient ratio); logged

    def __post_init__(self):
        if self.effective is None:
            self.effective = self.weights


class PairWeighting:
    """The shortcut-aware part of the training loop: from the reward model's per-pair margins
    (and the text-only proxy's, trained jointly or cached) to :class:`PairTerms`.

    Args:
        weighting: how the proxy's rewards change the loss (``shortcut.weighting``).
        cache: the cross-fitted proxies' cache (:func:`load_proxy_cache`): ``losses`` and
            ``margins`` by pair id; None for a joint proxy or none.
        pairs: the run's training pair ids (group balance weighs them once, up front).
        eps, normalize: SFC's epsilon; rescale the weights to mean 1 per batch.
        teacher: conf_reg's teacher margins by pair id (:func:`mmrm.train.teacher_margins`).
    """

    def __init__(self, weighting: Weighting | str, cache: dict | None = None,
                 pairs: list[str] | None = None, eps: float = 0.0, normalize: bool = False,
                 teacher: dict[str, float] | None = None):
        self.weighting = Weighting(weighting)
        self.cache, self.eps, self.normalize, self.teacher = cache, eps, normalize, teacher
        self.fixed = group_balance_weights({i: cache["losses"][i] for i in pairs}) \
            if self.weighting is Weighting.GROUP_BALANCE else None
        if self.weighting is not Weighting.NONE and self.weighting is not Weighting.SFC \
                and cache is None:
            raise ValueError(f"weighting {self.weighting.value} needs the cross-fitted "
                             f"proxies' cache (shortcut.proxy: cross_fit)")
        if self.weighting in (Weighting.POE, Weighting.CONF_REG) and "margins" not in cache:
            raise ValueError(f"weighting {self.weighting.value} needs the proxies' margins: "
                             f"rerun mmrm train-proxy (the cache predates them)")
        if self.weighting is Weighting.CONF_REG and teacher is None:
            raise ValueError("weighting conf_reg needs the teacher's margins "
                             "(shortcut.teacher)")

    def __call__(self, chosen: torch.Tensor, rejected: torch.Tensor, ids: list[str],
                 proxy_rewards: tuple[torch.Tensor, torch.Tensor] | None = None) -> PairTerms:
        """Terms of a batch: the reward model's rewards of the chosen and rejected answers, the
        pairs' ids, and the jointly trained proxy's rewards (if any)."""
        bt_loss = bradley_terry_loss(chosen, rejected)
        proxy_loss = text_loss = None
        if proxy_rewards is not None:
            proxy_loss = text_loss = bradley_terry_loss(*proxy_rewards)
        elif self.cache is not None:
            text_loss = self._cached("losses", ids, bt_loss)
        losses, weights, effective = bt_loss, torch.ones_like(bt_loss), None
        margin = (chosen - rejected).detach()
        if self.weighting is Weighting.SFC:
            if text_loss is None:
                raise ValueError("weighting sfc needs the text-only proxy's losses")
            weights = shortcut_failure_coefficient(text_loss, bt_loss, self.eps)
        elif self.weighting is Weighting.GROUP_BALANCE:
            weights = torch.tensor([self.fixed[i] for i in ids], device=bt_loss.device)
        elif self.weighting is Weighting.POE:
            proxy_margin = self._cached("margins", ids, bt_loss)
            losses = product_of_experts_loss(chosen - rejected, proxy_margin)
            # d/dm: -sigmoid(-(m + proxy margin)) against BT's -sigmoid(-m)
            effective = torch.sigmoid(-(margin + proxy_margin)) / torch.sigmoid(-margin)
        elif self.weighting is Weighting.CONF_REG:
            target = confidence_regularized_target(
                torch.tensor([self.teacher[i] for i in ids], device=bt_loss.device),
                self._cached("margins", ids, bt_loss))
            losses = confidence_regularization_loss(chosen - rejected, target)
            # d/dm: sigmoid(m) - s against BT's sigmoid(m) - 1 (negative where the RM is
            # already more confident than the target: the loss pulls it back)
            effective = (target - torch.sigmoid(margin)) / torch.sigmoid(-margin)
        if self.normalize and self.weighting is not Weighting.NONE:
            weights = weights / weights.mean().clamp_min(1e-12)
        if effective is not None:
            effective = effective * weights
        return PairTerms(losses, weights, bt_loss, text_loss, proxy_loss, effective)

    def _cached(self, key: str, ids: list[str], like: torch.Tensor) -> torch.Tensor:
        return torch.tensor([self.cache[key][i] for i in ids], device=like.device)


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
    """Mean, mean square, quantiles and the mean weight where the text-only proxy is wrong
    vs right.

    The proxy is wrong on a pair when its loss exceeds ``log 2`` (it scores the rejected
    response higher). The mean square gives the effective sample size of any stretch of
    training (:func:`effective_sample_share`).
    """
    w = weights.detach().float()
    q = torch.quantile(w, torch.tensor([0.1, 0.5, 0.9]))
    stats = {"weight/mean": w.mean().item(), "weight/mean_sq": (w * w).mean().item(),
             "weight/p10": q[0].item(), "weight/p50": q[1].item(), "weight/p90": q[2].item()}
    if text_loss is not None:
        wrong = proxy_wrong(text_loss)
        stats["weight/proxy_wrong_frac"] = wrong.float().mean().item()
        if wrong.any():
            stats["weight/mean_proxy_wrong"] = w[wrong].mean().item()
        if (~wrong).any():
            stats["weight/mean_proxy_right"] = w[~wrong].mean().item()
    return stats


def effective_sample_share(mean: float, mean_sq: float) -> float:
    """The effective sample size ``(sum w)^2 / sum w^2`` of ``n`` weights as a share of
    ``n``, from their mean and mean square: ``mean^2 / mean_sq`` (1 when every weight is
    equal, ``k / n`` when ``k`` pairs share the weight and the rest have none; NaN when every
    weight is 0).

    Worked example: weights 1, 1, 0, 0 (mean 0.5, mean square 0.5) give 0.5: two of four.
    """
    return mean * mean / mean_sq if mean_sq > 0 else float("nan")
