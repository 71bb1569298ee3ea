"""Scale-out: the Prefect flow runs its stages as tasks on a (local, 2-CPU, loopback) Ray
cluster, independent ones at the same time; two training tasks overlap in time."""

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from mmrm.pipeline.params import PipelineParams
from tiny_pipeline import tiny_params


ROOT = Path(__file__).resolve().parents[2]

TINY = tiny_params(tracking=False, max_steps=6)


def test_flow_on_ray_runs_independent_trainings_at_the_same_time(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(
        PipelineParams.model_validate(TINY).model_dump(mode="json")))
    env = {k: v for k, v in os.environ.items()
           if k not in ("PREFECT_API_URL", "RAY_ADDRESS", "RAY_AUTH_MODE")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               DO_NOT_TRACK="1", OMP_NUM_THREADS="1",
               PYTHONPATH=f"{ROOT}:{env.get('PYTHONPATH', '')}")
    script = ("import json; from flows.pipeline import pipeline_flow; "
              "r = pipeline_flow('params.yaml', ray=True, ray_cpus=2); "
              "print('TRAINED ' + json.dumps(r['trained']))")
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("TRAINED "))
    trained = json.loads(line[len("TRAINED "):])
    assert len(trained) == 4
    spans = sorted((t["started"], t["finished"]) for t in trained)
    overlaps = [a for a, b in zip(spans, spans[1:]) if b[0] < a[1]]
    assert overlaps, spans                      # at least two trainings ran side by side
    assert (tmp_path / "runs/pipeline/scores/scores.jsonl").exists()
    assert json.loads((tmp_path / "metrics/pipeline.json").read_text())["none"]["ID"] >= 0
