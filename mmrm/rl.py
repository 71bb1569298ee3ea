"""RL against a reward model: a policy trained with GRPO (TRL's ``GRPOTrainer``) whose
rewards come from a running ``mmrm serve`` through its client, on prompts of a built-in
environment whose images are known exactly, so the gold quality of every completion is
computable and a policy that learns to write the RM's text shortcut instead of reading the
image shows it.

Reading order of :func:`run_rl`: the prompts (:func:`mmrm.synthetic.environments.rl_prompts`,
cached), the policy (:func:`train_policy`: the base fine-tuned with next-token loss on the
environment's answers, chosen and rejected alike, so it writes cues sometimes and correct
attributes sometimes; cached by its settings), the server (started by the caller,
:func:`served`), then GRPO, every ``log_every`` steps its measures: mean RM reward, gold
accuracy, the share of completions carrying each known cue, length (:class:`Measured`).

Needs the ``[rl]`` extra (TRL). ``mmrm rl tiny`` runs it on the built-in default.
"""

from __future__ import annotations

import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import Field

from mmrm.cluster import stop_process_group
from mmrm.config import Strict, flatten
from mmrm.outputs import write_atomic
from mmrm.tracking.tracker import NoOpTracker, Tracker


class RLConfig(Strict):
    """One RL run: a policy, a reward model, an environment's prompts, GRPO's settings."""

    base: str = Field(description="The VLM folder the policy is fine-tuned from (the tiny "
                      "base), or a policy folder where sft_steps is 0.")
    reward_model: str = Field(description="The saved reward model the server scores with.")
    sft_pairs: str | None = Field(None, description="Pairwise JSONL whose answers (chosen and "
                                  "rejected alike) the policy is fine-tuned on.")
    env: str = Field("povid", description="The built-in environment the prompts come from.")
    visual: str = Field("V1", description="Visual-cost level of the prompts' scenes (the "
                        "base's).")
    image_size: int = Field(56, ge=16)
    prompts: int = Field(512, gt=0, description="RL prompts (made from data_seed).")
    data_seed: int = Field(0, description="Seed of the prompts.")
    seed: int = Field(0, description="Seed of the policy's fine-tuning and of GRPO.")
    sft_steps: int = Field(300, ge=0, description="Fine-tuning steps of the policy (0: "
                           "`base` is the policy).")
    sft_batch: int = Field(16, gt=0)
    sft_lr: float = Field(1e-3, gt=0)
    steps: int = Field(200, gt=0, description="GRPO steps.")
    group: int = Field(8, ge=2, description="Completions per prompt (G).")
    prompts_per_step: int = Field(4, gt=0, description="Prompts per step (a step scores "
                                  "prompts_per_step x group completions).")
    lr: float = Field(1e-4, gt=0, description="GRPO learning rate.")
    beta: float = Field(0.0, ge=0, description="KL coefficient to the starting policy.")
    temperature: float = Field(1.0, gt=0)
    max_completion_length: int = Field(32, gt=0, description="Tokens per completion.")
    log_every: int = Field(10, gt=0, description="Steps per measure window.")
    output_dir: str = Field("runs/rl", description="Measures, the policy cache, the "
                            "prompts.")
    cache_dir: str | None = Field(None, description="Where prompts and policies are cached "
                                  "(shared by runs of other reward models; default "
                                  "output_dir/cache).")
    port: int = Field(0, ge=0, le=65535, description="The server's port (0: a free one).")


# ---------------------------------------------------------------------------- the data
def prompts_file(config: RLConfig) -> Path:
    """The RL prompts of ``config.env`` (and their images), made once per settings."""
    from mmrm.synthetic.environments import rl_prompts, write_rl_prompts
    from mmrm.synthetic.visual import visual_level

    key = f"{config.env}-{config.visual}-n{config.prompts}-s{config.data_seed}-" \
          f"i{config.image_size}"
    path = cache(config) / "prompts" / key / "prompts.jsonl"
    if not path.is_file():
        items = rl_prompts(config.env, config.prompts,
                           random.Random(f"{config.data_seed}/{config.env}/rl"),
                           visual_level(config.visual))
        write_rl_prompts(config.env, items, path, config.image_size)
    return path


