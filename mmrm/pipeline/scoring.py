"""The score stage: the best-of-N items of known quality scored with the champion RM on Ray
(``mmrm score``'s code), and how good its picks are."""

from __future__ import annotations

import json
from pathlib import Path

from mmrm.tracking.runs import stage_run
from mmrm.pipeline import say, write_json
from mmrm.pipeline.evaluation import best_of_n_source
from mmrm.pipeline.params import PipelineParams


def score_sample(params: PipelineParams) -> dict:
    """Score the best-of-N items (known quality) with the champion model on Ray, and report
    how good its picks are."""
    from mmrm.config import ScoreConfig
    from mmrm.evaluate.metrics import best_of_n_quality
    from mmrm.score import score_file

    champion = json.loads((params.matrix_dir / "champion.json").read_text())
    out = Path(params.paths.runs) / "scores"
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("scores.*"):
        stale.unlink()             # a rerun of this stage scores afresh
    with stage_run(params, "score") as tracker:
        say(f"scoring the best-of-N items with {champion['champion']} on Ray")
        items, root = best_of_n_source(params)
        totals = score_file(ScoreConfig(model=champion["champion_dir"], input=str(items),
                                        image_root=str(root),
                                        output=str(out / "scores.jsonl"),
                                        workers=params.score.workers,
                                        gpus_per_worker=params.score.gpus_per_worker,
                                        dtype=params.score.dtype,
                                        batch_responses=params.score.batch_responses))
        scored = [json.loads(line) for line in open(out / "scores.jsonl")]
        quality = best_of_n_quality([s["errors"] for s in scored], [s["scores"] for s in scored])
        rate = totals["responses"] / max(totals["seconds"], 1e-9)
        tracker.log_metrics({"score/items": totals["items_scored"],
                             "score/responses_per_second": rate,
                             "score/workers_busy": totals["workers_busy"],
                             **{f"best_of_n/{k}": v for k, v in quality.items()}})
    write_json(out / "best_of_n.json", {"model": champion["champion"], **quality})
    write_json(params.metrics_dir / "best_of_n.json",
               {k: round(v, 6) for k, v in quality.items()})
    say(f"best-of-{len(scored[0]['scores'])} with the champion: fully correct picks "
        f"{quality['fully_correct']:.3f} (random {quality['random_fully_correct']:.3f}, "
        f"oracle {quality['oracle_fully_correct']:.3f})")
    return {"items": totals["items_scored"], "output": str(out / "scores.jsonl"), **quality}
