"""Ray batch scoring: the same scores as one-at-a-time scoring, order, resume after the driver
is killed, a worker killed mid-run, bad items."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from mmrm.data import PairCollator, load_pairs, set_right_padding
from mmrm.formats import PairRecord
from mmrm.ledger import RecordError
from mmrm.model import RewardModel, load_processor
from mmrm.inference import ResponseScorer
from mmrm.score import ScoreConfig, preprocess_where, score_file



@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray for the module (starting Ray costs seconds), started as mmrm score starts
    one (loopback only); stopped at the end."""
    import ray

    from mmrm.cluster import start_ray

    start_ray(None, num_cpus=2)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def inference_file(tiny_pairs, tmp_path_factory):
    """30 items with 4 responses each, built from the tiny benchmark's pairs (ids kept)."""
    pairs = [p for env in ("povid", "rlhfv", "vlfeedback")
             for p in load_pairs(tiny_pairs[(env, "test")])][:30]
    path = tmp_path_factory.mktemp("inference") / "items.jsonl"
    with open(path, "w") as f:
        for p in pairs:
            f.write(json.dumps({"id": p.id, "prompt": p.prompt, "img_path": str(p.image_file),
                                "responses": [p.chosen, p.rejected, p.rejected + " Indeed.",
                                              "No."]}) + "\n")
    return path


@pytest.fixture(scope="module")
def reward_dir(trained_runs):
    return trained_runs["none"] / "final"


def config(reward_dir, inference_file, out, **changes):
    # the items name their images by absolute paths under several folders: the root is /
    return ScoreConfig(**{"model": str(reward_dir), "input": str(inference_file),
                          "output": str(out), "workers": 2, "batch_responses": 12,
                          "chunk_items": 4, "image_root": "/", **changes})


def read_lines(path):
    return [json.loads(line) for line in open(path)]