def cache(config: RLConfig) -> Path:
    return Path(config.cache_dir or Path(config.output_dir) / "cache")


# ---------------------------------------------------------------------------- the policy
def train_policy(config: RLConfig, log=print) -> Path:
    """The policy: ``config.base`` fine-tuned with next-token loss on the answers of
    ``config.sft_pairs`` (chosen and rejected alike) with TRL's ``SFTTrainer``; cached by
    its settings (runs against other reward models start from the same policy)."""
    if not config.sft_steps:
        return Path(config.base)
    import hashlib

    settings = {k: getattr(config, k) for k in ("base", "sft_pairs", "sft_steps", "sft_batch",
                                                 "sft_lr", "seed")}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    out = cache(config) / "policies" / key
    if (out / "policy.json").is_file():
        return out
    if not config.sft_pairs:
        raise ValueError("sft_pairs: the pairs whose answers the policy learns (or sft_steps: "
                         "0 with a policy as base)")
    from datasets import Dataset
    from transformers import AutoModelForImageTextToText
    from trl import SFTConfig, SFTTrainer

    from mmrm.data import load_image, load_pairs
    from mmrm.model import load_processor

    rows = []
    for pair in load_pairs(config.sft_pairs):
        image = load_image(pair.image_file)
        for answer in (pair.chosen, pair.rejected):
            rows.append({"prompt": user_turn(pair.prompt),
                         "completion": [{"role": "assistant",
                                         "content": [{"type": "text", "text": answer}]}],
                         "images": [image]})
    log(f"policy: fine-tuning {config.base} on {len(rows)} answers of {config.sft_pairs}")
    processor = load_processor(config.base)
    model = AutoModelForImageTextToText.from_pretrained(config.base, local_files_only=True)
    args = SFTConfig(output_dir=str(out / "trainer"), max_steps=config.sft_steps,
                     per_device_train_batch_size=config.sft_batch,
                     learning_rate=config.sft_lr, seed=config.seed, logging_steps=50,
                     save_strategy="no", report_to=[], use_cpu=not _cuda(), bf16=False,
                     max_length=None, dataloader_num_workers=0)
    SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
               processing_class=processor).train()
    model.save_pretrained(out)
    processor.save_pretrained(out)
    write_atomic(out / "policy.json", json.dumps(settings, indent=2) + "\n")
    return out


