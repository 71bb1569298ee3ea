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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from mmrm.config import ProxySource, TrainConfig, Weighting, flatten
from mmrm.data import (PairCollator, load_pairs, pairs_with_unknown_tokens, select_folds,
                       unknown_tokens_note)
from mmrm.evaluate.metrics import pairwise_accuracy
from mmrm.finetune import apply_finetune, merge_adapters
from mmrm.inference import load_reward_model, reward_statistics, score_pairs
from mmrm.model import RewardModel, load_processor, weight_dtype_named
from mmrm.outputs import write_atomic
from mmrm.tracking.tracker import NoOpTracker, Tracker
from mmrm.weighting import PairTerms, PairWeighting, weight_histogram, weight_statistics

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


def load_proxy_cache(path: str | Path, pairs) -> dict:
    """The cross-fitted proxies' cache (:func:`mmrm.proxy.train_text_proxy`): ``losses`` (and
    ``margins``, where the cache has them) by pair id, one for every training pair."""
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
    # a BT loss is finite and >= 0; a margin finite (NaN or -50 would train a NaN model, or
    # weigh pairs by -5e13)
    bad = next(((k, v) for k, v in losses.items() if not math.isfinite(v) or v < 0), None)
    margins = cache.get("margins") if isinstance(cache.get("margins"), dict) else {}
    bad = bad or next(((k, v) for k, v in margins.items()
                       if not isinstance(v, (int, float)) or not math.isfinite(v)), None)
    if bad:
        raise ValueError(f"shortcut.proxy_losses: {path}: pair {bad[0]!r}: {bad[1]!r} is not "
                         f"a finite loss >= 0 (or a finite margin): rerun mmrm train-proxy")
    missing = [p.id for p in pairs if p.id not in losses]
    if missing:
        raise ValueError(f"{path}: no proxy loss for {len(missing)} training pairs "
                         f"(e.g. {missing[:3]}); was the proxy run on the same data?")
    found = {"losses": losses}
    if margins:
        found["margins"] = margins
    return found


def pairs_digest(pairs) -> str:
    """A digest of training pairs' contents (ids, texts, images): a cache made on other
    pairs under the same ids is not reused."""
    import hashlib

    h = hashlib.sha256()
    for p in pairs:
        h.update(json.dumps([p.id, p.prompt, p.chosen, p.rejected, p.img_path]).encode())
    return h.hexdigest()


def teacher_margins(config: TrainConfig, pairs, log=print) -> dict[str, float]:
    """conf_reg's teacher margins (chosen minus rejected reward of ``shortcut.teacher``) on
    the training pairs, cached at ``shortcut.teacher_margins`` like the proxies' margins:
    reused when the cache was made by the same teacher (its digest) on the same pairs,
    made again otherwise."""
    from mmrm.model import model_digest

    teacher, path = Path(config.shortcut.teacher), Path(config.shortcut.teacher_margins)
    identity = {"teacher": str(teacher), "teacher_digest": model_digest(teacher),
                "pairs_digest": pairs_digest(pairs)}
    try:
        cached = json.loads(path.read_text())
        if {k: cached.get(k) for k in identity} == identity:
            return cached["margins"]
    except (OSError, ValueError, KeyError):
        pass
    log(f"teacher margins: scoring {len(pairs)} training pairs with {teacher}")
    model, collator = load_reward_model(teacher, max_length=config.data.max_length)
    chosen, rejected = score_pairs(model, collator, pairs, config.eval_batch_size)
    margins = {p.id: round(float(c - r), 6) for p, c, r in zip(pairs, chosen, rejected)}
    bad = next((k for k, v in margins.items() if not math.isfinite(v)), None)
    if bad is not None:
        raise ValueError(f"shortcut.teacher: {teacher}: margin of pair {bad!r} is "
                         f"{margins[bad]}: the teacher is broken")
    write_atomic(path, json.dumps({**identity, "margins": margins}) + "\n")
    return margins


