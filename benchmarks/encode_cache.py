"""What the encoding cache (``encode_cache_mib``, :class:`mmrm.data.EncodingCache`) saves: the
same run with and without it, in one invocation, each in its own child process.

Both runs train the standard RM on the same tiny base, pairs, seed and number of epochs; from
the second epoch on, the cached run pads and stacks kept encodings instead of running the chat
template, tokenizer and image preprocessing again. Prints the loop's seconds and pairs/s of
each, their ratio, the peak RSS, and whether the logged losses are identical (they must be: the
cache returns the tensors a fresh encoding gives). The runs alternate (off, on, off, on, ...)
``--repeats`` times and the ratio is taken of the medians, since this machine is noisy.

    python benchmarks/encode_cache.py --base data/base/tiny --epochs 4
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def child(args) -> None:
    """One run; prints a JSON line with its loop seconds, losses and peak RSS."""
    from mmrm.config import TrainConfig
    from mmrm.train import train
    from train_throughput import peak_rss_mib    # this folder's benchmark, beside this one

    out = Path(args.work) / f"cache{args.cache_mib}"
    config = TrainConfig.model_validate({
        "model": str(args.base), "output_dir": str(out), "data": {"train": [str(args.pairs)]},
        "epochs": args.epochs, "per_device_batch_size": args.batch, "log_steps": 5,
        "finetune": "freeze_vision", "calibration_pairs": 0, "seed": 0,
        "encode_cache_mib": args.cache_mib})
    started = time.perf_counter()
    result = train(config, resume=False, log=lambda line: None)
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    print(json.dumps({"loop_seconds": result["seconds"], "pairs": result["pairs_seen"],
                      "wall_seconds": time.perf_counter() - started, "losses": losses,
                      "peak_rss_mib": peak_rss_mib()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--base", type=Path, default=Path("data/base/tiny"))
    parser.add_argument("--pairs", type=Path,
                        default=Path("data/envs/povid/train.jsonl"))
    parser.add_argument("--epochs", type=float, default=4.0)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--cache-mib", type=float, default=512.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    runs = {0.0: [], args.cache_mib: []}
    with tempfile.TemporaryDirectory() as work:
        for _ in range(args.repeats):
            for mib in runs:
                out = subprocess.run([sys.executable, __file__, "--child", "--work", work,
                                      "--base", str(args.base), "--pairs", str(args.pairs),
                                      "--epochs", str(args.epochs), "--batch", str(args.batch),
                                      "--cache-mib", str(mib)],
                                     capture_output=True, text=True, check=True)
                runs[mib].append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(f"cache {mib:g} MiB: loop {runs[mib][-1]['loop_seconds']:.1f} s",
                      file=sys.stderr)
    off, on = runs[0.0], runs[args.cache_mib]
    print(f"{args.epochs:g} epochs of {args.pairs} (batch {args.batch}) on {args.base}, "
          f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}, {args.repeats} runs each")
    print(f"{'encode_cache_mib':<18}{'loop s (median)':>16}{'pairs/s':>10}{'peak RSS MiB':>14}")
    for mib, rs in runs.items():
        seconds = statistics.median(r["loop_seconds"] for r in rs)
        print(f"{mib:<18g}{seconds:>16.1f}{rs[0]['pairs'] / seconds:>10.1f}"
              f"{max(r['peak_rss_mib'] for r in rs):>14.0f}")
    ratio = statistics.median(r["loop_seconds"] for r in off) / \
        statistics.median(r["loop_seconds"] for r in on)
    print(f"speed-up of the loop with the cache: {ratio:.2f}x")
    print(f"losses identical with and without the cache: "
          f"{all(r['losses'] == off[0]['losses'] for r in off + on)}")


if __name__ == "__main__":
    main()
