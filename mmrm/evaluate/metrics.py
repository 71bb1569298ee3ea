"""Pairwise accuracy, margins, per-file reports, best-of-N quality and paired bootstrap
confidence intervals (definitions in :mod:`mmrm.evaluate`)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path

import torch

from mmrm.data import PairCollator, load_pairs, pairs_with_unknown_tokens
from mmrm.formats import PairRecord
from mmrm.inference import load_reward_model, score_items, score_items_shared_prefix, score_pairs


def pairwise_accuracy(chosen: torch.Tensor, rejected: torch.Tensor) -> float:
    """Share of pairs whose chosen response scores higher; a tie counts one half.

    >>> pairwise_accuracy(torch.tensor([2., 1., 0.]), torch.tensor([1., 1., 3.]))
    0.5
    """
    if len(chosen) == 0:
        return float("nan")
    wins = (chosen > rejected).float().sum() + 0.5 * (chosen == rejected).float().sum()
    return (wins / len(chosen)).item()


def margin_statistics(chosen: torch.Tensor, rejected: torch.Tensor) -> dict[str, float]:
    """Mean, spread and quantiles of ``chosen - rejected`` rewards.

    >>> margin_statistics(torch.tensor([3., 1.]), torch.tensor([1., 1.]))["mean"]
    1.0
    """
    margin = (chosen - rejected).float()
    if len(margin) == 0:
        return {}
    q = torch.quantile(margin, torch.tensor([0.1, 0.5, 0.9]))
    return {"mean": margin.mean().item(),
            "std": margin.std().item() if len(margin) > 1 else 0.0,
            "p10": q[0].item(), "p50": q[1].item(), "p90": q[2].item()}


def accuracy_report(chosen: torch.Tensor, rejected: torch.Tensor) -> dict:
    """Pairs, accuracy (ties half), ties and margin statistics of one set of scored pairs."""
    return {"pairs": len(chosen), "accuracy": pairwise_accuracy(chosen, rejected),
            "ties": int((chosen == rejected).sum()),
            "margin": margin_statistics(chosen, rejected)}


def evaluation_report(pairs: Sequence[PairRecord], chosen: torch.Tensor,
                      rejected: torch.Tensor, subset_field: str = "subset") -> dict:
    """The report of one data set: overall, per named subset, and the macro average.

    The macro average is the unweighted mean of the subsets' accuracies (VL-RewardBench's
    "macro over groups"); present only when the pairs carry ``subset_field``.
    """
    report = accuracy_report(chosen, rejected)
    groups: dict[str, list[int]] = {}
    for i, pair in enumerate(pairs):
        name = pair.extra.get(subset_field)
        if name is not None:
            groups.setdefault(str(name), []).append(i)
    if groups:
        report["subsets"] = {name: accuracy_report(chosen[idx], rejected[idx])
                             for name, idx in sorted(groups.items())}
        report["macro_accuracy"] = statistics.mean(
            s["accuracy"] for s in report["subsets"].values())
    return report


def file_report(path: str | Path, pairs: Sequence[PairRecord], chosen: torch.Tensor,
                rejected: torch.Tensor, processor) -> dict:
    """The report of one scored pairwise file: :func:`evaluation_report`, and how many of its
    pairs hold words the model's tokenizer cannot read (``pairs_with_unknown_tokens``)."""
    return {"file": str(path), **evaluation_report(pairs, chosen, rejected),
            "pairs_with_unknown_tokens": len(pairs_with_unknown_tokens(processor, list(pairs)))}


def score_pairs_file(model, collator: PairCollator, path: str | Path, batch_size: int = 32,
                     image_root: str | Path | None = None, progress: bool = False):
    """Read a pairwise file and score it: ``(pairs, chosen_rewards, rejected_rewards)``."""
    pairs = load_pairs(path, image_root=Path(image_root) if image_root else None)
    if not pairs:       # an accuracy of no pairs is NaN: a report of nothing
        raise ValueError(f"{path}: no pairs to evaluate")
    bar = _progress_bar(len(pairs), f"scoring {Path(path).name}") if progress else None
    chosen, rejected = score_pairs(model, collator, pairs, batch_size,
                                   bar.update if bar is not None else None)
    if bar is not None:
        bar.close()
    if not (bool(torch.isfinite(chosen).all()) and bool(torch.isfinite(rejected).all())):
        raise ValueError(f"{path}: the model gave non-finite rewards: a broken model (no "
                         f"accuracy is reported on NaN margins)")
    return pairs, chosen, rejected