def training_inputs(config: TrainConfig) -> tuple[list, dict | None]:
    """Every input of a run, checked before a model is loaded: the training pairs (each
    record validated, ``file:line: field: problem``), the evaluation files and base model
    folder (they exist), the cross-fitted proxies' cache (one entry per pair) and a
    conf_reg teacher's folder.

    Returns the training pairs (after fold selection) and the proxy cache, if any.
    """
    from mmrm.model import check_model_folder
    from mmrm.outputs import refuse_nesting

    check_model_folder(config.model)
    # the output folder may not be, hold or lie in what the run reads (a fine-tune into
    # the folder of its own starting model would overwrite it)
    refuse_nesting({"model": config.model, "shortcut.teacher": config.shortcut.teacher,
                    **{f"data.train[{k}]": Path(p).parent for k, p in
                       enumerate(config.data.train)},
                    **({"data.image_root": config.data.image_root}
                       if config.data.image_root else {})},
                   Path(config.output_dir), "output_dir")
    if config.shortcut.teacher:
        from mmrm.model import check_reward_model

        try:
            check_reward_model(config.shortcut.teacher)
        except ValueError as err:
            raise ValueError(f"shortcut.teacher: {err}") from None
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
    # cross_fit weighs by the cached proxy losses; a standard run given them logs the same
    # proxy statistics (its weights stay 1), so the two compare metric for metric
    cache = load_proxy_cache(config.shortcut.proxy_losses, pairs) \
        if config.shortcut.proxy_losses and config.shortcut.proxy is not ProxySource.JOINT \
        else None
    return pairs, cache


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


class NonFiniteLoss(ValueError):
    """Training produced a NaN or infinite loss: the run stops before saving a final model."""


@dataclass
class Recipe:
    """Everything one training run holds: built by :func:`setup`, advanced by
    :func:`train_step`, closed by :func:`finish` (the shape of torchtune's recipes)."""

    config: TrainConfig
    tracker: Tracker
    log: Callable[[str], None]
    accelerator: Any
    processor: Any
    pairs: list
    weighting: PairWeighting
    modules: nn.Module
    core: TrainedModels
    optimizer: Any
    scheduler: Any
    loader: DataLoader
    generator: torch.Generator
    total_steps: int
    step: int = 0
    epoch: int = 0
    skip_batches: int = 0
    resumed: bool = False
    seen_pairs: int = 0
    window: list = field(default_factory=list)
    metrics_log: Any = None
    started: float = field(default_factory=time.perf_counter)
    step_delay: float = 0.0
    data_digest: str = ""
    lock: Any = None

    @property
    def out(self) -> Path:
        return Path(self.config.output_dir)


def train(config: TrainConfig, tracker: Tracker | None = None, log=print,
          resume: bool = True) -> dict:
    """Train one reward model; returns the final metrics (also in ``output_dir``).

    Reading order: :func:`setup` (inputs checked, models, data, optimizer, resume), then per
    batch :func:`train_step` (forward -> per-pair terms from the pair weighting -> reduce ->
    step -> log -> checkpoint), then :func:`finish` (save, test, result).

    Args:
        config: the validated run configuration.
        tracker: where metrics go (no-op by default).
        log: progress lines go here.
        resume: continue from the newest checkpoint in ``output_dir`` if there is one.

    Raises:
        ValueError: bad input, or another mmrm process training into ``output_dir``.
    """
    with output_lock(config):
        run = setup(config, tracker or NoOpTracker(), log, resume)
        while run.step < run.total_steps:
            # set_epoch-like reseeding keeps the order reproducible and resumable per epoch
            run.generator.manual_seed(config.seed + run.epoch)
            batches = run.accelerator.skip_first_batches(run.loader, run.skip_batches) \
                if run.skip_batches else run.loader
            batch_in_epoch, run.skip_batches = run.skip_batches, 0
            for batch in batches:
                batch_in_epoch += 1
                if train_step(run, batch, batch_in_epoch):
                    break
            run.epoch += 1
        return finish(run)


def output_lock(config: TrainConfig):
    """The run's lock on its output folder, like every other writer's
    (:func:`mmrm.outputs.exclusive`); taken by the first process of a distributed run only
    (its other processes write their parts of the same checkpoints)."""
    from contextlib import nullcontext

    from mmrm.outputs import exclusive

    if int(os.environ.get("RANK", "0")) != 0:
        return nullcontext()
    return exclusive(Path(config.output_dir), f"a training run into {config.output_dir}")


