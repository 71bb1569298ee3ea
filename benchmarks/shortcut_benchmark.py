"""Acceptance numbers of the built-in default: is the base grounded, is the shortcut there,
do images decide?

1. Base grounding: yes/no attribute questions on held-out scenes (from the base's own
   evaluation), target >= 0.95.
2. Shortcut present: a *text-only* RM trained on each environment's train split (own cue on
   the preferred side at 0.85): in-distribution accuracy (target >= 0.80) and accuracy on the
   other environments' test splits (target <= 0.60 on at least one).
3. Images decide: a multimodal RM trained on a split whose cue is uninformative (rate 0.5)
   reaches >= 0.90 on every environment's test split. Printed for an RM trained on each
   environment's neutral split alone (each environment asks a differently shaped question:
   RLHF-V-like prompts name the attribute that is wrong, VLFeedback-like pairs compare two
   wrong answers, so a single-environment RM also meets a task shift out of distribution)
   and for one trained on the three neutral splits together, the check of this target.

The RM runs use ``configs/tiny/none.yaml`` with only model, data, mode and output changed.

    python benchmarks/shortcut_benchmark.py --work /tmp/mmrm-bench [--base DIR] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from mmrm.config import TrainConfig, load_config  # noqa: E402
from mmrm.synthetic.environments import (ENVIRONMENTS, BenchmarkConfig,  # noqa: E402
                                         SplitConfig, convert_benchmark, write_benchmark)
from mmrm.synthetic.tiny_vlm import TinyVLMConfig, pretrain  # noqa: E402
from mmrm.train import train  # noqa: E402

TEMPLATE = "tiny/none"        # the shipped config (mmrm/configs/tiny/none.yaml)


def run_config(base: Path, train_files: list[Path], tests: dict[str, Path], out: Path, mode: str,
               seed: int, epochs: float | None) -> TrainConfig:
    raw = load_config(TEMPLATE).model_dump(mode="json")
    raw.update(model=str(base), output_dir=str(out), mode=mode, seed=seed)
    raw["data"].update(train=[str(f) for f in train_files],
                       eval={k: str(v) for k, v in tests.items()})
    if epochs is not None:
        raw["epochs"] = epochs
    return TrainConfig.model_validate(raw)


def matrix_line(name: str, row: dict[str, float]) -> str:
    return f"{name:<22}" + "".join(f"{row[e]:>12.3f}" for e in ENVIRONMENTS)


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--work", type=Path, default=Path("/tmp/mmrm-shortcut-benchmark"))
    parser.add_argument("--base", type=Path, help="An existing tiny base (else pre-trained).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-size", type=int, default=3000)
    parser.add_argument("--test-size", type=int, default=600)
    parser.add_argument("--epochs", type=float, help="Override the template's epochs.")
    args = parser.parse_args()
    work = args.work

    base = args.base or work / "base"
    if not (base / "config.json").exists():
        pretrain(base, TinyVLMConfig(seed=args.seed))
    grounding = json.loads((base / "pretrain_report.json").read_text())["grounding"]

    bench = BenchmarkConfig(seed=args.seed, splits=[
        SplitConfig(name="train", size=args.train_size),
        SplitConfig(name="neutral", size=args.train_size, cue_rate=0.5),
        SplitConfig(name="test", size=args.test_size)])
    pairs = convert_benchmark(work / "benchmark", write_benchmark(work / "benchmark" / "raw",
                                                                  bench))
    tests = {env: pairs[(env, "test")] for env in ENVIRONMENTS}

    text_only, neutral = {}, {}
    for env in ENVIRONMENTS:
        result = train(run_config(base, [pairs[(env, "train")]], tests,
                                  work / "runs" / env / "text_only", "text_only", args.seed,
                                  args.epochs), resume=False, log=lambda s: None)
        text_only[env] = {e: result[f"eval/{e}/accuracy"] for e in ENVIRONMENTS}
        result = train(run_config(base, [pairs[(env, "neutral")]], tests,
                                  work / "runs" / env / "neutral_mm", "multimodal", args.seed,
                                  args.epochs), resume=False, log=lambda s: None)
        neutral[env] = {e: result[f"eval/{e}/accuracy"] for e in ENVIRONMENTS}
    result = train(run_config(base, [pairs[(env, "neutral")] for env in ENVIRONMENTS], tests,
                              work / "runs" / "all" / "neutral_mm", "multimodal", args.seed,
                              args.epochs), resume=False, log=lambda s: None)
    neutral_mix = {e: result[f"eval/{e}/accuracy"] for e in ENVIRONMENTS}

    print(f"base grounding (yes/no on {grounding['questions']} held-out questions): "
          f"{grounding['overall']:.3f} {grounding['by_attribute']}")
    print(f"\n{'trained on -> tested on':<22}" + "".join(f"{e:>12}" for e in ENVIRONMENTS))
    for env in ENVIRONMENTS:
        print(matrix_line(f"text-only {env}", text_only[env]))
    for env in ENVIRONMENTS:
        print(matrix_line(f"MM, neutral {env}", neutral[env]))
    print(matrix_line("MM, neutral all three", neutral_mix))

    checks = {
        "base grounding >= 0.95": grounding["overall"] >= 0.95,
        "text-only ID >= 0.80 (every env)": all(text_only[e][e] >= 0.80 for e in ENVIRONMENTS),
        "text-only <= 0.60 on another env (every env)": all(
            min(v for t, v in text_only[e].items() if t != e) <= 0.60 for e in ENVIRONMENTS),
        "MM on the neutral splits >= 0.90 on every test split": all(
            v >= 0.90 for v in neutral_mix.values()),
    }
    print()
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    report = {"seed": args.seed, "grounding": grounding, "text_only": text_only,
              "neutral_multimodal": neutral, "neutral_multimodal_all": neutral_mix,
              "checks": checks}
    (work / "shortcut_benchmark.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nreport: {work / 'shortcut_benchmark.json'}")


if __name__ == "__main__":
    main()
