"""A real Prefect server on loopback: serve the deployments, trigger the built-in pipeline with
`prefect deployment run`, wait for it to complete, and stop everything started, by pid."""

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from flows.pipeline import resolve_params
from mmrm.pipeline import PipelineParams

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

TINY = {
    "benchmark": {"seed": 0, "train_size": 24, "test_size": 12, "image_size": 32,
                  "best_of_n": {"items": 2, "candidates": 3}},
    "base": {"seed": 0, "image_size": 32, "hidden_size": 32, "vision_layers": 1,
             "text_layers": 1, "align_steps": 3, "tune_steps": 3, "batch_size": 8,
             "eval_scenes": 10},
    "environments": ["povid", "rlhfv"], "variants": ["none", "sfc_two_stage"],
    "train": {"max_steps": 2, "batch_size": 8, "epochs": 1},
    "score": {"batch_responses": 12},
    "tracking": {"enabled": False},
}


def test_flow_parameters_are_validated(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(TINY))
    params = resolve_params(str(path), {"train.lr": 0.002, "variants": ["none"]})
    assert params.train.lr == 0.002 and [v.value for v in params.variants] == ["none"]
    with pytest.raises(ValueError, match="train.lr"):
        resolve_params(str(path), {"train.lr": -1})
    with pytest.raises(ValueError, match="Extra inputs"):
        resolve_params(str(path), {"train.learning_rate": 1})


def api(info, path, body=None):
    request = urllib.request.Request(info["api"] + path, method="POST" if body else "GET",
                                     data=json.dumps(body).encode() if body else None,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_deployment_run_completes_on_a_local_server(tmp_path):
    from services import start_prefect, stop, _alive

    project = tmp_path / "project"
    project.mkdir()
    (project / "params.yaml").write_text(yaml.safe_dump(
        PipelineParams.model_validate(TINY).model_dump(mode="json")))
    state = tmp_path / "services"
    info = start_prefect(state, project)
    pids = dict(info["pids"])
    try:
        env = {**os.environ, "PREFECT_API_URL": info["api"], "PREFECT_HOME": info["home"],
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
        prefect = str(Path(sys.executable).parent / "prefect")
        # the serve process registers the deployments shortly after it starts
        for _ in range(120):
            listed = subprocess.run([prefect, "deployment", "ls"], env=env,
                                    capture_output=True, text=True)
            if "mmrm-pipeline/builtin" in listed.stdout and "mmrm-score/file" in listed.stdout:
                break
            time.sleep(1)
        else:
            pytest.fail("deployments never appeared:\n" + listed.stdout +
                        (state / "prefect-serve.log").read_text()[-3000:])
        run = subprocess.run([prefect, "deployment", "run", "mmrm-pipeline/builtin", "--watch",
                              "--watch-timeout", "1200"], env=env, capture_output=True,
                             text=True, timeout=1500)
        logs = (state / "prefect-serve.log").read_text()[-4000:]
        assert run.returncode == 0, run.stdout[-3000:] + logs
        assert "Completed" in run.stdout

        runs = api(info, "/flow_runs/filter", {"limit": 5})
        done = [r for r in runs if r["state"]["type"] == "COMPLETED"]
        assert done, runs
        artifacts = api(info, "/artifacts/filter", {"limit": 20})
        table = [a for a in artifacts if a["key"] == "cross-distribution-matrix"]
        assert table and table[0]["type"] == "table"
        assert {row["trained on"] for row in json.loads(table[0]["data"])} == {
            "povid/none", "povid/sfc_two_stage", "rlhfv/none", "rlhfv/sfc_two_stage"}
        metrics = json.loads((project / "runs/pipeline/matrix/metrics.json").read_text())
        assert metrics["champion"] in {row["trained on"] for row in json.loads(table[0]["data"])}
        assert (project / "runs/pipeline/scores/scores.jsonl").exists()
    finally:
        stopped = stop(state)
    assert set(stopped) == set(pids)
    assert not any(_alive(pid) for pid in pids.values())