@pytest.fixture(scope="module")
def clean_run(ray_cluster, reward_dir, inference_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean") / "scores.jsonl"
    totals = score_file(config(reward_dir, inference_file, out, preprocess="driver"))
    assert totals["items_scored"] == 30 and totals["items_failed"] == 0
    assert totals["preprocess"] == "driver"
    return read_lines(out)


def test_workers_that_preprocess_themselves_give_the_same_scores(clean_run, reward_dir,
                                                                 inference_file, tmp_path):
    out = tmp_path / "worker.jsonl"
    totals = score_file(config(reward_dir, inference_file, out, preprocess="worker"))
    assert totals["preprocess"] == "worker"
    for driver, worker in zip(clean_run, read_lines(out), strict=True):
        assert worker["id"] == driver["id"]
        assert worker["scores"] == pytest.approx(driver["scores"], abs=1e-6)


def test_auto_preprocessing_uses_the_driver_where_it_has_a_cpu_of_its_own(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    where = {(workers, gpus, address): preprocess_where(ScoreConfig(
        model="m", input="i", output="o", workers=workers, gpus_per_worker=gpus,
        address=address)) for workers in (1, 2) for gpus in (0, 1) for address in (None, "x")}
    assert {key for key, value in where.items() if value == "worker"} == {(2, 0, None)}
    assert preprocess_where(ScoreConfig(model="m", input="i", output="o", workers=1,
                                        preprocess="worker")) == "worker"
    with pytest.raises(ValueError, match="preprocess"):     # validated like every config
        ScoreConfig(model="m", input="i", output="o", preprocess="gpu")


def test_workers_load_the_weights_in_the_dtype_asked_for_whatever_they_were_saved_in(
        reward_dir, inference_file, tmp_path):
    saved = tmp_path / "rm-bf16"
    RewardModel.load(reward_dir, dtype=torch.bfloat16).save(saved, load_processor(reward_dir))
    for dtype, expected in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        scorer = ResponseScorer(str(saved), dtype=dtype, device="cpu")
        assert {p.dtype for p in scorer.model.parameters()} == {expected}
    out = tmp_path / "scores.jsonl"
    with pytest.raises(ValueError, match="(?s)dtype.*'fp32', 'bf16' or 'fp16'"):
        score_file(config(reward_dir, inference_file, out, dtype="bfloat16"))
    assert not out.exists()   # refused before anything was written or started


def test_an_image_that_fails_to_decode_in_the_driver_is_reported_by_its_line(
        ray_cluster, reward_dir, inference_file, tmp_path):
    lines = open(inference_file).read().splitlines()[:6]
    item = json.loads(lines[2])
    data = open(item["img_path"], "rb").read()
    truncated = tmp_path / "truncated.jpg"          # a readable header, a cut-off body
    truncated.write_bytes(data[:len(data) // 2])
    item["img_path"] = str(truncated)
    lines[2] = json.dumps(item)
    src = tmp_path / "truncated.jsonl"
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "scores.jsonl"
    totals = score_file(config(reward_dir, src, out, on_error="skip", preprocess="driver"))
    assert totals["ledger"] == {"read": 6, "written": 5, "skipped": 1}
    assert [r["id"] for r in read_lines(out)] == [json.loads(lines[i])["id"]
                                                  for i in (0, 1, 3, 4, 5)]
    errors = read_lines(tmp_path / "scores.errors.jsonl")
    assert [(e["line"], e["reason"]) for e in errors] == [(3, "scoring_failed")]


def test_scores_match_scoring_each_response_alone(clean_run, reward_dir, inference_file):
    model = RewardModel.load(reward_dir).eval()
    processor = load_processor(reward_dir)
    set_right_padding(processor)
    collator = PairCollator(processor)
    inputs = read_lines(inference_file)
    assert [r["id"] for r in clean_run] == [r["id"] for r in inputs]      # input order
    for item, scored in zip(inputs, clean_run):
        assert scored["responses"] == item["responses"] and len(scored["scores"]) == 4
        for k in range(4):
            # a "pair" of the response against itself: both rewards are the response's reward
            pair = PairRecord(id="x", prompt=item["prompt"], img_path=item["img_path"],
                              chosen=item["responses"][k], rejected=item["responses"][k],
                              image_file=item["img_path"])
            batch = collator([pair])
            batch.pop("ids")
            with torch.no_grad():
                alone = model(**batch, sequences_per_image=2)[0].item()
            assert scored["scores"][k] == pytest.approx(alone, abs=1e-5)
        assert scored["best"] == max(range(4), key=scored["scores"].__getitem__)


def test_responses_share_one_image_preprocessing_and_encoding(reward_dir, inference_file):
    scorer = ResponseScorer(str(reward_dir))
    calls = {"encode": 0, "preprocess": 0}
    inner = scorer.model.backbone.model
    encode = inner.get_image_features

    def counting_encode(**kw):
        calls["encode"] += 1
        calls["images"] = kw["pixel_values"].shape[0]
        return encode(**kw)

    class CountingPreprocess:
        def __init__(self, inner):
            self.inner = inner

        def __call__(self, *args, **kwargs):
            calls["preprocess"] += 1
            return self.inner(*args, **kwargs)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    inner.get_image_features = counting_encode
    scorer.processor.image_processor = CountingPreprocess(scorer.processor.image_processor)
    items = [{"line": i + 1, **{k: r[k] for k in ("prompt", "responses")},
              "image_file": r["img_path"]} for i, r in enumerate(read_lines(inference_file)[:3])]
    result = scorer.score(items)
    assert [len(r["scores"]) for r in result["results"]] == [4, 4, 4]
    # 3 images x 4 responses: one preprocessing call, one encoding call of 3 images
    assert calls == {"encode": 1, "images": 3, "preprocess": 1}


def test_the_totals_count_the_time_the_workers_spent_scoring(ray_cluster, reward_dir,
                                                            inference_file, tmp_path,
                                                            monkeypatch):
    # 30 items of 4 responses, 12 responses per batch: 10 batches, each sleeping 0.1 s in
    # the actor on top of its scoring
    monkeypatch.setenv("MMRM_TEST_BATCH_DELAY", "0.1")
    totals = score_file(config(reward_dir, inference_file, tmp_path / "scores.jsonl",
                               workers=1, preprocess="driver"))
    assert totals["worker_seconds"] >= 10 * 0.1
    # one actor scores one batch at a time, inside the run: busy at most the whole run
    assert totals["worker_seconds"] <= totals["seconds"]
    assert totals["workers_busy"] == pytest.approx(
        totals["worker_seconds"] / totals["seconds"], abs=2e-3)


def test_worker_killed_mid_run_loses_nothing(ray_cluster, clean_run, reward_dir,
                                             inference_file, tmp_path, monkeypatch):
    import ray

    before, killed, after = [], [], []

    def kill_the_busy_worker(event):
        (after if killed else before).append(event)
        if killed or len({e["actor"] for e in before}) < 2:
            return      # wait until both actors have scored a batch
        # the other actor is in the middle of a batch (each batch sleeps 0.3 s): kill it
        busy = next(name for name in event["actors"] if name != event["actor"])
        ray.kill(ray.get_actor(busy), no_restart=False)
        killed.append(busy)

    monkeypatch.setenv("MMRM_TEST_BATCH_DELAY", "0.3")
    out = tmp_path / "scores.jsonl"
    # the driver's tensors are the batch's arguments: Ray keeps them to retry the batch
    totals = score_file(config(reward_dir, inference_file, out, preprocess="driver"),
                        progress=kill_the_busy_worker)
    busy = killed[0]
    # the killed actor came back as a new process and went on scoring (its batch retried)
    old = {e["worker"] for e in before if e["actor"] == busy}
    new = {e["worker"] for e in after if e["actor"] == busy}
    assert len(old) == 1 and len(new) == 1 and old != new
    assert totals["items_scored"] == 30
    assert read_lines(out) == clean_run                 # every item once, in order, same scores


def test_driver_killed_halfway_then_rerun_gives_the_clean_output(
        ray_cluster, clean_run, reward_dir, inference_file, tmp_path):
    out = tmp_path / "scores.jsonl"
    state = tmp_path / "scores.jsonl.state.json"
    cmd = [sys.executable, "-m", "mmrm", "score", str(reward_dir), str(inference_file), str(out),
           "workers=2", "batch_responses=12", "chunk_items=4", f"address={ray_cluster}",
           "--image-root", "/"]
    env = {**os.environ, "MMRM_TEST_BATCH_DELAY": "0.4"}   # slow enough to stop halfway
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            if state.exists() and json.loads(state.read_text())["items_written"] >= 8:
                break
            time.sleep(0.1)
        else:
            pytest.fail("the scoring driver never wrote a chunk")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    halfway = json.loads(state.read_text())
    assert not halfway["complete"] and 8 <= halfway["items_written"] < 30
    # a torn chunk past the recorded length is dropped on resume
    with open(out, "a") as f:
        f.write('{"id": "torn')
    result = subprocess.run(cmd, env={**os.environ, "MMRM_TEST_BATCH_DELAY": "0"},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert read_lines(out) == clean_run
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert "already complete (30 items)" in again.stdout


def test_bad_items_go_to_the_errors_file_with_their_lines(ray_cluster, reward_dir,
                                                          inference_file, tmp_path):
    lines = open(inference_file).read().splitlines()[:5]
    broken = json.loads(lines[1])
    broken["img_path"] = str(tmp_path / "missing.png")
    empty = json.loads(lines[3])
    empty["responses"] = []
    lines[1], lines[3] = json.dumps(broken), json.dumps(empty)
    src = tmp_path / "bad.jsonl"
    src.write_text("\n".join(lines) + "\n")
    with pytest.raises(RecordError, match=rf"{src}:2: img_path: image not found"):
        score_file(config(reward_dir, src, tmp_path / "raise.jsonl"))

    out = tmp_path / "skip.jsonl"
    totals = score_file(config(reward_dir, src, out, on_error="skip", normalize=True))
    assert totals["ledger"] == {"read": 5, "written": 3, "skipped": 2}
    assert [r["id"] for r in read_lines(out)] == [json.loads(lines[i])["id"] for i in (0, 2, 4)]
    errors = read_lines(tmp_path / "skip.errors.jsonl")
    assert [(e["line"], e["reason"]) for e in errors] == [(2, "image_missing"),
                                                          (4, "empty_text")]

    # a rerun on another input refuses to mix the two
    src.write_text("\n".join(lines[:4]) + "\n")
    with pytest.raises(ValueError, match="was written for another input"):
        score_file(config(reward_dir, src, out, on_error="skip"))


def test_normalized_scores_use_the_saved_mean_and_std(clean_run, reward_dir, inference_file,
                                                      tmp_path, ray_cluster):
    out = tmp_path / "norm.jsonl"
    score_file(config(reward_dir, inference_file, out, normalize=True, workers=1))
    saved = json.loads((reward_dir / "reward_config.json").read_text())
    for raw, norm in zip(clean_run, read_lines(out)):
        expected = [(s - saved["reward_mean"]) / saved["reward_std"] for s in raw["scores"]]
        assert norm["scores"] == pytest.approx(expected, abs=1e-5)

