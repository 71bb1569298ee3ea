"""The pipeline for real: ``dvc repro`` on a copy of the project with tiny params, then what it
left in MLflow. One run of the whole chain serves every test here (module fixture)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mmrm.pipeline import PipelineParams, load_params

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

#: Small enough for CI: two environments, two variants, a few steps; same code paths.
TINY = {
    "benchmark": {"seed": 0, "train_size": 24, "test_size": 12, "image_size": 32,
                  "best_of_n": {"items": 2, "candidates": 3}},
    "base": {"seed": 0, "image_size": 32, "hidden_size": 32, "vision_layers": 1,
             "text_layers": 1, "align_steps": 3, "tune_steps": 3, "batch_size": 8,
             "eval_scenes": 10},
    "environments": ["povid", "rlhfv"],
    "variants": ["none", "sfc_two_stage"],
    "train": {"seed": 0, "epochs": 1, "max_steps": 2, "lr": 1.0e-3, "batch_size": 8,
              "overrides": []},
    "score": {"workers": 1, "batch_responses": 12},
}


def test_shipped_params_and_dvc_stages_validate():
    params = load_params(ROOT / "params.yaml")
    assert params.variants and set(params.environments) == {"povid", "rlhfv", "vlfeedback"}
    PipelineParams.model_validate(TINY)
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    from mmrm.pipeline import STAGES
    for name, stage in stages.items():
        cmd = (stage.get("do") or stage)["cmd"]
        assert cmd.startswith("mmrm stage ") and cmd.split()[2] in STAGES, name


def run(cmd, cwd, **kw):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, **kw)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def ran_stages(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines()
            if line.startswith("Running stage '")}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A fresh git + DVC project holding this repo's pipeline files and tiny params, after
    one complete ``dvc repro``."""
    folder = tmp_path_factory.mktemp("project")
    for name in ("dvc.yaml", ".gitignore", ".dvcignore"):
        shutil.copy(ROOT / name, folder / name)
    for name in ("mmrm", "configs"):
        shutil.copytree(ROOT / name, folder / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    (folder / "params.yaml").write_text(yaml.safe_dump(
        PipelineParams.model_validate(TINY).model_dump(mode="json")))
    run(["git", "init", "-q"], folder)
    run([sys.executable, "-m", "dvc", "init", "-q"], folder)
    first = run([sys.executable, "-m", "dvc", "repro"], folder, timeout=1500)
    return folder, first


def test_repro_runs_everything_then_nothing_then_only_what_a_param_touches(project):
    folder, first = project
    assert ran_stages(first) == {
        "benchmark", "convert@povid", "convert@rlhfv", "base", "proxy@povid", "proxy@rlhfv",
        "train@povid-none", "train@povid-sfc_two_stage", "train@rlhfv-none",
        "train@rlhfv-sfc_two_stage", "evaluate", "score"}
    metrics = json.loads((folder / "runs/pipeline/matrix/metrics.json").read_text())
    assert set(metrics["variants"]) == {"none", "sfc_two_stage"}
    assert (folder / "runs/pipeline/matrix/matrix.png").stat().st_size > 1000
    assert {"anticue", "best_of_n/fully_correct", "best_of_n/random_fully_correct"} <= set(
        metrics["variants"]["none"])
    scores = [json.loads(line) for line in open(folder / "runs/pipeline/scores/scores.jsonl")]
    assert len(scores) == 4 and all(len(s["scores"]) == len(s["errors"]) == 3 for s in scores)
    best_of_n = json.loads((folder / "runs/pipeline/scores/best_of_n.json").read_text())
    assert best_of_n["items"] == 4 and best_of_n["oracle_fully_correct"] == 1.0

    second = run([sys.executable, "-m", "dvc", "repro"], folder, timeout=600)
    assert ran_stages(second) == set() and "Data and pipelines are up to date" in second

    params = yaml.safe_load((folder / "params.yaml").read_text())
    params["train"]["lr"] = 2.0e-3
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    third = run([sys.executable, "-m", "dvc", "repro"], folder, timeout=1500)
    assert ran_stages(third) == {
        "proxy@povid", "proxy@rlhfv", "train@povid-none", "train@povid-sfc_two_stage",
        "train@rlhfv-none", "train@rlhfv-sfc_two_stage", "evaluate", "score"}


def test_mlflow_holds_the_lineage_of_the_pipeline(project):
    import mlflow
    import pandas as pd

    folder, _ = project
    mlflow.set_tracking_uri(f"sqlite:///{folder / 'mlflow.db'}")
    mlflow.set_registry_uri(f"sqlite:///{folder / 'mlflow.db'}")
    experiment = mlflow.get_experiment_by_name("mmrm")
    runs = mlflow.search_runs([experiment.experiment_id], output_format="list")
    parents = {r.info.run_id: r for r in runs if r.data.tags.get("mmrm.role") == "pipeline"}
    stages = [r for r in runs if r.data.tags.get("mmrm.role") == "stage"]
    assert parents and stages
    assert {r.data.tags["mlflow.parentRunId"] for r in stages} <= set(parents)
    first_parent = [r for r in stages if r.data.tags["mmrm.stage"] == "benchmark"][0] \
        .data.tags["mlflow.parentRunId"]
    assert {r.data.tags["mmrm.stage"] for r in stages
            if r.data.tags["mlflow.parentRunId"] == first_parent} >= {
        "benchmark", "base", "evaluate", "score", "train/povid/none",
        "train/povid/sfc_two_stage"}

    trains = [r for r in stages if r.data.tags["mmrm.stage"].startswith("train/")]
    names = {variant: [set(r.data.metrics) for r in trains
                       if r.data.tags["mmrm.variant"] == variant]
             for variant in ("none", "sfc_two_stage")}
    assert names["none"] and names["sfc_two_stage"]
    assert all(n == names["none"][0] for runs in names.values() for n in runs)
    assert {"iid_mean", "ood_mean", "eval/povid/accuracy", "eval/rlhfv/accuracy", "loss",
            "weight/mean", "weight/p90", "weight/mean_proxy_wrong", "proxy_loss"} \
        <= names["none"][0]
    from mmrm.tracking import file_md5
    for r in trains:
        digests = {d.dataset.name: d.dataset.digest for d in r.inputs.dataset_inputs}
        env = r.data.tags["mmrm.environment"]
        assert digests[f"{env}/train"] == file_md5(
            folder / "data/benchmark/pairs" / env / "train.jsonl")
        assert r.data.tags["mlflow.source.git.commit"]

    champion = mlflow.pyfunc.load_model("models:/mmrm-reward-model@champion")
    pair = json.loads(open(folder / "data/benchmark/pairs/povid/test.jsonl").readline())
    image = str(folder / "data/benchmark/pairs/povid" / pair["img_path"])
    rows = pd.DataFrame(
        [{"prompt": pair["prompt"], "img_path": image, "response": pair["chosen"]},
         {"prompt": pair["prompt"], "img_path": image, "response": pair["rejected"]}])
    rewards = champion.predict(rows, params={"image_root": str(folder)})
    assert len(rewards) == 2 and all(isinstance(r, float) for r in rewards)
    # the image rules hold behind the registry too: a path outside the root is refused
    with pytest.raises(Exception, match="is outside the data root"):
        champion.predict(rows, params={"image_root": str(folder / "data" / "benchmark" / "raw")})
    metrics = json.loads((folder / "runs/pipeline/matrix/metrics.json").read_text())
    version = mlflow.MlflowClient().get_model_version_by_alias("mmrm-reward-model", "champion")
    assert version.tags["mmrm.model_dir"] == metrics["champion_dir"]
