"""What the hostile corpus cannot say in one command line: a second writer while a first one
runs, a converter killed with SIGKILL, and the served model taking its limits from the
server, never from a request."""

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from mmrm.cli import app
from mmrm.outputs import exclusive


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (seed % 256, seed // 256 % 256, 7)).save(buffer, format="PNG")
    return buffer.getvalue()


def pairs_file(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for k in range(count):
        (folder / f"img{k}.png").write_bytes(png(k))
        rows.append({"id": f"p{k}", "prompt": "What colour?", "img_path": f"img{k}.png",
                     "chosen": "It is red.", "rejected": "It is blue."})
    path = folder / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_second_converter_into_the_same_folder_is_refused_while_the_first_writes(tmp_path):
    src = pairs_file(tmp_path / "src", 3)
    out = tmp_path / "out" / "pairs.jsonl"
    with exclusive(out.parent, "the first run"):         # as a running convert holds it
        refused = CliRunner().invoke(app, ["convert", "--format", "pairs", str(src),
                                           str(out.with_name("other.jsonl"))])
    assert refused.exit_code == 2
    assert "another mmrm process" in refused.output and f"pid {os.getpid()}" in refused.output
    assert not (out.parent / "images").exists()
    done = CliRunner().invoke(app, ["convert", "--format", "pairs", str(src), str(out)])
    assert done.exit_code == 0, done.output                # the lock went with the holder


def test_a_second_scorer_of_the_same_output_is_refused(trained_runs, tmp_path):
    items = tmp_path / "items.jsonl"
    (tmp_path / "img.png").write_bytes(png(1))
    items.write_text(json.dumps({"prompt": "Q?", "img_path": "img.png",
                                 "responses": ["a", "b"]}) + "\n")
    out = tmp_path / "scores.jsonl"
    with exclusive(out, str(out)):
        refused = CliRunner().invoke(app, ["score", str(trained_runs["none"] / "final"),
                                           str(items), str(out)])
    assert refused.exit_code == 2 and "another mmrm process" in refused.output
    assert not out.exists()


def test_a_killed_converter_leaves_no_image_that_no_finished_run_wrote(tmp_path):
    src = pairs_file(tmp_path / "src", 400)
    out = tmp_path / "out" / "pairs.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.Popen([sys.executable, "-m", "mmrm", "convert", "--format", "pairs",
                            str(src), str(out)], env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    images = out.parent / "images"
    deadline = time.time() + 120
    while time.time() < deadline and not list(images.glob(".staging*/*")):
        time.sleep(0.05)
    run.send_signal(signal.SIGKILL)
    run.wait()
    staged = list(images.glob(".staging*/*"))
    assert staged, "the converter was not caught half-way"
    assert [p for p in images.iterdir() if not p.name.startswith(".staging")] == []
    assert not out.exists()
    done = CliRunner().invoke(app, ["convert", "--format", "pairs", str(src), str(out)])
    assert done.exit_code == 0, done.output
    assert not list(images.glob(".staging*"))              # the abandoned staging is gone
    manifest = json.loads(out.with_name("pairs.manifest.json").read_text())
    assert len(list(images.iterdir())) == manifest["images"]["count"] == 400


@pytest.fixture(scope="module")
def served(trained_runs, tmp_path_factory):
    """The MLflow pyfunc over a trained RM, loaded as a server would, with its image root."""
    from mmrm.serving import RewardModelPyfunc

    root = tmp_path_factory.mktemp("served")
    (root / "img.png").write_bytes(png(3))
    (root / "truncated.jpg").write_bytes(_jpeg()[:200])
    outside = tmp_path_factory.mktemp("elsewhere") / "secret.png"
    outside.write_bytes(png(4))

    class Context:
        artifacts = {"reward_model": str(trained_runs["none"] / "final")}
        model_config = {"image_root": str(root), "max_image_pixels": 10_000}

    model = RewardModelPyfunc()
    model.load_context(Context())
    return model, root, outside


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 30)).save(buffer, format="JPEG")
    return buffer.getvalue()


def rows(**changes):
    row = {"prompt": "What colour?", "img_path": "img.png", "response": "It is red."}
    return [{**row, **changes}]


def test_serving_scores_within_the_servers_root_and_limits(served):
    model, root, outside = served
    assert len(model.predict(None, rows())) == 1
    with pytest.raises(ValueError, match="set by the server"):
        model.predict(None, rows(), params={"image_root": "/"})
    with pytest.raises(ValueError, match="set by the server"):
        model.predict(None, rows(), params={"max_image_pixels": 10 ** 12})
    with pytest.raises(ValueError, match="row 0: img_path.*outside the data root"):
        model.predict(None, rows(img_path=str(outside)))


@pytest.mark.parametrize("change, problem", [
    ({"response": None}, "row 0: response: missing"),
    ({"response": ""}, "row 0: response: empty"),
    ({"prompt": 5}, "row 0: prompt: expected a string"),
    ({"img_path": "truncated.jpg"}, "row 0: img_path"),
    ({"img_path": "../img.png"}, "row 0: img_path"),
])
def test_serving_refuses_a_bad_row_with_its_index_and_field(served, change, problem):
    model, _, _ = served
    with pytest.raises(ValueError, match=problem.replace("(", r"\(")):
        model.predict(None, rows(**change))
