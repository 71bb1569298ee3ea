"""GPU check: training and scoring of a ~1B LLaVA-style VLM in bf16 on one GPU, in one command.

What it measures (a table on stdout, ``gpu_check.json`` under ``$OUT`` or ``--out``):

* **training** (each run in its own child process, so peak memory is its own): pairs/s and
  peak GPU memory of ``none``, ``sfc_joint`` and ``sfc_two_stage`` (its proxy stage counted),
  each with and without the shared prompt, and ``none`` through accelerate + DeepSpeed ZeRO-2
  where DeepSpeed imports (else the row says so). Model FLOPs utilisation is estimated as

      MFU = 6 * N * tokens_per_second / peak_flops

  with N the trained model's parameter count, tokens the tokens the forward actually runs
  per pair (whole sequences: 2 * (prompt + response); shared prompt: prompt + 2 * response;
  image tokens counted in the prompt; sfc_joint adds its text-only proxy's tokens with its
  own N) and ``--peak-tflops`` (H200 dense bf16: 989). The 6 is the usual forward + backward
  count (Kaplan et al., 2020); frozen or not, every weight is counted.
* **scoring**: responses/s of a naive per-response loop and of mmrm's in-process scorer
  (image once per item, prompt's key/value cache shared) at ``--responses`` per prompt.
* **correctness**: shared-prompt rewards equal whole-sequence rewards (max |difference|
  against ``--tolerance`` x the rewards' spread, for bf16), and the first logged losses of
  the ``none`` run are above its last ones (training moves the loss down).

It needs torch, transformers and accelerate; DeepSpeed and a GPU are optional (rows say
"skipped: ..."); Ray is not used. ``--dry-run`` runs the same code with a tiny model on the
CPU in fp32 in well under two minutes (the test suite does), so the script is known to work
before a GPU minute is spent.

    python benchmarks/gpu_check.py                 # on the GPU machine (~1B, bf16)
    python benchmarks/gpu_check.py --dry-run       # anywhere
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

#: (weighting, share_prompt) of the training rows, then the ZeRO-2 row.
TRAIN_ROWS = [("none", True), ("none", False), ("sfc_joint", True), ("sfc_joint", False),
              ("sfc_two_stage", True), ("sfc_two_stage", False)]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--dry-run", action="store_true",
                        help="Tiny model, CPU, fp32: the same code in well under 2 minutes.")
    parser.add_argument("--out", type=Path, default=None, help="Where gpu_check.json goes "
                        "(default: $OUT, else the work folder).")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--steps", type=int, default=None, help="Optimizer steps per run.")
    parser.add_argument("--batch", type=int, default=None, help="Pairs per step.")
    parser.add_argument("--responses", type=int, default=8)
    parser.add_argument("--items", type=int, default=None, help="Scoring items.")
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--tolerance", type=float, default=0.05)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    tiny = args.dry_run
    args.device = "cpu" if tiny else "cuda"
    args.precision = "no" if tiny else "bf16"
    args.shape = "dry-run" if tiny else "1b"
    args.steps = args.steps or (3 if tiny else 12)
    args.batch = args.batch or (4 if tiny else 8)
    args.items = args.items or (4 if tiny else 64)
    args.lr = 1e-2 if tiny else 1e-4     # the tiny model's loss must visibly fall in 3 steps
    return args


# ---------------------------------------------------------------------------- set-up
def build_base(shape: str, folder: Path) -> tuple[Path, int]:
    """A random-init LLaVA-style base (``1b``: 1.0B parameters, 336 px, 576 image tokens)."""
    import torch

    from score_throughput import SHAPES
    from mmrm.synthetic.tiny_vlm import (TinyVLMConfig, build_model, build_processor,
                                         build_tokenizer, vocabulary_corpus)

    config = SHAPES.get(shape) or TinyVLMConfig(image_size=56, patch_size=8, hidden_size=32,
                                                vision_layers=1, text_layers=1, heads=2)
    config = config.model_copy(update={"attention_prior": False})
    tokenizer = build_tokenizer(vocabulary_corpus())
    model = build_model(tokenizer, config)
    parameters = sum(p.numel() for p in model.parameters())
    model.to(torch.bfloat16 if shape == "1b" else torch.float32).save_pretrained(folder)
    build_processor(tokenizer, config).save_pretrained(folder)
    return folder, parameters


def build_pairs(folder: Path, image_size: int, pairs: int) -> Path:
    from mmrm.synthetic.benchmark import convert_benchmark
    from mmrm.synthetic.environments import BenchmarkConfig, SplitConfig, write_benchmark

    config = BenchmarkConfig(image_size=image_size, environments=["povid"],
                             splits=[SplitConfig(name="train", size=pairs)])
    return convert_benchmark(folder, write_benchmark(folder / "raw", config))[("povid", "train")]


def tokens_per_pair(base: Path, pairs_file: Path) -> dict[str, float]:
    """Mean tokens of a prompt (image tokens included), a response, and a text-only prompt."""
    from mmrm.data import conversation, load_pairs
    from mmrm.model import load_processor

    processor = load_processor(base)
    pairs = load_pairs(pairs_file)[:32]
    tokenizer = processor.tokenizer
    count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa
    image_tokens = processor.num_image_tokens if hasattr(processor, "num_image_tokens") else \
        (processor.image_processor.crop_size["height"] // processor.patch_size) ** 2 + 1
    render = lambda p, r, img: processor.apply_chat_template(  # noqa: E731
        conversation(p, r, img), tokenize=False, add_generation_prompt=r is None)
    prompt = sum(count(render(p.prompt, None, True)) - 1 for p in pairs) / len(pairs)
    text_prompt = sum(count(render(p.prompt, None, False)) for p in pairs) / len(pairs)
    whole = sum(count(render(p.prompt, p.chosen, True)) for p in pairs) / len(pairs)
    return {"prompt": prompt + image_tokens, "response": whole - prompt - 1,
            "text_prompt": text_prompt}


# ---------------------------------------------------------------------------- training
def train_config(args, base: Path, pairs: Path, out: Path, weighting: str, share: bool):
    from mmrm.config import variant_shortcut

    raw = {"model": str(base), "output_dir": str(out), "data": {"train": [str(pairs)],
                                                                "max_length": 2048},
           "shortcut": variant_shortcut(weighting, out / "proxy_losses.json"),
           "share_prompt": share,
           "max_steps": args.steps, "per_device_batch_size": args.batch, "log_steps": 1,
           "mixed_precision": args.precision, "finetune": "freeze_vision",
           "optim": {"lr": args.lr, "warmup_ratio": 0.0, "scheduler": "constant"},
           "eval_batch_size": args.batch}
    return raw


def child(spec_file: Path) -> None:
    """One training run in this process; writes its measurements beside the spec."""
    import torch

    from mmrm.config import TrainConfig
    from mmrm.proxy import train_text_proxy
    from mmrm.train import train

    spec = json.loads(spec_file.read_text())
    config = TrainConfig.model_validate(spec["config"])
    cuda = torch.cuda.is_available() and spec["device"] == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    proxy_seconds = 0.0
    if config.shortcut.proxy.value == "cross_fit":
        train_text_proxy(config, log=lambda line: None)
        proxy_seconds = time.perf_counter() - started
    result = train(config, log=lambda line: None, resume=False)
    losses = [json.loads(line)["loss"] for line in
              (Path(config.output_dir) / "metrics.jsonl").read_text().splitlines()]
    spec_file.with_suffix(".result.json").write_text(json.dumps({
        "loop_seconds": result["seconds"], "pairs": result["pairs_seen"],
        "proxy_seconds": round(proxy_seconds, 2),
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "losses": losses}))


def run_child(args, name: str, config: dict, work: Path, launcher: list[str] | None = None
              ) -> dict:
    spec = work / f"{name}.json"
    spec.write_text(json.dumps({"config": config, "device": args.device}))
    command = (launcher or [sys.executable]) + [str(Path(__file__).resolve()), "--child",
                                                str(spec)]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{os.environ.get('PYTHONPATH', '')}"}
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": (done.stderr or done.stdout).strip().splitlines()[-1][:300]}
    return json.loads(spec.with_suffix(".result.json").read_text())


def zero2_launcher(args, work: Path) -> list[str] | str:
    """``accelerate launch`` with the shipped ZeRO-2 config on one process, or why not."""
    if importlib.util.find_spec("deepspeed") is None:
        return "skipped: DeepSpeed is not installed"
    import yaml

    config = yaml.safe_load((ROOT / "configs" / "accelerate" / "zero2.yaml").read_text())
    config.update(num_processes=1, mixed_precision=args.precision,
                  use_cpu=args.device == "cpu")
    config["deepspeed_config"].update(gradient_accumulation_steps=1, gradient_clipping=1.0)
    path = work / "zero2.yaml"
    path.write_text(yaml.safe_dump(config))
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(path)]


def training_rows(args, base: Path, pairs: Path, work: Path, params: int, tokens: dict
                  ) -> list[dict]:
    rows = []
    peak = args.peak_tflops * 1e12
    for weighting, share in TRAIN_ROWS:
        name = f"{weighting}-{'shared' if share else 'whole'}"
        rows.append(measure(args, name, weighting, share, base, pairs, work, params, tokens,
                            peak))
    launcher = zero2_launcher(args, work)
    if isinstance(launcher, str):
        rows.append({"run": "none-shared-zero2", "status": launcher})
    else:
        rows.append(measure(args, "none-shared-zero2", "none", True, base, pairs, work, params,
                            tokens, peak, launcher))
    return rows


def measure(args, name, weighting, share, base, pairs, work, params, tokens, peak,
            launcher=None) -> dict:
    config = train_config(args, base, pairs, work / name, weighting, share)
    result = run_child(args, name, config, work, launcher)
    if "error" in result:
        return {"run": name, "status": f"failed: {result['error']}"}
    seconds = result["loop_seconds"] + result["proxy_seconds"]
    pair_tokens = (tokens["prompt"] + 2 * tokens["response"] if share
                   else 2 * (tokens["prompt"] + tokens["response"]))
    proxy_tokens = 2 * (tokens["text_prompt"] + tokens["response"])
    flops = 6 * params * pair_tokens * result["pairs"]
    if weighting == "sfc_joint":
        flops += 6 * params * proxy_tokens * result["pairs"]
    if weighting == "sfc_two_stage":   # the proxy stage's steps over the same pairs
        flops += 6 * params * proxy_tokens * result["pairs"]
    losses = result["losses"]
    return {"run": name, "status": "ok", "pairs_per_second": result["pairs"] / seconds,
            "seconds": round(seconds, 2), "proxy_seconds": result["proxy_seconds"],
            "peak_gib": result["peak_gib"], "mfu": flops / seconds / peak,
            "loss_first": losses[0], "loss_last": losses[-1]}


# ---------------------------------------------------------------------------- scoring
def scoring_rows(args, base: Path, pairs: Path, work: Path) -> list[dict]:
    """Naive per-response loop vs mmrm's in-process scorer, same items, same model."""
    from score_throughput import in_process, naive_loop, write_items

    from mmrm.model import RewardModel, load_processor

    model_dir = work / "scorer"
    if not (model_dir / "value_head.safetensors").exists():
        RewardModel.from_base(base).save(model_dir, load_processor(base))
    rows_in = write_items(pairs, work / "items.jsonl", args.items, args.responses)
    dtype = "fp32" if args.device == "cpu" else "bf16"
    responses = len(rows_in) * args.responses
    rows = []
    for name, fn in (("naive loop", naive_loop), ("mmrm in-process", in_process)):
        fn(model_dir, rows_in[:2], args.responses * 2, args.device, dtype)     # warm-up
        seconds = fn(model_dir, rows_in, args.responses * 8, args.device, dtype)
        rows.append({"run": name, "responses_per_second": responses / seconds,
                     "seconds": round(seconds, 2)})
    rows[1]["speedup"] = rows[1]["responses_per_second"] / rows[0]["responses_per_second"]
    return rows


