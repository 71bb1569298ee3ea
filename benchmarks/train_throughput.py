"""Training throughput: mmrm's loop vs a TRL RewardTrainer-style baseline, and the cost of
each shortcut-aware variant against the standard run, on the tiny base or a random-init shape
with 256 or 576 image tokens.

In one invocation, each run in its own child process (so peak RSS is per run), on the same
model, data, batch size and number of steps, ``--repeats`` rounds interleaved (medians):

* ``baseline`` — what a TRL ``RewardTrainer``-style wrapper does with a VLM: a collator that
  processes chosen and rejected as separate batches, each with its own copy of the image, and
  two forwards (chosen, rejected), so every image is preprocessed and encoded twice per pair.
* ``none`` — mmrm's loop (one forward over chosen + rejected, each image encoded once).
* ``sfc_two_stage``, ``group_balance``, ``poe`` — the cross-fitted text-only proxies' stage
  (each fold its share of the steps), then the run that uses them (both counted; the proxy
  stage's share shown).
* ``sfc_joint`` — proxy and reward model trained together in one loop.

Prints pairs/s of the training loop (``baseline`` vs ``none``), wall time of each variant vs
``none`` (model loading, the loop, the end-of-run scoring and saving), peak RSS per run and
per pair of a batch.

    python benchmarks/train_throughput.py                         # after make run: tiny base
    python benchmarks/train_throughput.py --random-base llava-small --steps 10 --batch 8
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OMP_NUM_THREADS", "1")     # 2 on 2 cores: ~2x the run-to-run spread
os.environ.setdefault("HF_HUB_OFFLINE", "1")

RUNS = ("baseline", "none", "sfc_joint", "sfc_two_stage", "group_balance", "poe")


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_config(args, work: Path, weighting: str):
    from mmrm.config import TrainConfig, variant_shortcut

    out = work / weighting
    return TrainConfig.model_validate({
        "model": str(args.base), "output_dir": str(out),
        "data": {"train": [str(args.pairs)], "image_root": str(args.image_root)},
        "shortcut": variant_shortcut(weighting, out / "proxy_losses.json"),
        "max_steps": args.steps, "per_device_batch_size": args.batch, "log_steps": 10,
        "dataloader_num_workers": args.loader_workers,
        "optim": {"lr": 1e-3, "weight_decay": 0.0, "warmup_ratio": 0.05}, "seed": 0})


def baseline_loop(args) -> dict:
    """TRL RewardTrainer-style: chosen and rejected as two batches, each with its images."""
    import torch
    from torch.utils.data import DataLoader

    from mmrm.data import conversation, load_image, load_pairs
    from mmrm.model import RewardModel, load_processor

    torch.manual_seed(0)
    model = RewardModel.from_base(args.base)
    processor = load_processor(args.base)
    pairs = load_pairs(args.pairs, image_root=Path(args.image_root))

    def collate(batch):
        out = {}
        for side in ("chosen", "rejected"):
            texts = [processor.apply_chat_template(conversation(p.prompt, getattr(p, side), True),
                                                   tokenize=False) for p in batch]
            images = [load_image(p.image_file) for p in batch]   # one copy per sequence
            encoded = processor(text=texts, images=images, return_tensors="pt", padding=True)
            encoded.pop("token_type_ids", None)
            out[side] = dict(encoded)
        return out

    loader = DataLoader(pairs, batch_size=args.batch, shuffle=True, collate_fn=collate,
                        generator=torch.Generator().manual_seed(0))
    # transformers' Trainer (TRL's base) defaults to the fused AdamW kernel from torch 2.8 on
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0, fused=True)
    model.train()
    started, seen, step = time.perf_counter(), 0, 0
    while step < args.steps:
        for batch in loader:
            chosen = model(**batch["chosen"])       # two forwards, as RewardTrainer does
            rejected = model(**batch["rejected"])
            loss = -torch.nn.functional.logsigmoid(chosen - rejected).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            seen += len(chosen)
            step += 1
            if step >= args.steps:
                break
    seconds = time.perf_counter() - started
    return {"loop_seconds": seconds, "pairs": seen}


def child(args) -> None:
    """One run; prints a JSON line with its timings and peak RSS."""
    from mmrm.proxy import train_text_proxy
    from mmrm.train import train

    work = Path(args.work)
    started = time.perf_counter()
    if args.child == "baseline":
        result = baseline_loop(args)
    else:
        config = run_config(args, work, args.child)
        quiet = lambda line: None  # noqa: E731
        proxy_seconds = 0.0
        if config.shortcut.proxy.value == "cross_fit":
            t = time.perf_counter()
            train_text_proxy(config, log=quiet)
            proxy_seconds = time.perf_counter() - t
        trained = train(config, resume=False, log=quiet)
        result = {"loop_seconds": trained["seconds"], "pairs": trained["pairs_seen"],
                  "proxy_stage_seconds": proxy_seconds}
    result.update(wall_seconds=time.perf_counter() - started, peak_rss_mib=peak_rss_mib())
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--base", type=Path, default=Path("data/base/tiny"))
    parser.add_argument("--random-base", choices=sorted(shapes()),
                        help="a random-init model of this shape instead of --base")
    parser.add_argument("--pairs", type=Path,
                        default=Path("data/envs/povid/train.jsonl"))
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2, help="Rounds of every run, "
                        "interleaved; medians reported.")
    parser.add_argument("--runs", nargs="+", choices=RUNS, default=list(RUNS))
    parser.add_argument("--loader-workers", type=int, default=0,
                        help="mmrm runs' dataloader_num_workers (the baseline keeps 0, "
                             "TRL's default)")
    parser.add_argument("--child", choices=RUNS, help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--image-root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    with tempfile.TemporaryDirectory() as work:
        # one epoch's pairs (steps x batch): what a run scores after training (reward
        # statistics, the proxies' losses) grows with what it trains on, as in the pipeline
        lines = args.pairs.read_text().splitlines()[:args.steps * args.batch]
        args.image_root = args.pairs.parent.resolve()
        args.pairs = Path(work) / "data" / "pairs.jsonl"    # apart from the runs' folders
        args.pairs.parent.mkdir()
        args.pairs.write_text("\n".join(lines) + "\n")
        base = args.base
        if args.random_base:
            from mmrm.synthetic.tiny_vlm import random_base

            base = random_base(args.random_base, Path(work) / "base")
        runs: dict[str, list[dict]] = {}
        for round_ in range(args.repeats):
            for name in args.runs:
                runs.setdefault(name, []).append(child_run(args, name, base,
                                                           Path(work) / "runs" / f"{round_}"))
    report(args, {name: median_run(found) for name, found in runs.items()})


def shapes() -> dict:
    from mmrm.synthetic.tiny_vlm import BENCHMARK_SHAPES

    return BENCHMARK_SHAPES


def child_run(args, name: str, base: Path, work: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", name, "--work", str(work),
                          "--base", str(base), "--pairs", str(args.pairs),
                          "--image-root", str(args.image_root),
                          "--steps", str(args.steps), "--batch", str(args.batch),
                          "--loader-workers", str(args.loader_workers)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{name}: {out.stderr[-2000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{name}: {result}", file=sys.stderr)
    return result


def median_run(found: list[dict]) -> dict:
    import statistics

    return {key: statistics.median(r[key] for r in found) for key in found[0]}


def report(args, results: dict[str, dict]) -> None:
    none = results["none"]
    print(f"{args.steps} steps x {args.batch} pairs (one epoch) on "
          f"{args.random_base or args.base} "
          f"(random init: {bool(args.random_base)}; OMP_NUM_THREADS="
          f"{os.environ['OMP_NUM_THREADS']}, mmrm loader workers {args.loader_workers}; "
          f"medians of {args.repeats})")
    print(f"{'run':<15}{'pairs/s (loop)':>15}{'wall s':>9}{'wall vs none':>14}"
          f"{'proxy share':>13}{'peak RSS MiB':>14}{'MiB / pair':>12}")
    for name, r in results.items():
        rate = r["pairs"] / r["loop_seconds"]
        share = r.get("proxy_stage_seconds", 0.0) / r["wall_seconds"]
        print(f"{name:<15}{rate:>15.1f}{r['wall_seconds']:>9.1f}"
              f"{r['wall_seconds'] / none['wall_seconds']:>13.2f}x{share:>13.2f}"
              f"{r['peak_rss_mib']:>14.0f}{r['peak_rss_mib'] / args.batch:>12.1f}")
    if "baseline" in results:
        base = results["baseline"]
        print(f"mmrm loop vs TRL-style baseline: "
              f"{none['pairs'] / none['loop_seconds'] / (base['pairs'] / base['loop_seconds']):.2f}"
              f"x pairs/s; peak RSS {none['peak_rss_mib'] / base['peak_rss_mib']:.2f}x the "
              f"baseline's")
    aware = [n for n in results if n not in ("baseline", "none")]
    if aware:
        cheaper = min(aware, key=lambda n: results[n]["wall_seconds"])
        print(f"cheapest shortcut-aware variant: {cheaper}, "
              f"{results[cheaper]['wall_seconds'] / none['wall_seconds']:.2f}x the wall time "
              f"of none")


if __name__ == "__main__":
    main()