def setup(config: TrainConfig, tracker: Tracker, log, resume: bool) -> Recipe:
    """Check every input, then build the models, the data loader and the optimizer, and
    continue from the newest checkpoint where asked."""
    from accelerate import Accelerator

    pairs, cache = training_inputs(config)     # bad input fails here, not mid-run
    checkpoint = resumable_checkpoint(config) if resume else None
    teacher = teacher_margins(config, pairs, log) \
        if config.shortcut.weighting is Weighting.CONF_REG else None
    weighting = PairWeighting(config.shortcut.weighting, cache, [p.id for p in pairs],
                              eps=config.shortcut.eps, normalize=config.shortcut.normalize,
                              teacher=teacher)
    accelerator = Accelerator(mixed_precision=config.mixed_precision,
                              gradient_accumulation_steps=config.gradient_accumulation_steps)
    set_seed(config.seed)
    processor = load_processor(config.model, config.trust_remote_code)
    unknown = pairs_with_unknown_tokens(processor, pairs)
    note = unknown_tokens_note("data.train", len(pairs), len(unknown), *unknown[:1])
    if note:
        log(note)
    modules, collator = build_models(config, accelerator, processor, len(pairs))
    generator = torch.Generator().manual_seed(config.seed)
    # persistent workers keep their encoding caches from one epoch to the next
    loader = DataLoader(pairs, batch_size=config.per_device_batch_size, shuffle=True,
                        generator=generator, collate_fn=collator, drop_last=False,
                        num_workers=config.dataloader_num_workers,
                        persistent_workers=config.dataloader_num_workers > 0)
    total_steps = planned_steps(config, len(pairs))[1]
    optimizer, scheduler = build_optimizer(modules, config, total_steps)
    modules, optimizer, loader, scheduler = accelerator.prepare(modules, optimizer, loader,
                                                                scheduler)
    run = Recipe(config, tracker, log, accelerator, processor, pairs, weighting, modules,
                 accelerator.unwrap_model(modules), optimizer, scheduler, loader, generator,
                 total_steps, step_delay=float(os.environ.get(STEP_DELAY_ENV) or 0),
                 data_digest=pairs_digest(pairs))
    if checkpoint is not None:
        restore(run, checkpoint)
    open_run_folder(run)
    modules.train()
    return run


def build_models(config: TrainConfig, accelerator, processor, pairs: int
                 ) -> tuple[TrainedModels, TrainCollator]:
    """The reward model (and, for a joint proxy, the proxy) with what trains of them, and the
    collator of their views of a batch."""
    dtype = weight_dtype(config.mixed_precision, accelerator.distributed_type)

    def model(mode: str) -> RewardModel:
        return apply_finetune(RewardModel.from_base(
            config.model, mode=mode, dtype=dtype, trust_remote_code=config.trust_remote_code,
            attn_implementation=config.attn_implementation), config)

    reward_model = model(config.mode.value)
    proxy, proxy_view = None, None
    cache_mib = encode_cache_budget(config, pairs)
    if config.shortcut.proxy is ProxySource.JOINT:
        proxy = model(config.shortcut.proxy_mode.value)
        proxy_view = PairCollator(processor, config.shortcut.proxy_mode, config.data.max_length,
                                  share_prompt=shares_prompt(config, proxy),
                                  cache_mib=cache_mib)
    collator = TrainCollator(PairCollator(processor, config.mode, config.data.max_length,
                                          share_prompt=shares_prompt(config, reward_model),
                                          cache_mib=cache_mib),
                             proxy_view)
    return TrainedModels(reward_model, proxy), collator


#: Run-config keys a resumed run may change (how long, how often to log and save, what to
#: test at the end); any other difference from the checkpoint's config is refused.
RESUMABLE_CHANGES = ("max_steps", "epochs", "save_steps", "save_total_limit", "log_steps",
                     "dataloader_num_workers", "eval_batch_size", "calibration_pairs",
                     "encode_cache_mib", "data.eval")


def config_changes(saved: dict, config: TrainConfig) -> list[str]:
    """The keys where ``config`` differs from a checkpoint's saved config, less those a
    resumed run may change: ``key: saved -> now``."""
    now = flatten(config.model_dump(mode="json"))
    before = flatten(saved)
    return [f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(now) | set(before))
            if before.get(k) != now.get(k) and not any(k == r or k.startswith(r + ".")
                                                       for r in RESUMABLE_CHANGES)]


