"""The training recipe: one loop for the standard and the shortcut-aware reward model.

Reading order of :func:`train`: batch -> forward -> per-pair BT loss -> weights -> reduce ->
step -> log -> checkpoint. The shortcut-aware variants differ only in where the text-only
proxy's per-pair losses come from (a jointly trained proxy, or a cache written by a proxy
trained beforehand) and in the weights they give (:mod:`mmrm.weighting`).

accelerate runs the loop: devices, mixed precision, gradient accumulation, and DeepSpeed ZeRO
when launched with one of the accelerate configs under ``configs/accelerate/``.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from mmrm.config import TrainConfig, with_overrides
from mmrm.data import (PairCollator, fold_of, load_pairs, pairs_with_unknown_tokens,
                       select_folds, unknown_tokens_note)
from mmrm.evaluate import pairwise_accuracy
from mmrm.finetune import apply_finetune, merge_adapters
from mmrm.inference import load_reward_model, reward_statistics, score_pairs
from mmrm.model import RewardModel, load_processor, weight_dtype_named
from mmrm.tracking import NoOpTracker, Tracker, flatten
from mmrm.weighting import (Weighting, bradley_terry_loss, group_balance_weights,
                            pair_weights, weight_histogram, weight_statistics)

STATE_FILE = "trainer_state.json"
TRAIN_IDS = "train_ids.txt"
#: The resolved run config, saved in the run folder, ``final/`` and every checkpoint.
CONFIG_FILE = "train_config.json"
#: Test hook: seconds to sleep after each step (read when a run starts; only the resume test
#: sets it, to kill a run mid-way).
STEP_DELAY_ENV = "MMRM_TEST_STEP_DELAY"


class TrainedModels(nn.Module):
    """What one optimizer trains: the reward model and, for ``sfc_joint``, the proxy.

    One module with one forward, so that DDP and DeepSpeed see a single model and a single
    forward per step.
    """

    def __init__(self, reward: RewardModel, proxy: RewardModel | None = None):
        super().__init__()
        self.reward = reward
        self.proxy = proxy

    def forward(self, model_batch: dict, proxy_batch: dict | None = None):
        rewards = self.reward(**model_inputs(model_batch))
        proxy_rewards = self.proxy(**model_inputs(proxy_batch)) if proxy_batch else None
        return rewards, proxy_rewards


class TrainCollator:
    """The reward model's view of a batch and, for ``sfc_joint``, the proxy's view."""

    def __init__(self, model_view: PairCollator, proxy_view: PairCollator | None):
        self.model_view, self.proxy_view = model_view, proxy_view

    def __call__(self, pairs):
        batch = {"model": self.model_view(pairs), "ids": [p.id for p in pairs]}
        if self.proxy_view is not None:
            batch["proxy"] = self.proxy_view(pairs)
        return batch


def model_inputs(view: dict) -> dict:
    """Collator output minus bookkeeping, plus how many sequences share each image."""
    inputs = {k: v for k, v in view.items() if k != "ids"}
    return {**inputs, "sequences_per_image": 2}


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def shares_prompt(config: TrainConfig, model: RewardModel) -> bool:
    """Whether batches carry each pair's prompt once (``share_prompt``, where it applies and
    pays: :attr:`RewardModel.shares_prompt`)."""
    return config.share_prompt and model.shares_prompt and not config.gradient_checkpointing


def weight_dtype(mixed_precision: str, distributed_type) -> torch.dtype:
    """The dtype the weights are loaded in: bf16/fp16 only under DeepSpeed, which keeps fp32
    master copies for the optimizer. Elsewhere they are fp32, whatever dtype the base was
    saved in, and accelerate autocasts the forward, as transformers' Trainer does: in bf16
    weights, updates below their precision are lost (at lr 1e-5, a norm weight of 1.0 never
    moves)."""
    from accelerate.utils import DistributedType

    if distributed_type != DistributedType.DEEPSPEED or mixed_precision == "no":
        return torch.float32
    return weight_dtype_named(mixed_precision)


def build_optimizer(module: nn.Module, config: TrainConfig, total_steps: int):
    """AdamW without decay on biases/norms; linear warm-up then cosine (or constant)."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if p.requires_grad:
            (no_decay if p.dim() < 2 else decay).append(p)
    o = config.optim
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=o.lr, betas=(o.beta1, o.beta2), fused=o.fused)
    warmup = max(1, int(o.warmup_ratio * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if o.scheduler == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def load_proxy_losses(path: str | Path, pairs) -> dict[str, float]:
    try:
        cache = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"shortcut.proxy_losses: {path}: no such file (run mmrm train-proxy "
                         f"first)") from None
    except ValueError as err:
        raise ValueError(f"shortcut.proxy_losses: {path}: not valid JSON ({err})") from None
    losses = cache.get("losses", cache) if isinstance(cache, dict) else None
    if not isinstance(losses, dict) or not all(isinstance(v, (int, float))
                                               for v in losses.values()):
        raise ValueError(f"shortcut.proxy_losses: {path}: expected {{pair id: loss}}")
    missing = [p.id for p in pairs if p.id not in losses]
    if missing:
        raise ValueError(f"{path}: no proxy loss for {len(missing)} training pairs "
                         f"(e.g. {missing[:3]}); was the proxy run on the same data?")
    return losses


def training_inputs(config: TrainConfig) -> tuple[list, dict[str, float] | None]:
    """Every input of a run, checked before a model is loaded: the training pairs (each
    record validated, ``file:line: field: problem``), the evaluation files and base model
    folder (they exist), and the proxy losses of ``sfc_two_stage`` (one per pair).

    Returns the training pairs (after fold selection) and the proxy losses, if any.
    """
    from mmrm.model import check_model_folder

    check_model_folder(config.model)
    for name, path in config.data.eval.items():
        if not Path(path).is_file():
            raise ValueError(f"data.eval.{name}: {path}: no such file")
    image_root = Path(config.data.image_root) if config.data.image_root else None
    for path in config.data.train:
        if not Path(path).is_file():
            raise ValueError(f"data.train: {path}: no such file")
    pairs = select_folds([p for path in config.data.train
                          for p in load_pairs(path, image_root=image_root)],
                         config.data.folds, config.data.holdout_fold)
    if not pairs:
        raise ValueError(f"no training pairs in {config.data.train}"
                         + (f" outside fold {config.data.holdout_fold} of {config.data.folds}"
                            if config.data.holdout_fold is not None else ""))
    # sfc_two_stage weights by the cached proxy losses; a standard run given them logs the
    # same proxy statistics (its weights stay 1), so the two compare metric for metric
    proxy_losses = load_proxy_losses(config.shortcut.proxy_losses, pairs) \
        if config.shortcut.proxy_losses and config.shortcut.weighting is not \
        Weighting.SFC_JOINT else None
    return pairs, proxy_losses


def planned_steps(config: TrainConfig, pairs: int) -> tuple[int, int]:
    """Optimizer steps per epoch over ``pairs`` training pairs, and in the whole run."""
    batches = math.ceil(pairs / config.per_device_batch_size)
    steps_per_epoch = math.ceil(batches / config.gradient_accumulation_steps)
    return steps_per_epoch, config.max_steps or max(1, math.ceil(steps_per_epoch * config.epochs))


def encode_cache_budget(config: TrainConfig, pairs: int) -> float:
    """MiB of the encoding cache per input view: ``encode_cache_mib`` where the run reads its
    pairs more than once (epochs, or ``max_steps`` past one epoch), else 0, since one pass
    over the data would only fill it."""
    steps_per_epoch, total_steps = planned_steps(config, pairs)
    return config.encode_cache_mib if total_steps > steps_per_epoch else 0.0


def train(config: TrainConfig, tracker: Tracker | None = None, log=print,
          resume: bool = True) -> dict:
    """Train one reward model; returns the final metrics (also in ``output_dir``).

    Args:
        config: the validated run configuration.
        tracker: where metrics go (no-op by default).
        log: progress lines go here.
        resume: continue from the newest checkpoint in ``output_dir`` if there is one.
    """
    from accelerate import Accelerator

    tracker = tracker or NoOpTracker()
    out = Path(config.output_dir)
    weighting = config.shortcut.weighting
    pairs, proxy_losses = training_inputs(config)     # bad input fails here, not mid-run
    fixed_weights = group_balance_weights({p.id: proxy_losses[p.id] for p in pairs}) \
        if config.shortcut.formula == "group_balance" else None
    accelerator = Accelerator(mixed_precision=config.mixed_precision,
                              gradient_accumulation_steps=config.gradient_accumulation_steps)
    set_seed(config.seed)
    dtype = weight_dtype(config.mixed_precision, accelerator.distributed_type)
    processor = load_processor(config.model, config.trust_remote_code)
    unknown = pairs_with_unknown_tokens(processor, pairs)
    note = unknown_tokens_note("data.train", len(pairs), len(unknown), *unknown[:1])
    if note:
        log(note)

    reward_model = apply_finetune(RewardModel.from_base(
        config.model, mode=config.mode.value, dtype=dtype,
        trust_remote_code=config.trust_remote_code,
        attn_implementation=config.attn_implementation), config)
    proxy, proxy_view = None, None
    cache_mib = encode_cache_budget(config, len(pairs))
    if weighting is Weighting.SFC_JOINT:
        proxy = apply_finetune(RewardModel.from_base(
            config.model, mode=config.shortcut.proxy_mode.value, dtype=dtype,
            trust_remote_code=config.trust_remote_code,
            attn_implementation=config.attn_implementation), config)
        proxy_view = PairCollator(processor, config.shortcut.proxy_mode, config.data.max_length,
                                  share_prompt=shares_prompt(config, proxy),
                                  cache_mib=cache_mib)
    modules = TrainedModels(reward_model, proxy)

    generator = torch.Generator().manual_seed(config.seed)
    collator = TrainCollator(PairCollator(processor, config.mode, config.data.max_length,
                                          share_prompt=shares_prompt(config, reward_model),
                                          cache_mib=cache_mib),
                             proxy_view)
    # persistent workers keep their encoding caches from one epoch to the next
    loader = DataLoader(pairs, batch_size=config.per_device_batch_size, shuffle=True,
                        generator=generator, collate_fn=collator, drop_last=False,
                        num_workers=config.dataloader_num_workers,
                        persistent_workers=config.dataloader_num_workers > 0)
    steps_per_epoch, total_steps = planned_steps(config, len(pairs))
    optimizer, scheduler = build_optimizer(modules, config, total_steps)
    modules, optimizer, loader, scheduler = accelerator.prepare(modules, optimizer, loader,
                                                                scheduler)
    core = accelerator.unwrap_model(modules)

    step, start_epoch, skip_batches = 0, 0, 0
    checkpoint = latest_checkpoint(out) if resume else None
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        state = json.loads((checkpoint / STATE_FILE).read_text())
        step, start_epoch, skip_batches = state["step"], state["epoch"], state["batch_in_epoch"]
        log(f"resumed from {checkpoint} at step {step}")

    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / CONFIG_FILE).write_text(config.model_dump_json(indent=2) + "\n")
        # which pairs this model learns from (a cross-fitted proxy must never see its fold)
        (out / TRAIN_IDS).write_text("".join(f"{p.id}\n" for p in pairs))
        tracker.log_params(flatten(config.model_dump(mode="json")))
    # a resumed run continues its log; a fresh one starts it (a rerun into the same folder
    # must not append to the last run's lines)
    metrics_log = open(out / "metrics.jsonl", "a" if checkpoint is not None else "w") \
        if accelerator.is_main_process else None
    modules.train()
    step_delay = float(os.environ.get(STEP_DELAY_ENV) or 0)
    started, seen_pairs, window = time.perf_counter(), 0, []
    epoch = start_epoch
    while step < total_steps:
        # set_epoch-like reseeding keeps the order reproducible and resumable per epoch
        generator.manual_seed(config.seed + epoch)
        batches = accelerator.skip_first_batches(loader, skip_batches) if skip_batches else loader
        batch_in_epoch = skip_batches
        skip_batches = 0
        for batch in batches:
            batch_in_epoch += 1
            with accelerator.accumulate(modules):
                # forward: one reward per sequence; chosen first, rejected second
                rewards, proxy_rewards = modules(batch["model"], batch.get("proxy"))
                chosen, rejected = rewards.float().chunk(2)
                mm_loss = bradley_terry_loss(chosen, rejected)            # per pair
                text_loss = None
                if weighting is Weighting.SFC_JOINT:
                    text_loss = bradley_terry_loss(*proxy_rewards.float().chunk(2))
                elif proxy_losses is not None:
                    text_loss = torch.tensor([proxy_losses[i] for i in batch["ids"]],
                                             device=mm_loss.device)
                fixed = None if fixed_weights is None else torch.tensor(
                    [fixed_weights[i] for i in batch["ids"]], device=mm_loss.device)
                weights = pair_weights(weighting, mm_loss, text_loss, eps=config.shortcut.eps,
                                       normalize=config.shortcut.normalize, fixed=fixed)
                loss = (weights * mm_loss).mean()                          # reduce
                if weighting is Weighting.SFC_JOINT:
                    loss = loss + text_loss.mean()      # the proxy learns plain BT, same step
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(modules.parameters(),
                                                config.optim.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            seen_pairs += len(batch["ids"])
            window.append(_batch_stats(loss, mm_loss, chosen, rejected, weights, text_loss))
            if not accelerator.sync_gradients:
                continue
            step += 1
            if step % config.log_steps == 0 or step == total_steps:
                record = _reduce_window(window, step, scheduler)
                window = []
                if metrics_log is not None:      # a tracked output: no wall-clock figures
                    metrics_log.write(json.dumps(record) + "\n")
                    metrics_log.flush()
                rate = seen_pairs / max(1e-9, time.perf_counter() - started)
                tracker.log_metrics({**{k: v for k, v in record.items()
                                        if k not in ("step", "weight/hist")},
                                     "pairs_per_second": rate}, step)
                log(_progress_line(record, total_steps) + f" ({rate:.1f} pairs/s)")
            if step_delay:
                time.sleep(step_delay)
            if config.save_steps and step % config.save_steps == 0:
                save_checkpoint(accelerator, out, step, epoch, batch_in_epoch,
                                config.save_total_limit, config)
            if step >= total_steps:
                break
        epoch += 1

    if metrics_log is not None:
        metrics_log.close()
    seconds = round(time.perf_counter() - started, 2)
    result = {"steps": step, "pairs_seen": seen_pairs}
    if accelerator.is_main_process:
        collator = PairCollator(processor, config.mode, config.data.max_length,
                                share_prompt=core.reward.shares_prompt)
        save_final(core.reward, processor, collator, pairs, config)
        result.update(evaluate_files(core.reward, collator, config))
        tracker.log_metrics({**{k: v for k, v in result.items() if k.startswith("eval/")},
                             "train_seconds": seconds}, step)
        # result.json is an output DVC tracks: the same inputs give the same bytes, so the
        # wall-clock time goes to the tracker and the log only
        (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
        log(f"trained {step} steps in {seconds} s; {json.dumps(result)}")
    return {**result, "seconds": seconds}


def save_final(model: RewardModel, processor, collator: PairCollator, pairs: list,
               config: TrainConfig) -> Path:
    """``output_dir/final``: the reward model with its reward statistics over (up to
    ``calibration_pairs``) training pairs, adapters merged, and the run config beside it."""
    model.eval()
    if config.calibration_pairs:
        model.config.reward_mean, model.config.reward_std = reward_statistics(
            model, collator, pairs[:config.calibration_pairs], config.eval_batch_size)
    model.config.extra = {"weighting": config.shortcut.weighting.value,
                          "train": list(config.data.train)}
    final = Path(config.output_dir) / "final"
    merge_adapters(model).save(final, processor)
    (final / CONFIG_FILE).write_text(config.model_dump_json(indent=2) + "\n")
    return final


def evaluate_files(model: RewardModel, collator: PairCollator, config: TrainConfig
                   ) -> dict[str, float]:
    """``eval/<name>/accuracy`` of the trained model on each ``data.eval`` file."""
    image_root = Path(config.data.image_root) if config.data.image_root else None
    result = {}
    for name, path in config.data.eval.items():
        chosen, rejected = score_pairs(model, collator, load_pairs(path, image_root=image_root),
                                       config.eval_batch_size)
        result[f"eval/{name}/accuracy"] = pairwise_accuracy(chosen, rejected)
    return result


def _batch_stats(loss, mm_loss, chosen, rejected, weights, text_loss) -> dict:
    stats = {"loss": loss.item(), "bt_loss": mm_loss.mean().item(),
             "accuracy": (chosen > rejected).float().mean().item(),
             "margin": (chosen - rejected).mean().item(), "n": len(mm_loss)}
    stats.update(weight_statistics(weights, text_loss))
    if text_loss is not None:
        stats["weight/hist"] = weight_histogram(weights)
        stats["proxy_loss"] = text_loss.mean().item()
    return stats


def _reduce_window(window: list[dict], step: int, scheduler) -> dict:
    total = sum(w["n"] for w in window)
    keys = {k for w in window for k in w if k not in ("n", "weight/hist")}
    record = {"step": step, "lr": scheduler.get_last_lr()[0]}
    for key in sorted(keys):
        values = [(w[key], w["n"]) for w in window if key in w]
        record[key] = sum(v * n for v, n in values) / sum(n for _, n in values)
    record["pairs_in_window"] = total
    if "weight/proxy_wrong_frac" in record:
        # a window with no proxy-wrong (or no proxy-right) pair still logs both names (NaN),
        # so every run of a pipeline carries the same metric names
        for key in ("weight/mean_proxy_wrong", "weight/mean_proxy_right"):
            record.setdefault(key, float("nan"))
    hists = [w["weight/hist"] for w in window if "weight/hist" in w]
    if hists:   # counts add up; kept out of the tracker's scalar metrics
        record["weight/hist"] = [sum(column) for column in zip(*hists)]
    return record


def _progress_line(record: dict, total_steps: int) -> str:
    text = (f"step {record['step']}/{total_steps} loss {record['loss']:.4f} "
            f"acc {record['accuracy']:.3f} lr {record['lr']:.2e}")
    if "weight/mean_proxy_wrong" in record or "weight/mean_proxy_right" in record:
        text += (f" w {record['weight/mean']:.3f} (proxy wrong "
                 f"{record.get('weight/mean_proxy_wrong', float('nan')):.3f} / right "
                 f"{record.get('weight/mean_proxy_right', float('nan')):.3f})")
    return text


def save_checkpoint(accelerator, out: Path, step: int, epoch: int, batch_in_epoch: int,
                    limit: int, config: TrainConfig | None = None) -> Path:
    """Model, optimizer, scheduler and RNG states (accelerate), the data position and the run
    config."""
    path = out / f"checkpoint-{step}"
    accelerator.save_state(str(path))
    if accelerator.is_main_process:
        if config is not None:
            (path / CONFIG_FILE).write_text(config.model_dump_json(indent=2) + "\n")
        # the state file marks the checkpoint complete: written whole or not at all (a kill
        # between creating and filling it left an empty marker that resume could not read)
        tmp = path / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(
            {"step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch}) + "\n")
        os.replace(tmp, path / STATE_FILE)
        for old in sorted(out.glob("checkpoint-*"), key=_checkpoint_step)[:-limit]:
            shutil.rmtree(old)
    return path


def latest_checkpoint(out: Path) -> Path | None:
    done = [p for p in out.glob("checkpoint-*") if (p / STATE_FILE).exists()]
    return max(done, key=_checkpoint_step) if done else None


def _checkpoint_step(path: Path) -> int:
    return int(path.name.split("-")[1])


def proxy_config(config: TrainConfig, fold: int | None = None) -> TrainConfig:
    """The text-only proxy's run: same data, model and schedule, no image, no weighting;
    with ``fold``, trained on every fold of ``shortcut.proxy_folds`` but that one."""
    changes = {"mode": config.shortcut.proxy_mode.value, "shortcut": {"weighting": "none"},
               "output_dir": str(Path(config.output_dir) / "proxy")}
    if fold is not None:
        changes.update({"output_dir": str(Path(config.output_dir) / "proxy" / f"fold{fold}"),
                        "data.folds": config.shortcut.proxy_folds, "data.holdout_fold": fold})
    return with_overrides(config, changes, "proxy")


def proxy_dirs(config: TrainConfig) -> list[Path]:
    """The saved proxies of :func:`train_text_proxy` (one per fold)."""
    folds = config.shortcut.proxy_folds
    return [Path(proxy_config(config, f if folds > 1 else None).output_dir) / "final"
            for f in range(folds)]


def train_text_proxy(config: TrainConfig, tracker: Tracker | None = None, log=print) -> dict:
    """Stage 1 of ``sfc_two_stage``: train the text-only proxy, then cache its per-pair losses.

    With ``shortcut.proxy_folds = k > 1`` (default 2) the pairs are cut into k folds
    (:func:`mmrm.data.fold_of`), k proxies each train on all folds but one, and each pair's
    loss comes from the proxy that never saw it: out of sample, as the paper's jointly
    trained proxy's loss is on a pair it meets for the first time. With k = 1 one proxy
    trains on everything and is scored on its own training pairs (memorised cue-wrong pairs
    then look easy and lose their weight).

    The cache goes to ``shortcut.proxy_losses`` if set, else ``<output_dir>/proxy_losses.json``:
    ``losses`` (pair id -> BT loss), ``source`` (pair id -> the fold whose proxy scored it),
    ``accuracy_in_sample`` (each proxy on its own training pairs), ``accuracy_out_of_sample``
    (on the pairs it never saw; k > 1 only) and ``accuracy`` (the one the losses carry).
    """
    folds = config.shortcut.proxy_folds
    root = Path(config.data.image_root) if config.data.image_root else None
    pairs = [p for path in config.data.train for p in load_pairs(path, image_root=root)]
    fold = {p.id: (fold_of(p.id, folds) if folds > 1 else 0) for p in pairs}
    losses, wins_in, wins_out = {}, [], []
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
                if folds > 1:
                    wins_out.append(win)

    def mean(wins: list[float]) -> float:
        return sum(wins) / len(wins) if wins else float("nan")

    cache = {"proxies": [str(d) for d in proxy_dirs(config)],
             "mode": config.shortcut.proxy_mode.value, "folds": folds,
             "accuracy_in_sample": mean(wins_in),
             "accuracy_out_of_sample": mean(wins_out) if folds > 1 else None,
             "accuracy": mean(wins_out) if folds > 1 else mean(wins_in),
             "source": fold, "losses": losses}
    out = Path(config.shortcut.proxy_losses or Path(config.output_dir) / "proxy_losses.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(cache) + "\n")
    log(f"proxy accuracy in sample {cache['accuracy_in_sample']:.4f}, out of sample "
        f"{cache['accuracy_out_of_sample'] if folds > 1 else 'n/a'}")
    return cache
