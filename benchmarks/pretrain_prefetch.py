"""What making the base's batches ahead saves (``pretrain(prefetch=True)``, a background thread
draws scenes and tokenizes while the model steps): pre-training with and without it, in one
invocation, alternating (off, on, off, on, ...) ``--repeats`` times on a shortened schedule.

Prints each run's seconds, the ratio of the medians, and whether every run saved the same
weights (it must: the batches come from the same random stream in the same order).

    python benchmarks/pretrain_prefetch.py --visual V2 --steps 60 300
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OMP_NUM_THREADS", "2")      # as make run
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    from mmrm.synthetic.tiny_vlm import TinyVLMConfig, pretrain

    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--visual", default="V2")
    parser.add_argument("--steps", type=int, nargs=2, default=[60, 300],
                        metavar=("ALIGN", "TUNE"))
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    config = TinyVLMConfig(visual=args.visual, align_steps=args.steps[0],
                           tune_steps=args.steps[1], eval_scenes=30)
    seconds, digests = {False: [], True: []}, set()
    with tempfile.TemporaryDirectory() as work:
        for _ in range(args.repeats):
            for prefetch in (False, True):
                out = Path(work) / str(prefetch)
                started = time.perf_counter()
                pretrain(out, config, log=lambda line: None, prefetch=prefetch)
                seconds[prefetch].append(time.perf_counter() - started)
                digests.add(hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest())
                print(f"prefetch={prefetch}: {seconds[prefetch][-1]:.1f} s", file=sys.stderr)
    print(f"base {args.visual}, {args.steps[0]} + {args.steps[1]} steps, OMP_NUM_THREADS="
          f"{os.environ['OMP_NUM_THREADS']}, {args.repeats} runs each")
    for prefetch, values in seconds.items():
        print(f"prefetch={str(prefetch):<6} median {statistics.median(values):6.1f} s  "
              f"({', '.join(f'{v:.1f}' for v in values)})")
    print(f"speed-up: {statistics.median(seconds[False]) / statistics.median(seconds[True]):.2f}x")
    print(f"same weights in every run: {len(digests) == 1}")


if __name__ == "__main__":
    main()