def evaluate_model(model_dir: str | Path, datasets: dict[str, str | Path], batch_size: int = 32,
                   image_root: str | Path | None = None, progress: bool = False) -> dict:
    """Evaluate one saved RM on named pairwise files: ``{name: evaluation_report}``."""
    model, collator = load_reward_model(model_dir)
    reports = {}
    for name, path in datasets.items():
        pairs, chosen, rejected = score_pairs_file(model, collator, path, batch_size,
                                                   image_root, progress)
        reports[name] = file_report(path, pairs, chosen, rejected, collator.processor)
    return reports


def _progress_bar(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="pair", leave=False)


def best_of_n_quality(errors: Sequence[Sequence[int]], scores: Sequence[Sequence[float]]
                      ) -> dict[str, float]:
    """How good the answers are that an RM picks among N candidates of known quality.

    Args:
        errors: per item, each candidate's number of wrong facts (0 = fully correct).
        scores: per item, the RM's score of each candidate.

    Returns the share of items whose pick is fully correct and the pick's mean number of
    errors, for the RM (``fully_correct``, ``mean_errors``), a uniformly random pick
    (``random_*``, its expectation) and the oracle (``oracle_*``, the fewest errors). A tie
    at the top is a random pick among the tied candidates (its expectation).

    Worked example: errors ``[[0, 2], [1, 0, 3]]``, scores ``[[0.1, 0.9], [5, 5, 1]]``: the
    RM picks 2 errors in item 1 and ties 1 and 0 errors in item 2 (mean 0.5, fully correct
    with probability 0.5): ``fully_correct = (0 + 0.5) / 2 = 0.25``, ``mean_errors =
    (2 + 0.5) / 2 = 1.25``; random: ``(0.5 + 1/3) / 2``, ``(1 + 4/3) / 2``; oracle 1.0, 0.0.
    """
    if len(errors) != len(scores):
        raise ValueError(f"{len(errors)} items of errors but {len(scores)} of scores")
    picked_right, picked_errors, rand_right, rand_errors, best_right, best_errors = \
        [], [], [], [], [], []
    for item_errors, item_scores in zip(errors, scores):
        if len(item_errors) != len(item_scores) or not item_errors:
            raise ValueError(f"an item has {len(item_errors)} candidates but "
                             f"{len(item_scores)} scores")
        top = max(item_scores)
        tied = [e for e, s in zip(item_errors, item_scores) if s == top]
        picked_right.append(sum(e == 0 for e in tied) / len(tied))
        picked_errors.append(sum(tied) / len(tied))
        rand_right.append(sum(e == 0 for e in item_errors) / len(item_errors))
        rand_errors.append(sum(item_errors) / len(item_errors))
        best_right.append(float(min(item_errors) == 0))
        best_errors.append(float(min(item_errors)))
    mean = statistics.fmean if errors else (lambda values: float("nan"))
    return {"items": len(errors), "fully_correct": mean(picked_right),
            "mean_errors": mean(picked_errors), "random_fully_correct": mean(rand_right),
            "random_mean_errors": mean(rand_errors), "oracle_fully_correct": mean(best_right),
            "oracle_mean_errors": mean(best_errors)}


#: The N of a best-of-N curve (those up to an item's number of candidates).
CURVE_N = (1, 2, 4, 8, 16, 32, 64)


