"""Measuring reward models: pairwise accuracy, margins, the cross-distribution matrix, the
shortcut diagnosis of a preference data set, best-of-N quality and paired bootstrap CIs.
Models are loaded and run through :mod:`mmrm.inference`.

Definitions used throughout (also in the README):

* **pairwise accuracy** — share of pairs whose chosen response gets the higher reward; a tie
  counts one half (and the number of ties is reported beside it).
* **shortcut-failure subset** — the pairs a text-only proxy RM gets wrong (it gives the rejected
  response a reward at least as high: loss ``>= log 2``). These are the pairs whose text alone
  points the wrong way, so only the image can decide them (the paper, Sec. 3).
* **Shortcut-Failure Degradation (SFD)** — a multimodal RM's accuracy on the pairs the proxy
  gets right minus its accuracy on the shortcut-failure subset, in accuracy points (0–1).
  An RM that uses the image scores both subsets alike (SFD near 0); an RM that learned the
  text shortcut is right where the text is right and wrong where it is wrong (SFD near 1).
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
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
    bar = _progress_bar(len(pairs), f"scoring {Path(path).name}") if progress else None
    chosen, rejected = score_pairs(model, collator, pairs, batch_size,
                                   bar.update if bar is not None else None)
    if bar is not None:
        bar.close()
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


# ---------------------------------------------------------------------------- the matrix
@dataclass
class CrossDistributionMatrix:
    """Accuracy of RMs (rows: trained on) on test sets (columns: tested on).

    A cell is in distribution (ID) when the row's source label equals the column's. A row's
    source is ``row_sources[row]``, else the row name up to the first ``/``
    (``povid/sfc_two_stage`` was trained on ``povid``).
    """

    accuracy: dict[str, dict[str, float]]
    row_sources: dict[str, str] = field(default_factory=dict)

    def source_of(self, row: str) -> str:
        return self.row_sources.get(row, row.split("/")[0])

    @property
    def columns(self) -> list[str]:
        return sorted({c for cells in self.accuracy.values() for c in cells})

    def row_summary(self, row: str) -> dict[str, float]:
        cells = self.accuracy[row]
        source = self.source_of(row)
        ood = [v for c, v in cells.items() if c != source]
        return {"id": cells.get(source, float("nan")),
                "ood": statistics.mean(ood) if ood else float("nan")}

    def summary(self) -> dict[str, float]:
        """Mean ID over rows that have an ID cell; mean OOD over rows' OOD means."""
        rows = [self.row_summary(r) for r in self.accuracy]
        ids = [r["id"] for r in rows if not math.isnan(r["id"])]
        oods = [r["ood"] for r in rows if not math.isnan(r["ood"])]
        return {"iid_mean": statistics.mean(ids) if ids else float("nan"),
                "ood_mean": statistics.mean(oods) if oods else float("nan")}

    def to_json(self) -> dict:
        return {"accuracy": self.accuracy,
                "sources": {r: self.source_of(r) for r in self.accuracy},
                "rows": {r: self.row_summary(r) for r in self.accuracy}, **self.summary()}

    def to_markdown(self) -> str:
        cols = self.columns
        lines = ["| trained on \\ tested on | " + " | ".join(cols) + " | ID | OOD |",
                 "| --- |" + " ---: |" * (len(cols) + 2)]
        for row, cells in self.accuracy.items():
            source = self.source_of(row)
            shown = [(f"**{cells[c]:.3f}**" if c == source else f"{cells[c]:.3f}")
                     if c in cells else "" for c in cols]
            s = self.row_summary(row)
            lines.append(f"| {row} | " + " | ".join(shown) + f" | {s['id']:.3f} | {s['ood']:.3f} |")
        total = self.summary()
        lines.append(f"\nmean ID {total['iid_mean']:.3f} · mean OOD {total['ood_mean']:.3f} "
                     f"(bold: in distribution)")
        return "\n".join(lines) + "\n"

    def plot(self, path: str | Path, title: str = "pairwise accuracy") -> Path:
        """A heatmap PNG of the matrix (rows: trained on, columns: tested on)."""
        plt = _pyplot()
        rows, cols = list(self.accuracy), self.columns
        values = [[self.accuracy[r].get(c, float("nan")) for c in cols] for r in rows]
        fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(cols), 1.2 + 0.6 * len(rows)))
        image = ax.imshow(values, vmin=0.0, vmax=1.0, cmap="RdYlGn", aspect="auto")
        ax.set_xticks(range(len(cols)), cols)
        ax.set_yticks(range(len(rows)), rows)
        ax.set_xlabel("tested on")
        ax.set_ylabel("trained on")
        for i, row in enumerate(rows):
            for j, col in enumerate(cols):
                if not math.isnan(values[i][j]):
                    weight = "bold" if col == self.source_of(row) else "normal"
                    ax.text(j, i, f"{values[i][j]:.3f}", ha="center", va="center",
                            fontweight=weight)
        fig.colorbar(image, ax=ax)
        ax.set_title(title)
        return _save_figure(fig, path)

    def write(self, folder: str | Path, stem: str = "matrix") -> dict[str, Path]:
        """``stem.json``, ``stem.md`` and ``stem.png`` under ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = {"json": folder / f"{stem}.json", "markdown": folder / f"{stem}.md",
                 "png": folder / f"{stem}.png"}
        paths["json"].write_text(json.dumps(self.to_json(), indent=2) + "\n")
        paths["markdown"].write_text(self.to_markdown())
        self.plot(paths["png"])
        return paths


def cross_distribution(models: dict[str, str | Path], tests: dict[str, str | Path],
                       row_sources: dict[str, str] | None = None, batch_size: int = 32,
                       progress: bool = False) -> CrossDistributionMatrix:
    """Evaluate every model on every test set.

    Args:
        models: row name -> saved RM directory.
        tests: column name (the test set's source label) -> pairwise file.
        row_sources: row name -> the source label it was trained on (default: the row name
            up to the first ``/``, so ``povid/sfc_two_stage`` was trained on ``povid``).
    """
    accuracy = {}
    for row, model_dir in models.items():
        reports = evaluate_model(model_dir, tests, batch_size, progress=progress)
        accuracy[row] = {col: report["accuracy"] for col, report in reports.items()}
    return CrossDistributionMatrix(accuracy, dict(row_sources or {}))


# ---------------------------------------------------------------------------- diagnosis
def proxy_is_wrong(text_chosen: torch.Tensor, text_rejected: torch.Tensor) -> torch.Tensor:
    """The shortcut-failure subset: the text-only proxy does not prefer the chosen response.

    >>> proxy_is_wrong(torch.tensor([1., 0., 2.]), torch.tensor([0., 0., 3.])).tolist()
    [False, True, True]
    """
    return text_chosen <= text_rejected


def shortcut_failure_degradation(mm_chosen: torch.Tensor, mm_rejected: torch.Tensor,
                                 failure: torch.Tensor) -> dict[str, float]:
    """A multimodal RM's accuracy on the shortcut-failure subset vs the rest, and their gap.

    Args:
        mm_chosen, mm_rejected: the MM-RM's rewards per pair.
        failure: boolean per pair, True where the text-only proxy is wrong.

    Returns:
        ``accuracy_failure``, ``accuracy_rest``, ``sfd = accuracy_rest - accuracy_failure``
        and the subset sizes. Example: MM-RM right on 3 of 4 "rest" pairs and 1 of 2 failure
        pairs gives SFD 0.75 - 0.5 = 0.25.
    """
    rest = ~failure
    acc_failure = pairwise_accuracy(mm_chosen[failure], mm_rejected[failure])
    acc_rest = pairwise_accuracy(mm_chosen[rest], mm_rejected[rest])
    return {"failure_pairs": int(failure.sum()), "rest_pairs": int(rest.sum()),
            "accuracy_failure": acc_failure, "accuracy_rest": acc_rest,
            "sfd": acc_rest - acc_failure}


_WORD = re.compile(r"[\w']+|[^\w\s]")


def _ngrams(text: str, max_n: int) -> set[str]:
    words = _WORD.findall(text.lower())
    return {" ".join(words[i:i + n]) for n in range(1, max_n + 1)
            for i in range(len(words) - n + 1)}


def textual_cues(pairs: Sequence[PairRecord], max_n: int = 3, min_pairs: int = 20,
                 top: int = 10) -> list[dict]:
    """The text features that best predict the preference on their own, best first.

    Each cue is a rule "prefer the response that has the feature". For a cue, ``coverage``
    is the share of pairs where chosen and rejected differ in it, and ``accuracy`` the share
    of those where the rule picks the chosen response. Candidates: the response's length in
    words ("longer"), and every word n-gram (n <= ``max_n``) present in exactly one side of at
    least ``min_pairs`` pairs (either direction: "has X" or "lacks X"). Ranked by
    ``coverage * |accuracy - 0.5|`` — how many pairs the cue decides beyond chance.
    """
    decided: Counter[str] = Counter()
    agree: Counter[str] = Counter()
    longer_decided = longer_agree = 0
    for pair in pairs:
        c_words, r_words = len(_WORD.findall(pair.chosen)), len(_WORD.findall(pair.rejected))
        if c_words != r_words:
            longer_decided += 1
            longer_agree += c_words > r_words
        c, r = _ngrams(pair.chosen, max_n), _ngrams(pair.rejected, max_n)
        for gram in c ^ r:
            decided[gram] += 1
            agree[gram] += gram in c
    n = max(1, len(pairs))
    cues = []
    if longer_decided:
        cues.append(_cue("longer response (words)", longer_decided, longer_agree, n))
    for gram, count in decided.items():
        if count >= min_pairs:
            has = _cue(f'has "{gram}"', count, agree[gram], n)
            cues.append(has if has["accuracy"] >= 0.5
                        else _cue(f'lacks "{gram}"', count, count - agree[gram], n))
    cues.sort(key=lambda c: (-c["score"], c["cue"]))
    return cues[:top]


def _cue(name: str, decided: int, agree: int, total: int) -> dict:
    accuracy = agree / decided
    coverage = decided / total
    return {"cue": name, "coverage": coverage, "accuracy": accuracy,
            "score": coverage * abs(accuracy - 0.5)}


def cue_table_markdown(cues: list[dict]) -> str:
    lines = ["| cue (prefer the response that …) | coverage | accuracy where it decides |",
             "| --- | ---: | ---: |"]
    lines += [f"| {c['cue']} | {c['coverage']:.3f} | {c['accuracy']:.3f} |" for c in cues]
    return "\n".join(lines) + "\n"


def diagnose_pairs(pairs: Sequence[PairRecord], text_chosen: torch.Tensor,
                   text_rejected: torch.Tensor, mm_scores: tuple | None = None,
                   cue_pairs: Sequence[PairRecord] | None = None, top_cues: int = 10) -> dict:
    """How exploitable a data set is by text alone.

    Args:
        pairs: the pairs the proxy (and the MM-RM) scored.
        text_chosen, text_rejected: the text-only proxy's rewards on them.
        mm_scores: ``(chosen, rejected)`` of a multimodal RM on the same pairs, for the SFD.
        cue_pairs: where to look for textual cues (default: ``pairs``).
    """
    failure = proxy_is_wrong(text_chosen, text_rejected)
    report = {"pairs": len(pairs),
              "text_only_accuracy": pairwise_accuracy(text_chosen, text_rejected),
              "shortcut_failure_fraction": failure.float().mean().item() if len(pairs) else 0.0,
              "shortcut_failure_ids": [p.id for p, f in zip(pairs, failure) if f]}
    if mm_scores is not None:
        report["multimodal_accuracy"] = pairwise_accuracy(*mm_scores)
        report.update(shortcut_failure_degradation(*mm_scores, failure))
    report["cues"] = textual_cues(cue_pairs if cue_pairs is not None else pairs, top=top_cues)
    return report


def diagnosis_markdown(report: dict) -> str:
    lines = [f"pairs: {report['pairs']}",
             f"text-only proxy accuracy: {report['text_only_accuracy']:.3f}",
             f"shortcut-failure subset (proxy wrong): {report['shortcut_failure_fraction']:.3f}"
             " of pairs"]
    if "sfd" in report:
        lines += [f"multimodal RM accuracy: {report['multimodal_accuracy']:.3f} "
                  f"(on the shortcut-failure subset {report['accuracy_failure']:.3f}, "
                  f"on the rest {report['accuracy_rest']:.3f})",
                  f"Shortcut-Failure Degradation (rest - failure): {report['sfd']:.3f}"]
    return "\n".join(f"- {line}" for line in lines) + "\n\n" + cue_table_markdown(report["cues"])


# ---------------------------------------------------------------------------- best-of-N
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


def best_of_n_file(model, processor, path: str | Path, items_per_batch: int = 16,
                   image_root: str | Path | None = None) -> dict:
    """:func:`best_of_n_quality` of a saved RM on an inference file whose items carry each
    response's number of mistakes in ``errors`` (the built-in benchmark's best-of-N sets)."""
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
    return best_of_n_quality([r.extra["errors"] for r in records], scores)


# ---------------------------------------------------------------------------- statistics
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


# ---------------------------------------------------------------------------- plots
def plot_reward_margins(chosen: torch.Tensor, rejected: torch.Tensor, path: str | Path,
                        title: str = "") -> Path:
    """Histograms of the chosen and rejected rewards, and of their margin."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.hist(chosen.numpy(), bins=40, alpha=0.6, label="chosen")
    left.hist(rejected.numpy(), bins=40, alpha=0.6, label="rejected")
    left.set_xlabel("reward")
    left.legend()
    right.hist((chosen - rejected).numpy(), bins=40, color="grey")
    right.axvline(0.0, color="black", linewidth=1)
    right.set_xlabel("margin (chosen - rejected)")
    fig.suptitle(title or "reward distribution")
    return _save_figure(fig, path)


