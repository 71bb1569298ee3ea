"""The shortcut diagnosis: how far a preference data set can be solved by text alone (a
text-only proxy's accuracy, the shortcut-failure subset, the textual cues that predict the
preference), and how much a multimodal RM leans on it (SFD)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import torch

from mmrm.evaluate.metrics import pairwise_accuracy
from mmrm.formats import PairRecord


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


def proxy_margins(proxies: Sequence, pairs: Sequence[PairRecord], batch_size: int = 64
                  ) -> torch.Tensor:
    """The mean margin (chosen minus rejected reward) of several text-only proxies on
    ``pairs`` (the cross-fitted folds' proxies vote as one): what decides the shortcut-failure
    subset of held-out pairs."""
    from mmrm.inference import load_reward_model, score_pairs

    total = None
    for folder in proxies:
        model, collator = load_reward_model(folder)
        chosen, rejected = score_pairs(model, collator, list(pairs), batch_size)
        total = chosen - rejected if total is None else total + (chosen - rejected)
    return total / len(proxies)


def cue_balanced_accuracy(chosen: torch.Tensor, rejected: torch.Tensor,
                          cue_on_chosen: Sequence[bool], anticue_accuracy: float) -> float:
    """What an RM would score with its environment's cue on either side at random: the mean
    of its accuracy on the test pairs that carry the cue on the preferred side and its
    accuracy on the anti-cue split (every pair carries it on the rejected side).

    Worked example: right on 9 of 10 cue-on-chosen pairs and 0.5 anti-cue gives 0.7.
    """
    side = torch.tensor(list(cue_on_chosen), dtype=torch.bool)
    if len(side) != len(chosen):
        raise ValueError(f"{len(chosen)} rewards for {len(side)} pairs")
    return 0.5 * (pairwise_accuracy(chosen[side], rejected[side]) + anticue_accuracy)


def weight_phases(records: Sequence[dict], parts: int = 3) -> list[dict]:
    """The pair weights early, in the middle and late in training (``parts`` consecutive
    stretches of a run's ``metrics.jsonl`` records): per stretch its steps, the mean weight,
    the mean weight on the pairs the text-only proxy gets wrong and right (NaN where a run
    logged no proxy statistics), and the effective sample share ``(sum w)^2 / (n sum w^2)``
    (:func:`mmrm.weighting.effective_sample_share`; NaN where the run logged no mean
    squares). The weights are the effective ones: a changed loss's share of the standard
    gradient (product of experts, confidence regularization). A weighting whose contrast
    between the two fades as the RM fits its pairs shows it here, and so does a collapse
    (a few pairs carry the loss: a small share).

    Worked example: records at steps 10-60 with ``weight/mean_proxy_wrong`` 0.7, 0.6, 0.9,
    0.9, 0.9, 0.9 give, in thirds, 0.65, 0.9 and 0.9; ``weight/mean`` 0.5 and
    ``weight/mean_sq`` 0.5 throughout give a share of 0.5 in each third.
    """
    import math

    from mmrm.weighting import effective_sample_share

    if not records:
        return []
    size = math.ceil(len(records) / parts)
    phases = []
    for k in range(0, len(records), size):
        chunk = records[k:k + size]
        phase = {"first_step": chunk[0]["step"], "last_step": chunk[-1]["step"]}
        for key, name in (("weight/mean", "mean"), ("weight/mean_proxy_wrong", "proxy_wrong"),
                          ("weight/mean_proxy_right", "proxy_right"),
                          ("weight/mean_sq", "mean_sq")):
            values = [r[key] for r in chunk if key in r and r[key] == r[key]]
            phase[name] = sum(values) / len(values) if values else float("nan")
        phase["ess"] = effective_sample_share(phase["mean"], phase.pop("mean_sq")) \
            if phase["mean_sq"] == phase["mean_sq"] else float("nan")
        phases.append(phase)
    return phases
