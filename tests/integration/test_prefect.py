"""A real Prefect server on loopback: serve the deployments, trigger the built-in pipeline with
`prefect deployment run`, wait for it to complete, and stop everything started, by pid."""

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from flows.pipeline import resolve_params
from mmrm.pipeline.params import PipelineParams
from tiny_pipeline import tiny_params


ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

TINY = tiny_params(tracking=False)


def test_flow_parameters_are_validated(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(TINY))
    params = resolve_params(str(path), {"train.optim.lr": 0.002, "variants": ["none"]})
    assert params.train["optim"]["lr"] == 0.002 and params.variants == ["none"]
    with pytest.raises(ValueError, match="optim.lr"):
        resolve_params(str(path), {"train.optim.lr": -1})
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
        # start_prefect (make prefect-up) returns only once the deployments are served
        listed = subprocess.run([prefect, "deployment", "ls"], env=env, capture_output=True,
                                text=True)
        assert "mmrm-pipeline/builtin" in listed.stdout and "mmrm-score/file" in listed.stdout
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
        champion = json.loads((project / "runs/pipeline/matrix/champion.json").read_text())
        assert champion["champion"] in {row["trained on"]
                                        for row in json.loads(table[0]["data"])}
        names = {r["name"] for r in api(info, "/task_runs/filter", {"limit": 50})}
        assert {"benchmark", "base", "train[povid/none]", "train[rlhfv/sfc_two_stage]",
                "proxy[povid]", "evaluate", "score"} <= names
        # a bad override fails the run with the validation message in its state
        bad = subprocess.run([prefect, "deployment", "run", "mmrm-pipeline/builtin",
                              "--param", 'overrides={"train.optim.lr": -1}', "--watch",
                              "--watch-timeout", "300"], env=env, capture_output=True,
                             text=True, timeout=400)
        assert bad.returncode != 0
        failed = [r for r in api(info, "/flow_runs/filter", {"limit": 10})
                  if r["state"]["type"] == "FAILED"]
        assert failed and "optim.lr" in failed[0]["state"]["message"], failed
        assert (project / "runs/pipeline/scores/scores.jsonl").exists()
    finally:
        before = {name: len((state / f"{name}.log").read_text())
                  for name in ("prefect-serve", "prefect-server")}
        stopped = stop(state)
    assert stopped == ["prefect-serve", "prefect-server"]      # dependency order
    assert not any(_alive(pid) for pid in pids.values())
    for name, size in before.items():      # shutting down wrote no traceback
        assert "Traceback" not in (state / f"{name}.log").read_text()[size:], name
