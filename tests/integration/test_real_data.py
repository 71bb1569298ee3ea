"""The paper's experiment on released data sets through the same pipeline: small copies of
POVID, RLHF-V and VLFeedback in their released formats, declared as real sources in a
project's params, tracked by DVC, pushed to a local remote, and `dvc repro` runs convert ->
split -> proxy -> train -> matrix -> score; a second clone pulls the raw data and reproduces
the converted pairs byte for byte."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from mmrm.pipeline.params import PipelineParams


ROOT = Path(__file__).resolve().parents[2]
GIT = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
       "GIT_COMMITTER_EMAIL": "t@t"}
SOURCES = {"povid_real": "povid", "rlhfv_real": "rlhfv", "vlf_real": "vlfeedback"}


def run(cmd, cwd, timeout=1500):
    env = {**os.environ, **GIT, "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, " ".join(map(str, cmd)) + "\n" + done.stdout[-3000:] + \
        done.stderr[-3000:]
    return done.stdout + done.stderr


def ran_stages(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines()
            if line.startswith("Running stage '")}


def released_copies(raw: Path) -> dict[str, dict]:
    """Small POVID / RLHF-V / VLFeedback files in their released formats (the benchmark's
    writers), and how params name them."""
    from mmrm.synthetic.environments import BenchmarkConfig, SplitConfig, write_benchmark

    written = write_benchmark(raw / "synthetic", BenchmarkConfig(
        seed=3, image_size=32, splits=[SplitConfig(name="all", size=36)]))
    specs = {}
    for name, env in SOURCES.items():
        [w] = [w for w in written if w.environment == env]
        target = raw / name
        shutil.move(str(w.raw.src.parent), str(target))
        src = target / w.raw.src.name
        spec = {"format": w.raw.format, "src": str(src.relative_to(raw.parent.parent)),
                "split": {"test": 0.3, "seed": 1}}
        if w.raw.image_root is not None:
            spec["image_root"] = str((target / w.raw.image_root.name).relative_to(
                raw.parent.parent))
        specs[name] = spec
    shutil.rmtree(raw / "synthetic")
    return specs


def test_released_data_sets_run_through_the_pipeline_and_a_clone_reproduces_them(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    for name in ("dvc.yaml", ".gitignore", ".dvcignore"):
        shutil.copy(ROOT / name, project / name)
    shutil.copytree(ROOT / "mmrm", project / "mmrm",
                    ignore=shutil.ignore_patterns("__pycache__"))
    specs = released_copies(project / "data" / "raw")
    params = PipelineParams.model_validate({
        "benchmark": {"image_size": 32, "train_size": 8, "test_size": 4,
                      "best_of_n": {"items": 1, "candidates": 2}},
        "base": {"image_size": 32, "hidden_size": 32, "vision_layers": 1, "text_layers": 1,
                 "align_steps": 2, "tune_steps": 2, "batch_size": 8, "eval_scenes": 4},
        "builtin": [], "real_datasets": specs,
        "environments": ["povid_real", "rlhfv_real"], "extra_tests": ["vlf_real"],
        "variants": ["none", "sfc_two_stage"],
        "train": {"finetune": "freeze_vision", "epochs": 1, "max_steps": 2,
                  "per_device_batch_size": 4, "optim": {"lr": 1e-3}},
        "score": {"batch_responses": 8}})
    (project / "params.yaml").write_text(yaml.safe_dump(params.model_dump(mode="json")))
    run(["git", "init", "-q"], project)
    run([sys.executable, "-m", "dvc", "init", "-q"], project)
    run([sys.executable, "-m", "dvc", "remote", "add", "-d", "local",
         str(tmp_path / "remote")], project)
    run([sys.executable, "-m", "dvc", "add", *[f"data/raw/{n}" for n in SOURCES]], project)

    first = run([sys.executable, "-m", "dvc", "repro"], project)
    assert {f"convert_real@{n}" for n in SOURCES} | {f"split@{n}" for n in SOURCES} | {
        "proxy@povid_real", "train@rlhfv_real-sfc_two_stage", "evaluate", "score"} <= \
        ran_stages(first)
    assert ran_stages(run([sys.executable, "-m", "dvc", "repro"], project)) == set()
    for name in SOURCES:
        manifest = json.loads((project / f"data/envs/{name}/split.manifest.json").read_text())
        assert manifest["leakage"]["images"] == 0 and manifest["grouped_by"] == ["images"]
        assert sum(manifest["pairs"].values()) == len(
            (project / f"data/envs/{name}/pairs.jsonl").read_text().splitlines())
    matrix = json.loads((project / "runs/pipeline/matrix/matrix.json").read_text())
    assert set(matrix["accuracy"]["povid_real/none"]) == {"povid_real", "rlhfv_real",
                                                          "vlf_real"}
    scored = (project / "runs/pipeline/scores/scores.jsonl").read_text().splitlines()
    assert scored and all(len(json.loads(s)["scores"]) == 2 for s in scored)

    import mlflow
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["mmrm"], output_format="list")
    from mmrm.tracking.tracker import file_md5
    converts = [r for r in runs if r.data.tags.get("mmrm.stage") == "convert/povid_real"]
    raw_digest = {d.dataset.name: d.dataset.digest
                  for d in converts[0].inputs.dataset_inputs}["povid_real/raw"]
    assert raw_digest == file_md5(project / specs["povid_real"]["src"])
    trains = [r for r in runs if r.data.tags.get("mmrm.stage") == "train/povid_real/none"]
    digests = {d.dataset.name: d.dataset.digest for d in trains[0].inputs.dataset_inputs}
    assert digests["povid_real/train"] == file_md5(project / "data/envs/povid_real/train.jsonl")
    mlflow.set_tracking_uri(None)

    run([sys.executable, "-m", "dvc", "push"], project)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "real data"], project)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    run([sys.executable, "-m", "dvc", "remote", "modify", "local", "url",
         str(tmp_path / "remote")], clone)
    run([sys.executable, "-m", "dvc", "pull", *[f"data/raw/{n}.dvc" for n in SOURCES]], clone)
    again = run([sys.executable, "-m", "dvc", "repro", *[f"split@{n}" for n in SOURCES]], clone)
    assert {f"convert_real@{n}" for n in SOURCES} <= ran_stages(again)
    for name in SOURCES:
        for file in ("pairs.jsonl", "train.jsonl", "test.jsonl", "split.manifest.json"):
            assert (clone / f"data/envs/{name}/{file}").read_bytes() == \
                (project / f"data/envs/{name}/{file}").read_bytes(), (name, file)