def plot_weight_histograms(metrics_file: str | Path, path: str | Path, parts: int = 3) -> Path:
    """SFC weight histograms over training, from ``metrics.jsonl`` (``weight/hist``).

    The log steps are split into ``parts`` consecutive stretches (early, ..., late) and the
    histogram counts summed within each, so the plot shows how the weights move as the
    multimodal RM learns.
    """
    from mmrm.weighting import WEIGHT_BIN_EDGES

    records = [json.loads(line) for line in Path(metrics_file).read_text().splitlines()
               if line.strip()]
    records = [r for r in records if "weight/hist" in r]
    if not records:
        raise ValueError(f"{metrics_file}: no weight/hist records (a run with weighting "
                         f"none, or one logged before weight histograms existed)")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    centres = [(a + b) / 2 for a, b in zip(WEIGHT_BIN_EDGES, WEIGHT_BIN_EDGES[1:])]
    width = WEIGHT_BIN_EDGES[1] - WEIGHT_BIN_EDGES[0]
    size = math.ceil(len(records) / parts)
    for k in range(0, len(records), size):
        chunk = records[k:k + size]
        counts = [sum(r["weight/hist"][i] for r in chunk) for i in range(len(centres))]
        total = max(1, sum(counts))
        ax.step(centres, [c / total / width for c in counts], where="mid",
                label=f"steps {chunk[0]['step']}-{chunk[-1]['step']}")
    ax.set_xlabel("pair weight (SFC)")
    ax.set_ylabel("density")
    ax.legend()
    return _save_figure(fig, path)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_figure(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)
    return path
