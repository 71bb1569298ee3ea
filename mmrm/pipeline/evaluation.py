"""The evaluate stage: the cross-distribution matrix of every trained model, per model its
shortcut measures (anti-cue accuracy, best-of-N quality) and diagnosis (SFD, cue-balanced
accuracy, pair weights early / middle / late), per variant the means
(``metrics/pipeline.json``), and the champion policy for the best mean OOD model."""

from __future__ import annotations

import json
import shutil
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mmrm.tracking.runs import active_run_id, stage_run
from mmrm.tracking.registry import evaluation_key, promote
from mmrm.pipeline import say, write_json
from mmrm.pipeline.params import PipelineParams

if TYPE_CHECKING:
    import torch

#: The per-model measures averaged per variant into ``metrics/pipeline.json``, with the
#: best-of-N curve's points (``bon_n<N>``: the pick among N candidates fully correct).
VARIANT_MEASURES = ("anticue", "bon_correct", "bon_errors", "bon_oracle", "bon_random")
CURVE_PREFIX = "bon_n"


def evaluate(params: PipelineParams) -> dict:
    """The matrix, the measures, the variant means and the champion (see the module)."""
    from mmrm.evaluate.matrix import cross_distribution

    models = {f"{env}/{v}": params.model_dir(env, v) / "final"
              for env in params.environments for v in params.all_variants}
    tests = {env: params.pairs(env, "test") for env in params.test_columns}
    with stage_run(params, "evaluate") as tracker:
        say(f"evaluating {len(models)} models on {len(tests)} test sets")
        matrix = cross_distribution(models, tests)
        paths = matrix.write(params.matrix_dir)
        shortcut, diagnosis = model_measures(params, models)
        metrics = variant_metrics(params, matrix, shortcut)
        for variant, values in metrics.items():
            tracker.log_metrics({f"{variant}/{k}": x for k, x in values.items()})
            for n, value in curve_points(values).items():   # a curve in MLflow's charts
                tracker.log_metrics({f"{variant}/best_of_n_curve": value}, step=n)
        chosen = choose_champion(params, matrix, models, tests, tracker)
        write_json(params.metrics_dir / "pipeline.json", metrics)
        params.metrics_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(paths["png"], params.metrics_dir / "matrix.png")
        write_json(params.matrix_dir / "shortcut.json", shortcut)
        write_json(params.matrix_dir / "diagnosis.json", diagnosis)
        # the registry's decision (version numbers) is not an output DVC tracks: it goes to
        # MLflow and beside the runs
        decision = chosen.pop("decision", None)
        write_json(params.matrix_dir / "champion.json", chosen)
        if decision is not None:
            write_json(Path(params.paths.runs) / "registry" / "decision.json", decision)
        for path in [*paths.values(), params.matrix_dir / "shortcut.json",
                     params.matrix_dir / "diagnosis.json"]:
            tracker.log_artifact(path, "matrix")
    return {"matrix": matrix, "metrics": metrics, "champion": chosen, "decision": decision}


def model_measures(params: PipelineParams, models: dict[str, Path]) -> tuple[dict, dict]:
    """Per model its shortcut measures (:func:`shortcut_measures`) and diagnosis
    (:func:`model_diagnosis`), each model loaded once; per environment its proxies'
    accuracies. What every model of an environment is measured against is read once
    (:func:`environment_view`)."""
    from mmrm.inference import load_reward_model

    shortcut, diagnosis = {}, {"models": {}, "proxies": {}}
    best_of_n = best_of_n_source(params)      # written once, read by every model
    views = {env: environment_view(params, env) for env in params.environments}
    for env, view in views.items():
        if view.proxy_accuracy is not None:
            diagnosis["proxies"][env] = view.proxy_accuracy
    for row, model_dir in models.items():
        view = views[row.split("/")[0]]
        model, collator = load_reward_model(model_dir)
        shortcut[row] = shortcut_measures(model, collator, view, best_of_n)
        say(f"{row}: " + ", ".join(f"{k} {v:.3f}" for k, v in shortcut[row].items()))
        diagnosis["models"][row] = model_diagnosis(model, collator, view, model_dir,
                                                   shortcut[row].get("anticue"))
    return shortcut, diagnosis


@dataclass
class EnvironmentView:
    """What every model of one environment is measured against: its test pairs, where its
    text-only proxies fail on them (None without proxies) and the proxies' accuracies, the
    own cue's side per test pair and the anti-cue split (builtin environments only)."""

    env: str
    test: list
    failure: torch.Tensor | None = None
    proxy_accuracy: dict | None = None
    own_cue_on_chosen: list[bool] | None = None
    anticue: list | None = None


def environment_view(params: PipelineParams, env: str) -> EnvironmentView:
    """:class:`EnvironmentView` of ``env``: its files read and its proxies run once."""
    from mmrm.data import load_pairs
    from mmrm.evaluate.diagnosis import proxy_margins

    view = EnvironmentView(env, load_pairs(params.pairs(env, "test")))
    cache = params.proxy_dir(env) / "proxy_losses.json"
    if cache.exists():
        stats = json.loads(cache.read_text())
        margins = proxy_margins(params.proxies(env), view.test)
        view.failure = margins <= 0
        view.proxy_accuracy = {
            "in_sample": stats["accuracy_in_sample"],
            "out_of_sample": stats["accuracy_out_of_sample"],
            "test": float(((margins > 0).float() + 0.5 * (margins == 0).float()).mean())}
    if params.is_builtin(env):        # a released data set has no anti-cue split
        from mmrm.synthetic.environments import own_cue_on_chosen

        view.anticue = load_pairs(params.pairs(env, "anticue"))
        view.own_cue_on_chosen = [own_cue_on_chosen(env, p.chosen, p.rejected)
                                  for p in view.test]
    return view