def best_of_n_curve(errors: Sequence[Sequence[int]], scores: Sequence[Sequence[float]],
                    ns: Sequence[int] = CURVE_N) -> dict[int, dict[str, float]]:
    """The quality of an RM's pick among N candidates, for each N of ``ns`` up to the
    smallest item's number of candidates K: its expectation over every N-subset of an item's
    K candidates, exactly, then the mean over items (``fully_correct``: the pick has no
    wrong fact; ``mean_errors``). N = 1 is a random candidate; N = K is
    :func:`best_of_n_quality`'s pick. An RM whose curve falls as N grows is being
    over-optimized: its highest scores go to what is not quality.

    The candidate at rank r (0 = the highest score) is the pick of an N-subset when the
    subset holds it and N - 1 of the K - 1 - r below it: ``C(K-1-r, N-1) / C(K, N)``. Tied
    scores share their ranks' probabilities equally (a random pick among the tied).

    Worked example (``ns = (1, 2, 3)``): one item, errors ``[0, 1, 1]``, scores
    ``[0.2, 0.9, 0.1]``: N = 1 gives
    1/3 fully correct; N = 2 picks the 0.9 one whenever it is in (2 of 3 subsets), else the
    0.2 one (correct): 1/3; N = 3 gives 0.
    """
    from math import comb

    if len(errors) != len(scores):
        raise ValueError(f"{len(errors)} items of errors but {len(scores)} of scores")
    if not errors:
        return {}
    smallest = min(len(e) for e in errors)
    curve = {}
    for n in (n for n in ns if n <= smallest):
        right, wrong_facts = [], []
        for item_errors, item_scores in zip(errors, scores):
            k = len(item_errors)
            order = sorted(range(k), key=lambda i: -item_scores[i])
            p = [comb(k - 1 - r, n - 1) / comb(k, n) for r in range(k)]
            r = 0
            while r < k:                      # tied scores share their ranks' chances
                end = r
                while end + 1 < k and item_scores[order[end + 1]] == item_scores[order[r]]:
                    end += 1
                shared = sum(p[r:end + 1]) / (end + 1 - r)
                p[r:end + 1] = [shared] * (end + 1 - r)
                r = end + 1
            right.append(sum(pr for pr, i in zip(p, order) if item_errors[i] == 0))
            wrong_facts.append(sum(pr * item_errors[i] for pr, i in zip(p, order)))
        curve[n] = {"fully_correct": statistics.fmean(right),
                    "mean_errors": statistics.fmean(wrong_facts)}
    return curve


def best_of_n_file(model, processor, path: str | Path, items_per_batch: int = 16,
                   image_root: str | Path | None = None) -> dict:
    """:func:`best_of_n_quality` of a saved RM on an inference file whose items carry each
    response's number of mistakes in ``errors`` (the built-in benchmark's best-of-N sets),
    with its :func:`best_of_n_curve` under ``curve`` (``{N: fully correct}``)."""
    from mmrm.formats import ImageRules, InferenceRecord, read_records

    records = list(read_records(path, InferenceRecord, images=ImageRules(
        root=Path(image_root) if image_root else None)))
    missing = [r.line for r in records if not isinstance(r.extra.get("errors"), list)
               or len(r.extra["errors"]) != len(r.responses)]
    if missing:
        raise ValueError(f"{path}:{missing[0]}: errors: expected one number of mistakes per "
                         f"response")
    items = [{"prompt": r.prompt, "responses": list(r.responses), "image_file": r.image_file}
             for r in records]
    scores = []
    for start in range(0, len(items), items_per_batch):
        chunk = items[start:start + items_per_batch]
        scores += (score_items_shared_prefix(model, processor, chunk)
                   or score_items(model, processor, chunk))
    errors = [r.extra["errors"] for r in records]
    curve = best_of_n_curve(errors, scores)
    return {**best_of_n_quality(errors, scores),
            "curve": {str(n): v["fully_correct"] for n, v in curve.items()}}


def paired_bootstrap(differences: Sequence[float], resamples: int = 10000, level: float = 0.95,
                     seed: int = 0) -> dict[str, float]:
    """Mean of paired differences (method B - method A on the same seeds and data) with a
    percentile bootstrap confidence interval: replicates are drawn with replacement and the
    ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the resampled means are the
    bounds.

    Worked example: differences ``[0, 1]``; a resample's mean is 0, 0.5 or 1 with
    probabilities 1/4, 1/2, 1/4, so the 95% interval is ``[0, 1]`` around the mean 0.5.
    """
    import numpy as np

    values = np.asarray(list(differences), dtype=float)
    if values.size == 0:
        return {"n": 0, "mean": float("nan"), "low": float("nan"), "high": float("nan")}
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, (resamples, values.size))].mean(1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return {"n": int(values.size), "mean": float(values.mean()), "low": float(low),
            "high": float(high), "level": level}
