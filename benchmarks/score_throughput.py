"""Responses/s of ``mmrm score`` vs a naive loop, and 1 vs 2 Ray workers, on the tiny base.

The naive loop is what scoring looks like without mmrm's batching: every (prompt, image,
response) is its own sequence, so the image is preprocessed and encoded once per response;
batches hold the same number of responses as mmrm's. Both use one torch thread per worker.
Same process, same model (the tiny base with a fresh value head), same items.

``mmrm score`` with ``preprocess=auto`` (the default) decodes images and tokenizes in the driver
process while the workers run the model when the workers leave a CPU free (1 worker on 2
CPUs): that is a second busy process beside the worker. The ``preprocess=worker`` row and
the in-process row keep everything in one process, like the naive loop.

    python benchmarks/score_throughput.py          # after make run: data/base/tiny, data/envs

``--random-base SHAPE`` scores with a randomly initialised LLaVA-style model of another shape
instead (the tiny base's vocabulary and chat template; weights untrained, which does not
change the work): ``llava-small`` has 256 image tokens per image (224 px, 14 px patches)
against the tiny base's 49, ``1b`` is a 1.0B-parameter model with 576 image tokens, for a
GPU (``--device cuda --dtype bf16``: the naive loop runs on the GPU, and the Ray workers get
one GPU each, or half of it each for the 2-worker row).
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

import torch  # noqa: E402

from mmrm.data import conversation, load_image, load_pairs  # noqa: E402
from mmrm.model import WEIGHT_DTYPES, RewardModel, load_processor  # noqa: E402
from mmrm.inference import ResponseScorer  # noqa: E402
from mmrm.score import ScoreConfig, score_file  # noqa: E402
from mmrm.synthetic.tiny_vlm import BENCHMARK_SHAPES as SHAPES  # noqa: E402
from mmrm.synthetic.tiny_vlm import random_base  # noqa: E402

def write_items(pairs_file: Path, out: Path, items: int, responses: int) -> list[dict]:
    """Items of ``responses`` answers from the pairs' texts, written to ``out`` with image
    paths relative to the pairs' folder (the scorer's ``image_root``); the rows returned
    carry each image's own path for the loops without a scorer."""
    pairs = load_pairs(pairs_file)[:items]
    rows = []
    for p in pairs:
        candidates = [p.chosen, p.rejected] * responses
        rows.append({"id": p.id, "prompt": p.prompt, "img_path": p.img_path,
                     "responses": [f"{c} ({k})" for k, c in enumerate(candidates[:responses])]})
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return [{**r, "img_path": str(p.image_file)} for r, p in zip(rows, pairs)]


@torch.no_grad()
def naive_loop(model_dir: Path, rows: list[dict], batch: int, device: str = "cpu",
               dtype: str = "fp32") -> float:
    """Seconds to score every response as its own (prompt, image, response) sequence."""
    model = RewardModel.load(model_dir, dtype=WEIGHT_DTYPES[dtype]).to(device).eval()
    processor = load_processor(model_dir)
    triples = [(r["prompt"], r["img_path"], resp) for r in rows for resp in r["responses"]]
    started = time.perf_counter()
    for start in range(0, len(triples), batch):
        chunk = triples[start:start + batch]
        texts = [processor.apply_chat_template(conversation(p, resp, True), tokenize=False)
                 for p, _, resp in chunk]
        images = [load_image(Path(path)) for _, path, _ in chunk]
        inputs = processor(text=texts, images=images, return_tensors="pt", padding=True)
        inputs.pop("token_type_ids", None)
        model(**{k: v.to(device, WEIGHT_DTYPES[dtype]) if v.is_floating_point() else v.to(device)
                 for k, v in inputs.items()}).tolist()   # tolist: waits for the GPU
    return time.perf_counter() - started


