"""The package stands alone: a wheel installed into a fresh environment outside the checkout
runs the built-in default from another folder (benchmark, base, a shipped training config by
name, scoring), with nothing read from the repository."""

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import yaml


ROOT = Path(__file__).resolve().parents[2]


def run(cmd, cwd, env, timeout=600):
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"{cmd}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def test_wheel_runs_the_default_from_another_folder(tmp_path):
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(dist), str(ROOT)], tmp_path, os.environ)
    [wheel] = dist.glob("mmrm-*.whl")
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], tmp_path, os.environ)
    # the dependencies come from this environment (torch & co. are not downloaded again);
    # a plain path entry does not run this environment's editable-install hook
    site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / \
        "site-packages"
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PATH=f"{venv / 'bin'}:{env['PATH']}", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps",
         "--no-index", str(wheel)], tmp_path, env)
    where = run([str(venv / "bin" / "python"), "-c", "import mmrm; print(mmrm.__file__)"],
                tmp_path, env)
    assert where.strip().startswith(str(site)), where

    work = tmp_path / "elsewhere"
    work.mkdir()
    (work / "bench.yaml").write_text(yaml.safe_dump({
        "image_size": 32, "splits": [{"name": "train", "size": 24},
                                     {"name": "test", "size": 12}]}))
    (work / "base.yaml").write_text(yaml.safe_dump({
        "image_size": 32, "hidden_size": 32, "vision_layers": 1, "text_layers": 1,
        "heads": 2, "align_steps": 2, "tune_steps": 2, "batch_size": 4, "eval_scenes": 4}))
    mmrm = str(venv / "bin" / "mmrm")
    run([mmrm, "benchmark", "make", "data/benchmark", "--config", "bench.yaml"], work, env)
    run([mmrm, "base", "pretrain", "data/base/tiny", "--config", "base.yaml"], work, env)
    out = run([mmrm, "train", "tiny/none", "max_steps=2", "per_device_batch_size=4",
               "data.train=[data/benchmark/pairs/povid/train.jsonl]", "data.eval={}",
               "--no-resume"], work, env, timeout=900)
    # the CLI prints its progress lines, then the result as one indented JSON document
    assert json.loads(out[out.index("\n{\n") + 1:])["steps"] == 2
    model = work / "runs" / "tiny" / "povid" / "none" / "final"
    assert (model / "train_config.json").exists()
    pairs = [json.loads(line) for line in
             (work / "data/benchmark/pairs/povid/test.jsonl").read_text().splitlines()[:3]]
    items = work / "data/benchmark/pairs/povid/items.jsonl"
    items.write_text("".join(json.dumps({"prompt": p["prompt"], "img_path": p["img_path"],
                                         "responses": [p["chosen"], p["rejected"]]}) + "\n"
                             for p in pairs))
    run([mmrm, "score", str(model), str(items), "scores.jsonl"], work, env)
    scored = [json.loads(line) for line in (work / "scores.jsonl").read_text().splitlines()]
    assert len(scored) == 3 and all(len(s["scores"]) == 2 for s in scored)