# ---------------------------------------------------------------------------- correctness
def shared_prompt_check(args, base: Path, pairs_file: Path) -> dict:
    """Rewards of a batch with the shared prompt vs whole sequences, in the run's dtype."""
    import torch

    from mmrm.data import PairCollator, load_pairs
    from mmrm.model import RewardModel, load_processor

    dtype = torch.float32 if args.device == "cpu" else torch.bfloat16
    model = RewardModel.from_base(base, dtype=dtype).to(args.device).eval()
    processor = load_processor(base)
    pairs = load_pairs(pairs_file)[:args.batch]
    rewards = {}
    with torch.inference_mode():
        for share in (True, False):
            batch = PairCollator(processor, share_prompt=share)(pairs)
            inputs = {k: (v.to(args.device, dtype) if v.is_floating_point() else
                          v.to(args.device)) for k, v in batch.items() if k != "ids"}
            rewards[share] = model(**inputs, sequences_per_image=2).float().cpu()
    difference = (rewards[True] - rewards[False]).abs().max().item()
    spread = rewards[False].std().item()
    return {"max_abs_difference": difference, "reward_std": spread,
            "ok": difference <= args.tolerance * max(spread, 1e-3)}


# ---------------------------------------------------------------------------- main
def table(report: dict) -> str:
    lines = [f"device: {report['device']}  model: {report['parameters'] / 1e9:.4g}B parameters"
             f" ({report['shape']}), {report['tokens']['prompt']:.0f} prompt tokens (image "
             f"included), {report['tokens']['response']:.0f} response tokens",
             "", f"{'training run':<24}{'pairs/s':>10}{'proxy s':>9}{'peak GiB':>10}"
             f"{'MFU':>10}{'loss first -> last':>22}"]
    for row in report["training"]:
        if row["status"] != "ok":
            lines.append(f"{row['run']:<24}  {row['status']}")
            continue
        peak = f"{row['peak_gib']:.2f}" if row["peak_gib"] is not None else "-"
        lines.append(f"{row['run']:<24}{row['pairs_per_second']:>10.2f}"
                     f"{row['proxy_seconds']:>9.1f}{peak:>10}{row['mfu']:>10.3g}"
                     f"{row['loss_first']:>11.4f} -> {row['loss_last']:.4f}")
    lines += ["", f"{'scoring':<24}{'responses/s':>12}"]
    for row in report["scoring"]:
        lines.append(f"{row['run']:<24}{row['responses_per_second']:>12.1f}"
                     + (f"   x{row['speedup']:.2f} vs naive" if "speedup" in row else ""))
    shared, falls = report["correctness"]["shared_prompt"], report["correctness"]["loss_falls"]
    lines += ["", f"shared prompt = whole sequences: max |diff| "
              f"{shared['max_abs_difference']:.2e} (reward std {shared['reward_std']:.2e}) "
              f"{'OK' if shared['ok'] else 'FAIL'}",
              f"training lowers the loss (none-shared): {'OK' if falls else 'FAIL'}"]
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.child:
        child(args.child)
        return {}
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no GPU visible: run with --dry-run for the CPU check")
    work = args.work or Path(tempfile.mkdtemp(prefix="mmrm-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    base, params = build_base(args.shape, work / "base")
    image_size = 56 if args.dry_run else 336
    pairs = build_pairs(work / "data", image_size, args.steps * args.batch)
    tokens = tokens_per_pair(base, pairs)
    report = {"device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
              "shape": args.shape, "parameters": params, "tokens": tokens,
              "steps": args.steps, "batch": args.batch, "precision": args.precision,
              "mfu_formula": "6 * N * tokens_per_second / peak_flops",
              "peak_tflops": args.peak_tflops}
    report["training"] = training_rows(args, base, pairs, work, params, tokens)
    report["scoring"] = scoring_rows(args, base, pairs, work)
    none = next(r for r in report["training"] if r["run"] == "none-shared")
    report["correctness"] = {
        "shared_prompt": shared_prompt_check(args, base, pairs),
        "loss_falls": none["status"] == "ok" and none["loss_last"] < none["loss_first"]}
    report["seconds"] = round(time.perf_counter() - started, 1)
    text = table(report)
    print(text)
    out = args.out or (Path(os.environ["OUT"]) if os.environ.get("OUT") else work)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "gpu_check.txt").write_text(text + "\n")
    print(f"\nwritten: {out / 'gpu_check.json'} ({report['seconds']} s)")
    return report


if __name__ == "__main__":
    main()
