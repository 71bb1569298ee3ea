"""Standard vs shortcut-aware RMs on the built-in benchmark: train on each environment, test
on all three, for several seeds; mean in-distribution (ID) and out-of-distribution (OOD)
pairwise accuracy per weighting, and the weight statistics of the shortcut-aware runs.

Runs ``configs/tiny/{none,sfc_joint,sfc_two_stage}.yaml`` with model, data and seed changed.
The benchmark data are made once per seed (``mmrm benchmark make``'s defaults; with
``--train-cue-rate`` the training splits carry their own cue that often instead of 0.85, the
test splits are unchanged).

    python benchmarks/cross_distribution.py --base data/base/tiny --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from mmrm.config import TrainConfig, load_config  # noqa: E402
from mmrm.synthetic.environments import (ENVIRONMENTS, BenchmarkConfig,  # noqa: E402
                                         SplitConfig, convert_benchmark, write_benchmark)
from mmrm.train import train, train_text_proxy  # noqa: E402

WEIGHTINGS = ("none", "sfc_two_stage", "sfc_joint")


def run_config(weighting: str, base: Path, pairs: dict, env: str, out: Path, seed: int,
               overrides: list[str]) -> TrainConfig:
    raw = load_config(f"tiny/{weighting}", overrides).model_dump(mode="json")
    raw.update(model=str(base), output_dir=str(out), seed=seed)
    raw["data"].update(train=[str(pairs[(env, "train")])],
                       eval={e: str(pairs[(e, "test")]) for e in ENVIRONMENTS})
    if weighting == "sfc_two_stage":
        raw["shortcut"]["proxy_losses"] = str(out / "proxy_losses.json")
    return TrainConfig.model_validate(raw)


def last_weight_stats(out: Path) -> dict:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    keep = ("weight/mean", "weight/mean_proxy_wrong", "weight/mean_proxy_right",
            "weight/proxy_wrong_frac")
    records = [json.loads(line) for line in lines]
    return {k: statistics.mean(r[k] for r in records if k in r) for k in keep
            if any(k in r for r in records)}


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--base", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/mmrm-cross-distribution"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--weightings", nargs="+", default=list(WEIGHTINGS))
    parser.add_argument("--train-cue-rate", type=float, default=None,
                        help="P(own cue on the preferred side) in the training splits")
    parser.add_argument("overrides", nargs="*", help="dotted key=value for every run")
    args = parser.parse_args()

    results = []
    for seed in args.seeds:
        bench = args.work / f"benchmark-{seed}"
        benchmark = BenchmarkConfig(seed=seed)
        if args.train_cue_rate is not None:
            benchmark.splits[0] = SplitConfig(name="train", size=benchmark.splits[0].size,
                                              cue_rate=args.train_cue_rate)
        pairs = convert_benchmark(bench, write_benchmark(bench / "raw", benchmark))
        for env in ENVIRONMENTS:
            for weighting in args.weightings:
                out = args.work / f"seed{seed}" / env / weighting
                config = run_config(weighting, args.base, pairs, env, out, seed, args.overrides)
                if weighting == "sfc_two_stage":
                    train_text_proxy(config, log=lambda s: None)
                result = train(config, resume=False, log=lambda s: None)
                accuracy = {e: result[f"eval/{e}/accuracy"] for e in ENVIRONMENTS}
                row = {"seed": seed, "train": env, "weighting": weighting,
                       "id": accuracy[env],
                       "ood": statistics.mean(v for e, v in accuracy.items() if e != env),
                       "accuracy": accuracy, "weights": last_weight_stats(out),
                       "seconds": result["seconds"]}
                results.append(row)
                print(json.dumps(row), flush=True)

    print(f"\n{'weighting':<16}{'mean ID':>10}{'mean OOD':>10}   (over {len(args.seeds)} "
          f"seeds x {len(ENVIRONMENTS)} environments)")
    summary = {}
    for weighting in args.weightings:
        rows = [r for r in results if r["weighting"] == weighting]
        summary[weighting] = {"id": statistics.mean(r["id"] for r in rows),
                              "ood": statistics.mean(r["ood"] for r in rows)}
        print(f"{weighting:<16}{summary[weighting]['id']:>10.3f}{summary[weighting]['ood']:>10.3f}")
    (args.work / "cross_distribution.json").write_text(
        json.dumps({"summary": summary, "runs": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