def resumable_checkpoint(config: TrainConfig) -> Path | None:
    """The newest complete checkpoint in ``output_dir``, if there is one, provided it was made
    with this config (less :data:`RESUMABLE_CHANGES`); one made otherwise is refused with the
    keys that differ."""
    out = Path(config.output_dir)
    checkpoint = latest_checkpoint(out)
    if checkpoint is None:
        return None
    saved = checkpoint / CONFIG_FILE
    changes = config_changes(json.loads(saved.read_text()), config) if saved.exists() \
        else ["(the checkpoint has no train_config.json)"]
    if changes:
        more = "; ..." if len(changes) > 6 else ""
        raise ValueError(f"{out}: its checkpoint {checkpoint.name} was made with another "
                         f"config ({'; '.join(changes[:6])}{more}): give another output_dir, "
                         f"or --no-resume to start over there")
    return checkpoint


def restore(run: Recipe, checkpoint: Path) -> None:
    """Continue from ``checkpoint`` (:func:`resumable_checkpoint`), provided it was made on
    these very training pairs (their digest, recorded in it)."""
    state = json.loads((checkpoint / STATE_FILE).read_text())
    if state.get("data_digest") not in (None, run.data_digest):
        raise ValueError(f"{checkpoint}: made on other training pairs than "
                         f"{run.config.data.train} hold now (their digest differs): refused; "
                         f"--no-resume to start over, or restore the data")
    run.accelerator.load_state(str(checkpoint))
    run.step, run.epoch, run.skip_batches = state["step"], state["epoch"], state["batch_in_epoch"]
    run.resumed = True
    run.log(f"resumed from {checkpoint} at step {run.step}")


def open_run_folder(run: Recipe) -> None:
    """The run config, the training pair ids and the metrics log (main process only)."""
    if not run.accelerator.is_main_process:
        return
    out = run.out
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / CONFIG_FILE, run.config.model_dump_json(indent=2) + "\n")
    # which pairs this model learns from (a cross-fitted proxy must never see its fold)
    write_atomic(out / TRAIN_IDS, "".join(f"{p.id}\n" for p in run.pairs))
    run.tracker.log_params(flatten(run.config.model_dump(mode="json")))
    # a resumed run continues its log; a fresh one starts it (a rerun into the same folder
    # must not append to the last run's lines)
    run.metrics_log = open(out / "metrics.jsonl", "a" if run.resumed else "w")


def train_step(run: Recipe, batch: dict, batch_in_epoch: int) -> bool:
    """One micro-batch: forward, per-pair terms, reduce, backward and (at the end of an
    accumulation) the optimizer step, its log line and checkpoint. True when the run is done."""
    accelerator, modules = run.accelerator, run.modules
    with accelerator.accumulate(modules):
        # forward: one reward per sequence; chosen first, rejected second
        rewards, proxy_rewards = modules(batch["model"], batch.get("proxy"))
        chosen, rejected = rewards.float().chunk(2)
        terms = run.weighting(chosen, rejected, batch["ids"],
                              None if proxy_rewards is None else proxy_rewards.float().chunk(2))
        loss = (terms.weights * terms.losses).mean()                  # reduce
        if terms.proxy_loss is not None:
            loss = loss + terms.proxy_loss.mean()     # the proxy learns plain BT, same step
        if not torch.isfinite(loss):
            raise NonFiniteLoss(f"the loss became {loss.item()} at step {run.step + 1} "
                                f"(optim.lr {run.config.optim.lr}): the run stops, nothing "
                                f"is saved as final (checkpoints before it are kept)")
        accelerator.backward(loss)
        if accelerator.sync_gradients:
            accelerator.clip_grad_norm_(modules.parameters(), run.config.optim.max_grad_norm)
        run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
    run.seen_pairs += len(batch["ids"])
    run.window.append(_batch_stats(loss, terms, chosen, rejected))
    if not accelerator.sync_gradients:
        return False
    run.step += 1
    if run.step % run.config.log_steps == 0 or run.step == run.total_steps:
        log_window(run)
    if run.step_delay:
        time.sleep(run.step_delay)
    if run.config.save_steps and run.step % run.config.save_steps == 0:
        save_checkpoint(accelerator, run.out, run.step, run.epoch, batch_in_epoch,
                        run.config.save_total_limit, run.config, run.data_digest)
    return run.step >= run.total_steps