def shortcut_measures(model, collator, view: EnvironmentView,
                      best_of_n: tuple[Path, Path]) -> dict[str, float]:
    """One model's accuracy on its environment's anti-cue split (every cue against the side
    training favoured) and the quality of its best-of-N picks over every environment's items
    (``best_of_n``: the items file and image root of :func:`best_of_n_source`)."""
    from mmrm.evaluate.metrics import best_of_n_file, pairwise_accuracy
    from mmrm.inference import score_pairs

    measures = {}
    if view.anticue is not None:
        measures["anticue"] = pairwise_accuracy(*score_pairs(model, collator, view.anticue))
    items, root = best_of_n
    report = best_of_n_file(model, collator.processor, items, image_root=root)
    measures.update(bon_correct=report["fully_correct"], bon_errors=report["mean_errors"],
                    bon_random=report["random_fully_correct"],
                    bon_oracle=report["oracle_fully_correct"],
                    **{f"{CURVE_PREFIX}{n}": v for n, v in report["curve"].items()})
    return measures


def curve_points(measures: dict[str, float]) -> dict[int, float]:
    """The best-of-N curve in a model's (or variant's) measures: ``{N: fully correct}``."""
    return {int(k[len(CURVE_PREFIX):]): v for k, v in measures.items()
            if k.startswith(CURVE_PREFIX)}


def model_diagnosis(model, collator, view: EnvironmentView, model_dir: Path,
                    anticue: float | None) -> dict:
    """How much one model leans on the text: its SFD on its environment's test split (the
    proxies decide the shortcut-failure subset), its cue-balanced accuracy (builtin
    environments) and its pair weights early / middle / late in training (its run's log)."""
    from mmrm.evaluate.diagnosis import (cue_balanced_accuracy, shortcut_failure_degradation,
                                         weight_phases)
    from mmrm.inference import score_pairs

    chosen, rejected = score_pairs(model, collator, view.test)
    found = {}
    if view.failure is not None:
        found.update(shortcut_failure_degradation(chosen, rejected, view.failure))
    if anticue is not None:
        found["cue_balanced"] = cue_balanced_accuracy(chosen, rejected,
                                                      view.own_cue_on_chosen, anticue)
    log = model_dir.parent / "metrics.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines()] \
        if log.exists() else []
    found["weights"] = weight_phases(records)
    return found


def variant_metrics(params: PipelineParams, matrix, shortcut: dict) -> dict[str, dict]:
    """Per variant, the means over environments of ID, OOD, anti-cue and best-of-N; and
    ``all`` over every model: numbers only, so ``dvc metrics diff`` compares them."""
    metrics = {}
    for v in params.all_variants:
        rows = [f"{env}/{v}" for env in params.environments]
        summaries = [matrix.row_summary(r) for r in rows]
        curve = sorted({k for r in rows for k in shortcut[r] if k.startswith(CURVE_PREFIX)},
                       key=lambda k: int(k[len(CURVE_PREFIX):]))
        keys = [k for k in (*VARIANT_MEASURES, *curve) if any(k in shortcut[r] for r in rows)]
        metrics[v] = {"ID": statistics.mean(r["ID"] for r in summaries),
                      "OOD": statistics.mean(r["OOD"] for r in summaries),
                      **{key: statistics.mean(shortcut[r][key] for r in rows
                                              if key in shortcut[r]) for key in keys}}
    total = matrix.summary()
    metrics["all"] = total
    return {name: {k: round(x, 6) for k, x in values.items()}
            for name, values in metrics.items()}


def choose_champion(params: PipelineParams, matrix, models: dict[str, Path], tests: dict,
                    tracker) -> dict:
    """The best mean-OOD model, and (tracking on) the registry's decision about it."""
    champion = max(models, key=lambda row: matrix.row_summary(row)["OOD"])
    chosen = {"champion": champion, "champion_dir": str(models[champion]),
              **matrix.row_summary(champion)}
    if params.tracking.enabled:
        chosen["decision"] = promote(params.tracking.registered_model, models[champion],
                                     matrix.row_summary(champion)["OOD"],
                                     evaluation_key(tests), active_run_id())
        tracker.set_tags({"mmrm.champion_decision": chosen["decision"]["why"]})
        say(f"registry: {champion} -> @{chosen['decision']['alias']} "
            f"({chosen['decision']['why']})")
    return chosen


def best_of_n_source(params: PipelineParams) -> tuple[Path, Path]:
    """The best-of-N items of known quality and their image root: the synthetic items when
    there are builtin environments; else every environment's test pairs as two answers of
    known order (the chosen one right), written under ``runs``."""
    if params.builtin:
        return params.best_of_n, params.best_of_n.parent
    path = Path(params.paths.runs) / "best_of_n" / "items.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for env in params.environments:
            for line in params.pairs(env, "test").read_text().splitlines():
                pair = json.loads(line)
                image = (params.pairs(env, "test").parent / pair["img_path"]).resolve()
                f.write(json.dumps({"id": f"{env}/{pair['id']}", "prompt": pair["prompt"],
                                    "img_path": str(image),
                                    "responses": [pair["chosen"], pair["rejected"]],
                                    "errors": [0, 1]}) + "\n")
    return path, Path(params.paths.envs).resolve()
