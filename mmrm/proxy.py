"""The text-only proxy of the shortcut-aware recipe, cross-fitted (``shortcut.proxy:
cross_fit``, the first of two stages): proxies trained on all folds but one, each pair scored
by the proxy that never saw it, the margins and losses cached for the reward model's run
(``mmrm train-proxy``; :class:`mmrm.weighting.PairWeighting` reads the cache).
"""

from __future__ import annotations

import json
from pathlib import Path

from mmrm.config import TrainConfig, with_overrides
from mmrm.data import fold_of, load_pairs
from mmrm.inference import load_reward_model, score_pairs
from mmrm.outputs import write_atomic
from mmrm.tracking.tracker import Tracker
from mmrm.train import train
from mmrm.weighting import bradley_terry_loss


def proxy_config(config: TrainConfig, fold: int | None = None) -> TrainConfig:
    """The text-only proxy's run: same data, model and schedule, no image, no weighting;
    with ``fold``, trained on every fold of ``shortcut.proxy_folds`` but that one.

    A fold's proxy sees (k - 1) / k of the pairs for the run's epochs, so (k - 1) / k of its
    steps; a run bounded by ``max_steps`` instead gives each fold (k - 1) / k of them too
    (rounded up), as its epochs would (k proxies of ``max_steps`` each would train the proxy
    stage k times longer than the epochs-bounded runs of the pipeline do).

    What only a reward model needs is left out: no reward statistics (a proxy's rewards are
    never normalised) and no end-of-run tests (its losses on the training pairs are what the
    stage uses; the evaluate stage tests the proxies on the test split itself)."""
    changes = {"mode": config.shortcut.proxy_mode.value, "shortcut": {},
               "output_dir": str(Path(config.output_dir) / "proxy"),
               "calibration_pairs": 0, "data.eval": {}}
    if fold is not None:
        k = config.shortcut.proxy_folds
        changes.update({"output_dir": str(Path(config.output_dir) / "proxy" / f"fold{fold}"),
                        "data.folds": k, "data.holdout_fold": fold})
        if config.max_steps:
            changes["max_steps"] = -(-config.max_steps * (k - 1) // k)
    return with_overrides(config, changes, "proxy")


def proxy_dirs(config: TrainConfig) -> list[Path]:
    """The saved proxies of :func:`train_text_proxy` (one per fold)."""
    folds = config.shortcut.proxy_folds
    return [Path(proxy_config(config, f if folds > 1 else None).output_dir) / "final"
            for f in range(folds)]


def train_text_proxy(config: TrainConfig, tracker: Tracker | None = None, log=print) -> dict:
    """Stage 1 of ``shortcut.proxy: cross_fit``: train the text-only proxies, then cache each
    pair's margin and loss.

    With ``shortcut.proxy_folds = k > 1`` (default 2) the pairs are cut into k folds
    (:func:`mmrm.data.fold_of`), k proxies each train on all folds but one, and each pair's
    loss comes from the proxy that never saw it: out of sample, as the paper's jointly
    trained proxy's loss is on a pair it meets for the first time. With k = 1 one proxy
    trains on everything and is scored on its own training pairs (memorised cue-wrong pairs
    then look easy and lose their weight).

    The cache goes to ``shortcut.proxy_losses`` if set, else ``<output_dir>/proxy_losses.json``:
    ``losses`` (pair id -> BT loss), ``margins`` (pair id -> chosen minus rejected reward, the
    product of experts' input), ``source`` (pair id -> the fold whose proxy scored it),
    ``accuracy_in_sample`` (each proxy on its own training pairs), ``accuracy_out_of_sample``
    (on the pairs it never saw; k > 1 only) and ``accuracy`` (the one the losses carry).
    """
    folds = config.shortcut.proxy_folds
    root = Path(config.data.image_root) if config.data.image_root else None
    pairs = [p for path in config.data.train for p in load_pairs(path, image_root=root)]
    fold = {p.id: (fold_of(p.id, folds) if folds > 1 else 0) for p in pairs}
    losses, margins, wins_in, wins_out = {}, {}, [], []
    for f, model_dir in enumerate(proxy_dirs(config)):
        run = proxy_config(config, f if folds > 1 else None)
        log(f"text-only proxy {f + 1}/{folds}: {run.output_dir}")
        # k > 1: k runs would log clashing params; the caller logs the cache's summary
        train(run, tracker if folds == 1 else None, log)
        model, collator = load_reward_model(model_dir, max_length=config.data.max_length)
        chosen, rejected = score_pairs(model, collator, pairs, config.eval_batch_size)
        for p, c, r, loss in zip(pairs, chosen, rejected, bradley_terry_loss(chosen, rejected)):
            win = float(c > r) + 0.5 * float(c == r)
            if folds == 1 or fold[p.id] != f:
                wins_in.append(win)
            if fold[p.id] == f:
                losses[p.id] = round(float(loss), 6)
                margins[p.id] = round(float(c - r), 6)
                if folds > 1:
                    wins_out.append(win)

    def mean(wins: list[float]) -> float:
        return sum(wins) / len(wins) if wins else float("nan")

    cache = {"proxies": [str(d) for d in proxy_dirs(config)],
             "mode": config.shortcut.proxy_mode.value, "folds": folds,
             "accuracy_in_sample": mean(wins_in),
             "accuracy_out_of_sample": mean(wins_out) if folds > 1 else None,
             "accuracy": mean(wins_out) if folds > 1 else mean(wins_in),
             "source": fold, "losses": losses, "margins": margins}
    out = Path(config.shortcut.proxy_losses or Path(config.output_dir) / "proxy_losses.json")
    write_atomic(out, json.dumps(cache) + "\n")
    log(f"proxy accuracy in sample {cache['accuracy_in_sample']:.4f}, out of sample "
        f"{cache['accuracy_out_of_sample'] if folds > 1 else 'n/a'}")
    return cache