def log_window(run: Recipe) -> None:
    """The steps since the last log line, reduced: to metrics.jsonl, the tracker and ``log``."""
    record = _reduce_window(run.window, run.step, run.scheduler)
    run.window = []
    if run.metrics_log is not None:      # a tracked output: no wall-clock figures
        run.metrics_log.write(json.dumps(record) + "\n")
        run.metrics_log.flush()
    rate = run.seen_pairs / max(1e-9, time.perf_counter() - run.started)
    run.tracker.log_metrics({**{k: v for k, v in record.items()
                                if k not in ("step", "weight/hist")},
                             "pairs_per_second": rate}, run.step)
    run.log(_progress_line(record, run.total_steps) + f" ({rate:.1f} pairs/s)")


def finish(run: Recipe) -> dict:
    """Save the final model with its reward statistics, test it on ``data.eval``, write
    ``result.json``."""
    if run.metrics_log is not None:
        run.metrics_log.close()
    seconds = round(time.perf_counter() - run.started, 2)
    result = {"steps": run.step, "pairs_seen": run.seen_pairs}
    if run.accelerator.is_main_process:
        config = run.config
        collator = PairCollator(run.processor, config.mode, config.data.max_length,
                                share_prompt=run.core.reward.shares_prompt)
        save_final(run.core.reward, run.processor, collator, run.pairs, config)
        result.update(evaluate_files(run.core.reward, collator, config))
        run.tracker.log_metrics({**{k: v for k, v in result.items() if k.startswith("eval/")},
                                 "train_seconds": seconds}, run.step)
        # result.json is an output DVC tracks: the same inputs give the same bytes, so the
        # wall-clock time goes to the tracker and the log only
        write_atomic(run.out / "result.json", json.dumps(result, indent=2) + "\n")
        run.log(f"trained {run.step} steps in {seconds} s; {json.dumps(result)}")
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
    merge_adapters(model).save(final, processor,
                               {CONFIG_FILE: config.model_dump_json(indent=2) + "\n"})
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


def _batch_stats(loss, terms: PairTerms, chosen, rejected) -> dict:
    stats = {"loss": loss.item(), "bt_loss": terms.bt_loss.mean().item(),
             "accuracy": (chosen > rejected).float().mean().item(),
             "margin": (chosen - rejected).mean().item(), "n": len(terms.bt_loss)}
    # the effective weights: the weights, or a changed loss's share of the BT gradient
    stats.update(weight_statistics(terms.effective, terms.text_loss))
    if terms.text_loss is not None:
        stats["weight/hist"] = weight_histogram(terms.effective)
        stats["proxy_loss"] = terms.text_loss.mean().item()
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
                    limit: int, config: TrainConfig | None = None,
                    data_digest: str | None = None) -> Path:
    """Model, optimizer, scheduler and RNG states (accelerate), the data position, the run
    config and the training data's digest: written into a staging folder (every process its
    part) and renamed into ``checkpoint-<step>`` whole, the state file last inside it, so a
    kill or a full disk leaves either the whole checkpoint or none."""
    path = out / f"checkpoint-{step}"
    staging = out / f".checkpoint-{step}.mmrm-staging"
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if config is not None:
            (staging / CONFIG_FILE).write_text(config.model_dump_json(indent=2) + "\n")
        # the state file marks the checkpoint complete: written last
        (staging / STATE_FILE).write_text(json.dumps(
            {"step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
             "data_digest": data_digest}) + "\n")
        if path.exists():
            shutil.rmtree(path)
        os.replace(staging, path)
        for old in sorted(out.glob("checkpoint-*"), key=_checkpoint_step)[:-limit]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return path


def latest_checkpoint(out: Path) -> Path | None:
    done = [p for p in out.glob("checkpoint-*") if (p / STATE_FILE).exists()]
    return max(done, key=_checkpoint_step) if done else None


def _checkpoint_step(path: Path) -> int:
    return int(path.name.split("-")[1])
