"""Responses/s of ``mmrm score`` vs a naive loop, and 1 vs 2 Ray workers, on the tiny base.

The naive loop is what scoring looks like without mmrm's batching: every (prompt, image,
response) is its own sequence, so the image is preprocessed and encoded once per response;
batches hold the same number of responses as mmrm's. Both use one torch thread per worker.
Same process, same model (the tiny base with a fresh value head), same items.

``mmrm score --preprocess auto`` (the default) decodes images and tokenizes in the driver
process while the workers run the model when the workers leave a CPU free (1 worker on 2
CPUs): that is a second busy process beside the worker. The ``--preprocess worker`` row and
the in-process row keep everything in one process, like the naive loop.

    python benchmarks/score_throughput.py --base data/base/tiny --items 200 --responses 8
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import torch  # noqa: E402

from mmrm.data import conversation, load_image, load_pairs, set_right_padding  # noqa: E402
from mmrm.model import RewardModel, load_processor  # noqa: E402
from mmrm.score import ResponseScorer, ScoreConfig, score_file  # noqa: E402


def write_items(pairs_file: Path, out: Path, items: int, responses: int) -> list[dict]:
    pairs = load_pairs(pairs_file)[:items]
    rows = []
    for p in pairs:
        candidates = [p.chosen, p.rejected] * responses
        rows.append({"id": p.id, "prompt": p.prompt, "img_path": str(p.image_file),
                     "responses": [f"{c} ({k})" for k, c in enumerate(candidates[:responses])]})
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


@torch.no_grad()
def naive_loop(model_dir: Path, rows: list[dict], batch: int) -> float:
    """Seconds to score every response as its own (prompt, image, response) sequence."""
    model = RewardModel.load(model_dir).eval()
    processor = load_processor(model_dir)
    set_right_padding(processor)
    triples = [(r["prompt"], r["img_path"], resp) for r in rows for resp in r["responses"]]
    started = time.perf_counter()
    for start in range(0, len(triples), batch):
        chunk = triples[start:start + batch]
        texts = [processor.apply_chat_template(conversation(p, resp, True), tokenize=False)
                 for p, _, resp in chunk]
        images = [load_image(Path(path)) for _, path, _ in chunk]
        inputs = processor(text=texts, images=images, return_tensors="pt", padding=True)
        inputs.pop("token_type_ids", None)
        model(**inputs)
    return time.perf_counter() - started


def in_process(model_dir: Path, rows: list[dict], batch: int) -> float:
    """Seconds for mmrm's scorer without Ray (items packed up to ``batch`` responses)."""
    scorer = ResponseScorer(str(model_dir))
    per_batch = max(1, batch // len(rows[0]["responses"]))
    items = [{"line": i, "prompt": r["prompt"], "responses": r["responses"],
              "image_file": r["img_path"]} for i, r in enumerate(rows)]
    started = time.perf_counter()
    for start in range(0, len(items), per_batch):
        scorer.score(items[start:start + per_batch])
    return time.perf_counter() - started


def with_ray(model_dir: Path, src: Path, work: Path, workers: int, batch: int,
             attempt: int = 0, preprocess: str = "auto") -> dict:
    out = work / f"scores-{workers}-{preprocess}-{attempt}.jsonl"
    started = time.perf_counter()
    totals = score_file(ScoreConfig(model=str(model_dir), input=str(src), output=str(out),
                                    workers=workers, batch_responses=batch,
                                    preprocess=preprocess))
    return {"seconds": totals["seconds"], "wall": time.perf_counter() - started,
            "preprocess": totals["preprocess"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, default=Path("data/base/tiny"))
    parser.add_argument("--pairs", type=Path,
                        default=Path("data/benchmark/pairs/vlfeedback/test.jsonl"))
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--responses", type=int, default=8)
    parser.add_argument("--batch", type=int, default=64, help="responses per forward")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    args = parser.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_dir = work / "rm"
        RewardModel.from_base(args.base).save(model_dir, load_processor(args.base))
        src = work / "items.jsonl"
        rows = write_items(args.pairs, src, args.items, args.responses)
        n = sum(len(r["responses"]) for r in rows)

        # best of --repeat runs each (these machines are noisy), interleaved
        naive, mine, ray1, ray1w, ray2 = [], [], [], [], []
        for attempt in range(args.repeat):
            naive.append(naive_loop(model_dir, rows, args.batch))
            mine.append(in_process(model_dir, rows, args.batch))
            ray1.append(with_ray(model_dir, src, work, 1, args.batch, attempt))
            ray1w.append(with_ray(model_dir, src, work, 1, args.batch, attempt, "worker"))
            ray2.append(with_ray(model_dir, src, work, 2, args.batch, attempt))
        naive, mine = min(naive), min(mine)
        ray1, ray1w, ray2 = (min(runs, key=lambda r: r["seconds"])
                             for runs in (ray1, ray1w, ray2))

    print(f"{len(rows)} items x {args.responses} responses = {n} responses, "
          f"batches of {args.batch} responses, 1 torch thread per worker, "
          f"best of {args.repeat}")
    print(f"{'run':<52}{'seconds':>9}{'responses/s':>13}{'vs naive':>10}")
    for name, seconds in (
            ("naive loop (image per response)", naive),
            ("mmrm scorer, in process", mine),
            (f"mmrm score, Ray, 1 worker (preprocess: {ray1['preprocess']})", ray1["seconds"]),
            ("mmrm score, Ray, 1 worker (preprocess: worker)", ray1w["seconds"]),
            (f"mmrm score, Ray, 2 workers (preprocess: {ray2['preprocess']})",
             ray2["seconds"])):
        print(f"{name:<52}{seconds:>9.2f}{n / seconds:>13.1f}{naive / seconds:>9.2f}x")
    print(f"2 vs 1 workers: {ray1['seconds'] / ray2['seconds']:.2f}x "
          f"(wall incl. Ray start and model load: {ray1['wall']:.1f} s vs {ray2['wall']:.1f} s)")


if __name__ == "__main__":
    main()
