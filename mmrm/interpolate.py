"""Weight interpolation of two reward models fine-tuned from one base: ``(1 - alpha) A +
alpha B``, parameter by parameter (WiSE-FT, Wortsman et al., 2022; weight-averaged reward
models, Ramé et al., 2024). Averaging the standard RM with a shortcut-aware one of the same
data can keep most of the first's in-distribution accuracy and most of the second's
robustness, at no training cost.

* :func:`check_compatible` refuses two folders that are not one architecture grown from one
  base (a clear error naming what differs).
* :class:`Interpolation` holds both models' weights and gives the model at any ``alpha``
  (the pipeline tries several on validation pairs); :func:`save_interpolated` writes one as
  an ordinary saved reward model (eval, score, serve and the MLflow registry load it).
* :func:`choose` is the rule that picks the partner and ``alpha`` from validation pairs
  only: the ``interpolated`` variant of the pipeline.

    mmrm interpolate runs/tiny/povid/none/final runs/tiny/povid/sfc_two_stage/final OUT --alpha 0.5
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from mmrm.model import REWARD_CONFIG, RewardModel, check_reward_model, model_digest

#: Backbone config keys that may differ between two fine-tunes of one base (bookkeeping).
IGNORED_CONFIG_KEYS = ("_name_or_path", "transformers_version", "torch_dtype", "dtype")
#: What an interpolated folder records about its making (beside its reward config).
RECORD = "interpolation.json"


def check_compatible(a: str | Path, b: str | Path) -> None:
    """Raise ``ValueError`` unless ``a`` and ``b`` are saved reward models of one
    architecture fine-tuned from one base: the same ``base_model`` and input mode in their
    reward configs, the same backbone ``config.json`` (bookkeeping keys aside) and
    the same tokenizer files."""
    a, b = Path(a), Path(b)
    ca, cb = check_reward_model(a), check_reward_model(b)
    for key in ("base_model", "mode"):
        if getattr(ca, key) != getattr(cb, key):
            raise ValueError(f"{b / REWARD_CONFIG}: {key} {getattr(cb, key)!r} is not "
                             f"{a / REWARD_CONFIG}'s {getattr(ca, key)!r}: interpolation "
                             f"needs two fine-tunes of one base")
    config_a, config_b = (_backbone_config(p) for p in (a, b))
    differ = sorted(k for k in set(config_a) | set(config_b)
                    if config_a.get(k) != config_b.get(k))
    if differ:
        raise ValueError(f"{b / 'config.json'}: differs from {a / 'config.json'} in "
                         f"{', '.join(differ[:5])}: not one architecture")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json"):
        if (a / name).exists() != (b / name).exists() or (
                (a / name).exists() and (a / name).read_bytes() != (b / name).read_bytes()):
            raise ValueError(f"{b / name}: not {a / name}'s: the two models tokenize "
                             f"differently")


def _backbone_config(folder: Path) -> dict:
    config = json.loads((folder / "config.json").read_text())
    return {k: v for k, v in config.items() if k not in IGNORED_CONFIG_KEYS}


class Interpolation:
    """Two compatible reward models and the model between them at any ``alpha``.

    Holds A's and B's weights (float32 copies) and one model whose weights :meth:`at`
    overwrites in place, so trying many alphas loads each folder once.
    """

    def __init__(self, a: str | Path, b: str | Path):
        check_compatible(a, b)
        self.a, self.b = Path(a), Path(b)
        self.model = RewardModel.load(self.a, dtype=torch.float32).eval()
        self.state_a = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.state_b = RewardModel.load(self.b, dtype=torch.float32).state_dict()
        if set(self.state_a) != set(self.state_b) or any(
                self.state_a[k].shape != self.state_b[k].shape for k in self.state_a):
            raise ValueError(f"{self.b}: its parameters do not match {self.a}'s")

    def at(self, alpha: float) -> RewardModel:
        """The model with weights ``(1 - alpha) A + alpha B`` (the held model, changed in
        place). Non-float buffers must be equal in both and are A's."""
        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha {alpha}: a share between 0 and 1")
        mixed = {}
        for key, wa in self.state_a.items():
            wb = self.state_b[key]
            if wa.is_floating_point():
                mixed[key] = torch.lerp(wa, wb.to(wa.dtype), alpha)
            elif not torch.equal(wa, wb):
                raise ValueError(f"{self.b}: buffer {key} differs from {self.a}'s")
            else:
                mixed[key] = wa
        self.model.load_state_dict(mixed)
        self.model.config.extra = {**self.model.config.extra, "interpolation": {
            "a": str(self.a), "b": str(self.b), "alpha": alpha}}
        return self.model


