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

from mmrm.pipeline.params import PipelineParams, load_params, variant_config
from tiny_pipeline import tiny_params


ROOT = Path(__file__).resolve().parents[2]

TINY = tiny_params()


def test_shipped_params_and_dvc_stages_validate():
    params = load_params(ROOT / "params.yaml")
    assert params.variants and set(params.environments) == {"povid", "rlhfv", "vlfeedback"}
    sys.path.insert(0, str(ROOT))
    from flows.serve import PARAMETER_SETS
    for name, (file, _) in PARAMETER_SETS.items():     # every deployment's parameter set
        assert load_params(ROOT / file).environments, name
    real = load_params(ROOT / "params.real.yaml")
    assert not real.builtin and set(real.real_datasets) == set(real.environments)
    for variant in real.variants:                       # its GPU run configs exist
        assert variant_config(real, variant).epochs == 1.0
    PipelineParams.model_validate(TINY)


@pytest.mark.parametrize("file", ["params.yaml", "params.real.yaml"])
def test_dvc_reads_the_shipped_dvc_yaml_with_each_shipped_params_file(file, tmp_path):
    """Every key dvc.yaml's templates name is in the file (DVC refuses the whole pipeline
    otherwise: 'Could not find ...')."""
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    shutil.copy(ROOT / file, tmp_path / "params.yaml")
    dvc = str(Path(sys.executable).parent / "dvc")
    subprocess.run([dvc, "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    listed = subprocess.run([dvc, "stage", "list"], cwd=tmp_path, capture_output=True,
                            text=True)
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert "train@" in listed.stdout and "evaluate" in listed.stdout


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
    # the stages talk: DVC shows each stage's progress as it runs
    assert "step 2/2 loss" in first and "evaluating 4 models" in first and "anticue" in first
    metrics = json.loads((folder / "metrics/pipeline.json").read_text())
    assert set(metrics) == {"none", "sfc_two_stage", "all"}
    assert {"ID", "OOD", "anticue", "bon_correct", "bon_random"} <= set(metrics["none"])
    assert all(isinstance(v, float) for values in metrics.values() for v in values.values())
    assert (folder / "metrics/matrix.png").stat().st_size > 1000
    scores = [json.loads(line) for line in open(folder / "runs/pipeline/scores/scores.jsonl")]
    assert len(scores) == 4 and all(len(s["scores"]) == len(s["errors"]) == 3 for s in scores)
    best_of_n = json.loads((folder / "runs/pipeline/scores/best_of_n.json").read_text())
    assert best_of_n["items"] == 4 and best_of_n["oracle_fully_correct"] == 1.0
    # tracked outputs carry no wall-clock figures
    for name in ("result.json", "metrics.jsonl"):
        text = (folder / "runs/pipeline/models/povid/none" / name).read_text()
        assert "seconds" not in text and "pairs_per_second" not in text
    assert "seconds" not in (folder / "data/base/tiny/pretrain_report.json").read_text()

    second = run([sys.executable, "-m", "dvc", "repro"], folder, timeout=600)
    assert ran_stages(second) == set() and "Data and pipelines are up to date" in second


def test_a_prefect_run_of_the_same_params_leaves_dvc_nothing_to_do(project, tmp_path):
    folder, _ = project
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               DO_NOT_TRACK="1", OMP_NUM_THREADS="1",
               PYTHONPATH=f"{ROOT}:{env.get('PYTHONPATH', '')}")
    done = subprocess.run([sys.executable, "-c", "from flows.pipeline import pipeline_flow; "
                           "pipeline_flow('params.yaml')"], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    status = run([sys.executable, "-m", "dvc", "status"], folder)
    assert "Data and pipelines are up to date" in status, status


def test_the_experiment_loop_compares_metrics_and_params_across_commits(project):
    folder, _ = project
    git = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    run(["git", "add", "-A"], folder)
    subprocess.run(["git", "commit", "-qm", "baseline"], cwd=folder, env=git, check=True)
    exp = run([sys.executable, "-m", "dvc", "exp", "run", "-S", "train.optim.lr=0.002"],
              folder, timeout=1500)
    assert ran_stages(exp) == {
        "proxy@povid", "proxy@rlhfv", "train@povid-none", "train@povid-sfc_two_stage",
        "train@rlhfv-none", "train@rlhfv-sfc_two_stage", "evaluate", "score"}
    params = run([sys.executable, "-m", "dvc", "params", "diff", "--json"], folder)
    assert json.loads(params)["params.yaml"]["train.optim.lr"]["new"] == 0.002
    metrics = json.loads(run([sys.executable, "-m", "dvc", "metrics", "diff", "--json"],
                             folder))
    changed = metrics["metrics/pipeline.json"]       # only what moved is listed
    assert changed and all(key.split(".")[0] in {"none", "sfc_two_stage", "all"}
                           and "new" in value and "old" in value
                           for key, value in changed.items())
    shown = run([sys.executable, "-m", "dvc", "exp", "show", "--json"], folder)
    assert "0.002" in shown
    run([sys.executable, "-m", "dvc", "plots", "diff", "HEAD", "-o", "plots-out"], folder)
    assert (folder / "plots-out" / "index.html").exists()


def test_mlflow_holds_the_lineage_of_the_pipeline(project):
    import mlflow
    import pandas as pd

    folder, _ = project
    mlflow.set_tracking_uri(f"sqlite:///{folder / 'mlflow.db'}")
    mlflow.set_registry_uri(f"sqlite:///{folder / 'mlflow.db'}")
    experiment = mlflow.get_experiment_by_name("mmrm")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
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
    assert {"ID", "OOD", "eval/povid/accuracy", "eval/rlhfv/accuracy", "loss",
            "weight/mean", "weight/p90", "weight/mean_proxy_wrong", "proxy_loss"} \
        <= names["none"][0]
    from mmrm.tracking.tracker import file_md5
    for r in trains:
        digests = {d.dataset.name: d.dataset.digest for d in r.inputs.dataset_inputs}
        env = r.data.tags["mmrm.environment"]
        assert digests[f"{env}/train"] == file_md5(
            folder / "data/envs" / env / "train.jsonl")
        assert r.data.tags["mlflow.source.git.commit"]

    uri = "models:/mmrm-reward-model@champion"
    champion = mlflow.pyfunc.load_model(uri, model_config={"image_root": str(folder)})
    pair = json.loads(open(folder / "data/envs/povid/test.jsonl").readline())
    image = str(folder / "data/envs/povid" / pair["img_path"])
    rows = pd.DataFrame(
        [{"prompt": pair["prompt"], "img_path": image, "response": pair["chosen"]},
         {"prompt": pair["prompt"], "img_path": image, "response": pair["rejected"]}])
    rewards = champion.predict(rows)
    assert len(rewards) == 2 and all(isinstance(r, float) for r in rewards)
    # the image rules hold behind the registry too, and their root is the server's: a path
    # outside it is refused, and a request cannot widen it
    narrow = mlflow.pyfunc.load_model(uri, model_config={
        "image_root": str(folder / "data" / "benchmark" / "raw")})
    for params in (None, {"image_root": "/"}):
        with pytest.raises(Exception, match="is outside the data root"):
            narrow.predict(rows, params=params)
    with pytest.raises(Exception, match="row 1: response"):
        champion.predict(rows.assign(response=["fine", ""]))
    version = mlflow.MlflowClient().get_model_version_by_alias("mmrm-reward-model", "champion")
    assert version.tags["mmrm.model_dir"].startswith(str((folder / "runs/pipeline/models")
                                                         .resolve()))
    assert version.tags["mmrm.decision"].startswith("champion")
    assert version.tags["mmrm.evaluate_run"] and version.description
    model = mlflow.MlflowClient().get_registered_model("mmrm-reward-model")
    assert "reward model" in model.description
    info = mlflow.models.get_model_info("models:/mmrm-reward-model@champion")
    assert [c["name"] for c in info.signature.inputs.to_dict()] == ["prompt", "img_path",
                                                                     "response"]


def stale_stages(folder: Path, module: str, edit) -> set[str]:
    """The stages ``dvc status`` marks stale for a change of ``module`` (edited by ``edit``,
    restored after)."""
    path = folder / module
    original = path.read_text()
    path.write_text(edit(original))
    assert path.read_text() != original
    try:
        status = json.loads(run([sys.executable, "-m", "dvc", "status", "--json"], folder))
    finally:
        path.write_text(original)
    return {name.split("@")[0] for name, changes in status.items()
            if any(isinstance(c, dict) and module in c.get("changed deps", {})
                   for c in changes)}


def test_a_changed_default_marks_every_stage_that_runs_it_stale(project):
    """Change a TrainConfig default in the project's mmrm/config.py: dvc status marks the
    proxy, train, evaluate and score stages stale (their code imports it), so models cannot
    silently stay stale; a change to the pair weighting leaves the data and base stages be."""
    folder, _ = project
    assert {"proxy", "train", "evaluate", "score"} <= stale_stages(
        folder, "mmrm/config.py",
        lambda text: text.replace("calibration_pairs: int = Field(1000,",
                                  "calibration_pairs: int = Field(999,"))
    weighting = stale_stages(folder, "mmrm/weighting.py", lambda text: text + "\n# edit\n")
    assert {"proxy", "train"} <= weighting
    assert not weighting & {"benchmark", "convert", "base"}, weighting


def test_a_built_base_is_reused_only_for_the_settings_it_was_built_with(tmp_path):
    """The flow's base task skips pre-training when the folder holds this very base; a base
    of another seed or visual level in the same folder is rebuilt, not silently reused."""
    from mmrm.pipeline.base import base_is_built, pretrain_base

    def params(**changes):
        raw = tiny_params(tracking=False)
        raw["paths"] = {"base": str(tmp_path / "base")}
        for key, value in changes.items():
            section, leaf = key.split(".")
            raw[section] = {**raw.get(section, {}), leaf: value}
        return PipelineParams.model_validate(raw)

    assert not base_is_built(params())                      # nothing there yet
    pretrain_base(params())
    assert base_is_built(params())
    assert not base_is_built(params(**{"base.seed": 1}))
    assert not base_is_built(params(**{"benchmark.visual": "V2"}))
    assert not base_is_built(params(**{"model.base": str(tmp_path / "base")}))
    (tmp_path / "base" / "pretrain_report.json").write_text("not json")
    assert not base_is_built(params())


#: Every script under benchmarks/ at tiny sizes; their paths are the defaults, which must be
#: what the pipeline writes (data/base/tiny, data/envs/<env>/...).
BENCHMARK_RUNS = {
    "read_pairs.py": ["--lines", "200"],
    "score_throughput.py": ["--items", "3", "--responses", "2", "--repeat", "1"],
    "train_throughput.py": ["--steps", "2", "--batch", "4", "--repeats", "1", "--runs",
                           "baseline", "none", "poe"],
    "encode_cache.py": ["--epochs", "2", "--batch", "8", "--repeats", "1"],
    "pretrain_prefetch.py": ["--steps", "2", "2", "--repeats", "1"],
    "gpu_check.py": None,       # builds its own inputs: its dry run is test_gpu_check.py
    "serve_load.py": ["--requests", "8", "--responses", "2", "--concurrency", "2",
                      "--repeats", "1"],
}


def test_every_benchmark_runs_with_its_default_paths_after_the_pipeline(project, tmp_path):
    folder, _ = project
    scripts = sorted(p.name for p in (ROOT / "benchmarks").glob("*.py"))
    assert scripts == sorted(BENCHMARK_RUNS), "a benchmark script without a smoke run"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "OMP_NUM_THREADS": "1", "OUT": str(tmp_path)}
    for name, arguments in BENCHMARK_RUNS.items():
        if arguments is None:
            continue
        done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *arguments],
                              cwd=folder, env=env, capture_output=True, text=True,
                              timeout=900)
        assert done.returncode == 0, (name, done.stdout[-2000:], done.stderr[-3000:])
        assert done.stdout.strip(), name