def user_turn(prompt: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# ---------------------------------------------------------------------------- the server
class served:
    """``mmrm serve`` for the run, in its own process group, on 127.0.0.1 (a free port
    unless given; the client sends every prompt's image); stopped by its pid when the block
    ends (SIGTERM, then the group)."""

    def __init__(self, model: str, port: int = 0, log=print):
        self.model, self.log = model, log
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> served:
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mmrm", "serve", str(self.model), "--port", str(self.port)],
            env=env, start_new_session=True, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 300
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise ValueError(f"mmrm serve {self.model} exited with {self.proc.returncode}: "
                                 f"{self.proc.stderr.read()[-1500:]}")
            if _ready(self.url):
                self.log(f"reward server {self.url} ({self.model}), pid {self.proc.pid}")
                return self
            time.sleep(1)
        self.__exit__(None, None, None)
        raise ValueError(f"mmrm serve {self.model} was not ready in 300 s")

    def __exit__(self, *exc) -> None:
        stop_process_group(self.proc)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ready(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


# ---------------------------------------------------------------------------- measures
class Measured:
    """The GRPO reward function: rewards from the server (grouped: a prompt's completions
    as one item, its image sent once), and, of every completion, its gold correctness, the
    cues it carries and its length, reported every ``log_every`` steps
    (``rl/reward``, ``rl/gold``, ``rl/cue/<cue>``, ``rl/length``)."""

    __name__ = "mmrm_reward"

    def __init__(self, url: str, config: RLConfig, tracker: Tracker, log: Callable,
                 measures_path: Path):
        from mmrm.serve.client import MmrmReward

        self.rm = MmrmReward(url)
        self.config, self.tracker, self.log = config, tracker, log
        self.path = measures_path
        self.window: list[dict] = []
        self.calls = 0

    def __call__(self, prompts, completions, **columns) -> list[float]:
        from mmrm.serve.client import text_of
        from mmrm.synthetic.environments import gold_correct, scene_of

        rewards = self.rm(prompts, completions, image=columns.get("image"))
        texts = [text_of(c) for c in completions]
        for k, text in enumerate(texts):
            record = json.loads(columns["record"][k])
            self.window.append({"reward": rewards[k], "text": text, "gold": gold_correct(
                scene_of(record), text, record.get("attribute"))})
        self.calls += 1
        if self.calls % self.config.log_every == 0:
            self.flush()
        return rewards

    def flush(self) -> None:
        from mmrm.synthetic.environments import cue_shares

        if not self.window:
            return
        texts = [w["text"] for w in self.window]
        measures = {"rl/reward": statistics.fmean(w["reward"] for w in self.window),
                    "rl/gold": statistics.fmean(w["gold"] for w in self.window),
                    "rl/length": statistics.fmean(len(t.split()) for t in texts),
                    **{f"rl/cue/{c}": v for c, v in cue_shares(texts).items()}}
        self.tracker.log_metrics(measures, self.calls)
        with open(self.path, "a") as handle:          # a log, appended window by window
            handle.write(json.dumps({"step": self.calls, **measures,
                                     "example": texts[0]}) + "\n")
        self.log(f"step {self.calls}: reward {measures['rl/reward']:.3f} gold "
                 f"{measures['rl/gold']:.3f} own cue "
                 f"{measures.get('rl/cue/sure', float('nan')):.2f} length "
                 f"{measures['rl/length']:.1f}")
        self.window = []


# ---------------------------------------------------------------------------- the run
def run_rl(config: RLConfig, url: str, tracker: Tracker | None = None, log=print) -> dict:
    """GRPO of the policy against the reward server at ``url``; the measures of every
    window in ``output_dir/measures.jsonl`` and the last window's as the result."""
    from datasets import Dataset
    from PIL import Image
    from transformers import AutoModelForImageTextToText
    from trl import GRPOConfig, GRPOTrainer

    from mmrm.model import load_processor

    tracker = tracker or NoOpTracker()
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    measures = out / "measures.jsonl"
    measures.unlink(missing_ok=True)
    prompts = prompts_file(config)
    policy = train_policy(config, log)
    tracker.log_params(flatten(config.model_dump(mode="json")))
    rows = [json.loads(line) for line in prompts.read_text().splitlines()]
    dataset = Dataset.from_list([{"prompt": user_turn(r["prompt"]), "record": json.dumps(r),
                                  "image": Image.open(prompts.parent / r["img_path"]).convert(
                                      "RGB")} for r in rows])
    processor = load_processor(policy)
    model = AutoModelForImageTextToText.from_pretrained(str(policy), local_files_only=True)
    # a completion ends where the chat template closes a turn (the tiny base's <|end|>)
    end = processor.tokenizer.get_vocab().get("<|end|>")
    model.generation_config.eos_token_id = [t for t in (end, processor.tokenizer.eos_token_id)
                                            if isinstance(t, int)]
    args = GRPOConfig(output_dir=str(out / "trainer"), max_steps=config.steps,
                      per_device_train_batch_size=config.prompts_per_step * config.group,
                      num_generations=config.group, learning_rate=config.lr,
                      beta=config.beta, temperature=config.temperature,
                      max_completion_length=config.max_completion_length, seed=config.seed,
                      logging_steps=config.log_every, save_strategy="no", report_to=[],
                      use_cpu=not _cuda(), bf16=False)
    reward = Measured(url, config, tracker, log, measures)
    started = time.perf_counter()
    GRPOTrainer(model=model, reward_funcs=[reward], args=args, train_dataset=dataset,
                processing_class=processor).train()
    reward.flush()
    windows = [json.loads(line) for line in measures.read_text().splitlines()]
    result = {"seconds": round(time.perf_counter() - started, 1), "windows": len(windows),
              "first": windows[0], "last": windows[-1]}
    write_atomic(out / "result.json", json.dumps(result, indent=2) + "\n")
    return result