def save_interpolated(interpolation: Interpolation, alpha: float, out: str | Path,
                      calibration_pairs: list | None = None, details: dict | None = None
                      ) -> Path:
    """Write the model at ``alpha`` as an ordinary saved reward model at ``out`` (saved
    whole, as every model is). Its reward statistics come from
    ``calibration_pairs`` (A's training pairs, say), else they are A's and B's interpolated
    (a mean and spread of rewards only approximately). ``interpolation.json`` records both
    models' folders and digests, ``alpha`` and ``details``."""
    from mmrm.inference import reward_statistics
    from mmrm.model import load_processor
    from mmrm.data import PairCollator
    from mmrm.config import InputMode

    out = Path(out)
    model = interpolation.at(alpha)
    processor = load_processor(interpolation.a)
    if calibration_pairs:
        collator = PairCollator(processor, InputMode(model.config.mode),
                                share_prompt=model.shares_prompt)
        model.config.reward_mean, model.config.reward_std = reward_statistics(
            model, collator, calibration_pairs)
    else:
        ca, cb = check_reward_model(interpolation.a), check_reward_model(interpolation.b)
        model.config.reward_mean = (1 - alpha) * ca.reward_mean + alpha * cb.reward_mean
        model.config.reward_std = (1 - alpha) * ca.reward_std + alpha * cb.reward_std
    record = {"a": str(interpolation.a), "b": str(interpolation.b), "alpha": alpha,
              "a_digest": model_digest(interpolation.a), "b_digest": model_digest(interpolation.b),
              "reward_config": asdict(model.config), **(details or {})}
    model.save(out, processor, {RECORD: json.dumps(record, indent=2) + "\n"})
    return out


def choose(table: list[dict], reference_accuracy: float, tolerance: float) -> dict:
    """The interpolation rule (fixed before any run of it; reads validation pairs only).

    Among the candidates (``table``: ``partner``, ``alpha``, ``val_accuracy`` and
    ``val_proxy_wrong_accuracy``, the accuracy on the validation pairs the text-only proxy
    gets wrong) whose validation accuracy is at most ``tolerance`` below the standard RM's
    (``reference_accuracy``), the one most accurate where the proxy is wrong; ties go to
    the higher validation accuracy, then the smaller alpha (nearer the standard RM), then
    the table's order. The standard RM itself (alpha 0) is always a candidate, so the rule
    never does worse in distribution than the tolerance allows.

    Worked example: reference 0.95, tolerance 0.01; candidates (a, 0.5: 0.945, 0.60),
    (a, 1.0: 0.90, 0.80), (b, 0.5: 0.955, 0.60): the second is too far below 0.95; of the
    others (both 0.60 where the proxy is wrong) b at 0.5 has the higher validation accuracy.
    """
    eligible = [(i, row) for i, row in enumerate(table)
                if row["val_accuracy"] >= reference_accuracy - tolerance - 1e-12]
    if not eligible:
        raise ValueError("no candidate within the tolerance: the table must hold the standard "
                         "RM itself (alpha 0)")
    def wrong(row: dict) -> float:      # NaN (no proxy-wrong validation pair): decides nothing
        value = row["val_proxy_wrong_accuracy"]
        return value if value == value else float("-inf")

    i, best = min(eligible, key=lambda e: (-wrong(e[1]), -e[1]["val_accuracy"], e[1]["alpha"],
                                           e[0]))
    return {**best, "reference_accuracy": reference_accuracy, "tolerance": tolerance}