def in_process(model_dir: Path, rows: list[dict], batch: int, device: str = "cpu",
               dtype: str = "fp32") -> float:
    """Seconds for mmrm's scorer without Ray (items packed up to ``batch`` responses)."""
    scorer = ResponseScorer(str(model_dir), dtype=dtype, device=device)
    per_batch = max(1, batch // len(rows[0]["responses"]))
    items = [{"line": i, "prompt": r["prompt"], "responses": r["responses"],
              "image_file": r["img_path"]} for i, r in enumerate(rows)]
    started = time.perf_counter()
    for start in range(0, len(items), per_batch):
        scorer.score(items[start:start + per_batch])
    return time.perf_counter() - started


def with_ray(model_dir: Path, src: Path, work: Path, workers: int, batch: int,
             attempt: int = 0, preprocess: str = "auto", device: str = "cpu",
             dtype: str = "fp32", image_root: Path | None = None) -> dict:
    out = work / f"scores-{workers}-{preprocess}-{attempt}.jsonl"
    gpus = 1 / workers if device == "cuda" else 0.0   # all workers share one GPU
    started = time.perf_counter()
    totals = score_file(ScoreConfig(model=str(model_dir), input=str(src), output=str(out),
                                    workers=workers, batch_responses=batch,
                                    preprocess=preprocess, gpus_per_worker=gpus, dtype=dtype,
                                    image_root=str(image_root) if image_root else None))
    return {"seconds": totals["seconds"], "wall": time.perf_counter() - started,
            "preprocess": totals["preprocess"], "busy": totals["workers_busy"]}


def counted_work(run, *args, **kwargs) -> dict:
    """The work of one call of ``run`` as torch's profiler counts it: FLOPs (of the operators
    it counts: matrix products, convolutions, elementwise products and sums; not attention)
    and seconds inside torch operators, which leaves out Python and framework overhead."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        run(*args, **kwargs)
    events = prof.key_averages()
    return {"flops": sum(e.flops for e in events),
            "op_seconds": sum(e.self_cpu_time_total for e in events) / 1e6,
            "attention_seconds": sum(e.self_cpu_time_total for e in events
                                     if "scaled_dot_product" in e.key) / 1e6}


def compare_counted_work(model_dir: Path, rows: list[dict], batch: int, on: dict) -> dict:
    """:func:`counted_work` of the naive loop and of the in-process scorer (after the timed
    runs, which are their warm-up)."""
    return {name: counted_work(run, model_dir, rows, batch, **on)
            for name, run in (("naive", naive_loop), ("in process", in_process))}


def print_counted_work(work: dict) -> None:
    """The two runs' work and its ratio: the speed-up the scorer could reach if its time were
    its operators' alone."""
    print(f"{'counted work':<28}{'GFLOP':>9}{'op seconds':>12}{'of it attention':>17}")
    for name, w in work.items():
        print(f"{name:<28}{w['flops'] / 1e9:>9.2f}{w['op_seconds']:>12.2f}"
              f"{w['attention_seconds']:>17.2f}")
    naive, mmrm = work["naive"], work["in process"]
    print(f"naive / mmrm: {naive['flops'] / mmrm['flops']:.2f}x FLOPs, "
          f"{naive['op_seconds'] / mmrm['op_seconds']:.2f}x operator time")


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--base", type=Path, default=Path("data/base/tiny"))
    parser.add_argument("--pairs", type=Path,
                        default=Path("data/envs/povid/test.jsonl"))
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--responses", type=int, default=8)
    parser.add_argument("--batch", type=int, default=64, help="responses per forward")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    parser.add_argument("--random-base", choices=sorted(SHAPES),
                        help="a random-init model of this shape instead of --base")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=sorted(WEIGHT_DTYPES), default="fp32")
    parser.add_argument("--no-ray", action="store_true",
                        help="only the naive loop and the in-process scorer (no Ray installed)")
    parser.add_argument("--count-work", action="store_true",
                        help="also count the FLOPs and operator time of the naive loop and the "
                             "in-process scorer (torch's profiler): the ratio a scorer without "
                             "overhead would reach")
    args = parser.parse_args()
    torch.set_num_threads(1)
    on = {"device": args.device, "dtype": args.dtype}

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base = random_base(args.random_base, work / "base") if args.random_base else args.base
        model_dir = work / "rm"
        model = RewardModel.from_base(base)
        params = sum(p.numel() for p in model.parameters())
        model.save(model_dir, load_processor(base))
        del model
        src = work / "items.jsonl"
        rows = write_items(args.pairs, src, args.items, args.responses)
        n = sum(len(r["responses"]) for r in rows)

        # best of --repeat runs each (these machines are noisy), interleaved
        runs: dict[str, list[dict]] = {}
        for attempt in range(args.repeat):
            runs.setdefault("naive", []).append(
                {"seconds": naive_loop(model_dir, rows, args.batch, **on)})
            runs.setdefault("in process", []).append(
                {"seconds": in_process(model_dir, rows, args.batch, **on)})
            if args.no_ray:
                continue
            for key, workers, preprocess in (("ray 1", 1, "auto"), ("ray 1 worker", 1, "worker"),
                                             ("ray 2", 2, "auto")):
                runs.setdefault(key, []).append(with_ray(model_dir, src, work, workers,
                                                         args.batch, attempt, preprocess, **on,
                                                         image_root=args.pairs.parent))
        best = {key: min(r, key=lambda run: run["seconds"]) for key, r in runs.items()}
        work = compare_counted_work(model_dir, rows, args.batch, on) if args.count_work else None

    print(f"{args.random_base or args.base} (random init: {bool(args.random_base)}), "
          f"{params / 1e6:.1f}M parameters, {args.dtype} on {args.device}")
    per_worker = "one GPU" if args.device == "cuda" else "1 torch thread"
    print(f"{len(rows)} items x {args.responses} responses = {n} responses, "
          f"batches of {args.batch} responses, {per_worker} per worker, best of {args.repeat}")
    print(f"{'run':<52}{'seconds':>9}{'responses/s':>13}{'vs naive':>10}{'busy':>7}")
    names = {"naive": "naive loop (image per response)", "in process": "mmrm scorer, in process",
             "ray 1": "mmrm score, Ray, 1 worker (preprocess: {})",
             "ray 1 worker": "mmrm score, Ray, 1 worker (preprocess: {})",
             "ray 2": "mmrm score, Ray, 2 workers (preprocess: {})"}
    naive = best["naive"]["seconds"]
    for key, run in best.items():
        name = names[key].format(run.get("preprocess"))
        busy = f"{run['busy']:>7.0%}" if "busy" in run else ""
        print(f"{name:<52}{run['seconds']:>9.2f}{n / run['seconds']:>13.1f}"
              f"{naive / run['seconds']:>9.2f}x{busy}")
    if not args.no_ray:
        print("busy: the share of the run the Ray workers spent in their scoring calls "
              "(the rest: waiting for the driver, Ray's hand-offs, start and end)")
    if work:
        print_counted_work(work)
    if not args.no_ray:
        one, two = best["ray 1"], best["ray 2"]
        print(f"2 vs 1 workers: {one['seconds'] / two['seconds']:.2f}x (wall incl. Ray start "
              f"and model load: {one['wall']:.1f} s vs {two['wall']:.1f} s)")


if __name__ == "__main__":
    main()
