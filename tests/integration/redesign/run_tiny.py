"""Runs a fixed tiny experiment with whichever ``mmrm`` is importable and prints its numbers as
JSON: the seed-0 cross-distribution matrix of two short runs and a ``score_file`` output.

Used by test_redesign_unchanged.py with the code of the commit before the redesign and with
today's, which must agree bit for bit. Only names that exist in both are used.
"""

import json
import sys
from pathlib import Path

import torch

from mmrm.config import TrainConfig
from mmrm.evaluate import cross_distribution
from mmrm.score import ScoreConfig, score_file
from mmrm.synthetic.environments import (BenchmarkConfig, SplitConfig, convert_benchmark,
                                         write_benchmark)
from mmrm.synthetic.tiny_vlm import (TinyVLMConfig, build_model, build_processor,
                                     build_tokenizer, vocabulary_corpus)
from mmrm.train import train


def main(work: Path) -> dict:
    torch.set_num_threads(1)
    base = work / "base"
    config = TinyVLMConfig(hidden_size=32, vision_layers=1, text_layers=1, heads=2,
                           image_size=32, patch_size=8)
    tokenizer = build_tokenizer(vocabulary_corpus())
    build_model(tokenizer, config).save_pretrained(base)
    build_processor(tokenizer, config).save_pretrained(base)
    bench = BenchmarkConfig(image_size=32, splits=[SplitConfig(name="train", size=24),
                                                   SplitConfig(name="test", size=12)])
    pairs = convert_benchmark(work / "bench", write_benchmark(work / "bench" / "raw", bench))
    tests = {env: str(path) for (env, split), path in pairs.items() if split == "test"}
    models = {}
    for weighting in ("none", "sfc_joint"):
        out = work / weighting
        train(TrainConfig.model_validate({
            "model": str(base), "output_dir": str(out),
            "data": {"train": [str(pairs[("povid", "train")])]},
            "shortcut": {"weighting": weighting}, "max_steps": 3, "per_device_batch_size": 8,
            "optim": {"lr": 1e-2, "warmup_ratio": 0}, "log_steps": 1, "seed": 0}),
            resume=False, log=lambda line: None)
        models[f"povid/{weighting}"] = str(out / "final")
    matrix = cross_distribution(models, tests)
    items = work / "bench" / "pairs" / "items.jsonl"
    with open(items, "w") as f:
        for line in Path(tests["povid"]).read_text().splitlines()[:6]:
            p = json.loads(line)
            f.write(json.dumps({"id": p["id"], "prompt": p["prompt"],
                                "img_path": "povid/" + p["img_path"],
                                "responses": [p["chosen"], p["rejected"], "No."]}) + "\n")
    score_file(ScoreConfig(model=models["povid/none"], input=str(items),
                           output=str(work / "scores.jsonl"), workers=1, chunk_items=2,
                           batch_responses=6))
    scores = [json.loads(line)["scores"] for line in open(work / "scores.jsonl")]
    return {"matrix": matrix.accuracy, "scores": scores}


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(Path(sys.argv[1]))))
