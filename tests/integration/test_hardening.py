"""What the hostile corpus cannot say in one command line: a second writer while a first one
runs, a converter killed with SIGKILL, and the served model taking its limits from the
server, never from a request."""

import io
import json
import os
import shutil
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
    while time.time() < deadline and not list(images.glob(".mmrm-staging*/*")):
        time.sleep(0.05)
    run.send_signal(signal.SIGKILL)
    run.wait()
    staged = list(images.glob(".mmrm-staging*/*"))
    assert staged, "the converter was not caught half-way"
    assert [p for p in images.iterdir() if not p.name.startswith(".mmrm-staging")] == []
    assert not out.exists()
    done = CliRunner().invoke(app, ["convert", "--format", "pairs", str(src), str(out)])
    assert done.exit_code == 0, done.output
    assert not list(images.glob(".mmrm-staging*"))              # the abandoned staging is gone
    manifest = json.loads(out.with_name("pairs.manifest.json").read_text())
    assert len(list(images.iterdir())) == manifest["images"]["count"] == 400


@pytest.fixture(scope="module")
def served(trained_runs, tmp_path_factory):
    """The MLflow pyfunc over a trained RM, loaded as a server would, with its image root."""
    from mmrm.tracking.pyfunc import RewardModelPyfunc

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


# ---------------------------------------------------------------------------- issue 45
@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs (a full disk on demand); skipped where this machine cannot mount one
    (not root, or a container that forbids it)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()[:200]}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(folder: Path, leave: int = 2048) -> None:
    """Fill a tmpfs until ``leave`` bytes at most are free."""
    block, k = 64 << 10, 0
    while block >= 512:
        try:
            (folder / f".filler{k}").write_bytes(b"x" * block)
            k += 1
        except OSError:
            (folder / f".filler{k}").unlink(missing_ok=True)
            block //= 2
        if shutil.disk_usage(folder).free <= leave:
            return


def test_a_full_disk_leaves_every_previous_output_whole(small_disk, trained_runs, tiny_pairs):
    """eval --out, matrix --out and a converter on a full disk: one line naming the file,
    the previous file (and manifest) as it was."""
    report = small_disk / "report.json"
    report.write_text('{"previous": "report"}\n')
    matrix = small_disk / "matrix" / "matrix.json"
    matrix.parent.mkdir()
    matrix.write_text('{"previous": "matrix"}\n')
    src = pairs_file(small_disk.parent / "src", 3)
    out = small_disk / "conv" / "pairs.jsonl"
    done = CliRunner().invoke(app, ["convert", "--format", "pairs", str(src), str(out)])
    assert done.exit_code == 0, done.output
    before = {p: p.read_bytes() for p in (report, matrix, out,
                                          out.with_name("pairs.manifest.json"))}
    fill(small_disk)
    pairs = tiny_pairs[("povid", "test")]
    for args in (["eval", str(trained_runs["none"] / "final"), f"t={pairs}", "--out",
                  str(report)],
                 ["matrix", "--model", f"povid/none={trained_runs['none'] / 'final'}",
                  "--test", f"povid={pairs}", "--out", str(matrix.parent)],
                 ["convert", "--format", "pairs", str(pairs_file(small_disk.parent / "src2",
                                                                 40)), str(out)]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, (args[0], result.output[-500:])
        assert "no space left on the device" in result.output, (args[0], result.output[-500:])
    for path, data in before.items():
        assert path.read_bytes() == data, f"{path} changed on a full disk"
    assert not [p for p in small_disk.rglob("*mmrm-tmp*")]          # no temporaries left


def test_sigterm_while_a_model_saves_over_another_leaves_the_first_whole(trained_runs,
                                                                         tmp_path):
    """A save killed half-way (SIGTERM between two of its files) leaves the earlier model
    there, whole and loadable; a folder that mixes two saves is refused at load."""
    from mmrm.model import check_reward_model

    first = trained_runs["none"] / "final"
    target = tmp_path / "final"
    shutil.copytree(first, target)
    script = f"""
import os, signal, sys, time
import safetensors.torch as st
from mmrm.cli import _terminate_cleanly
from mmrm.model import RewardModel
_terminate_cleanly()
model = RewardModel.load({str(trained_runs['sfc_joint'] / 'final')!r})
real = st.save_file
def slow(*args, **kwargs):
    real(*args, **kwargs)
    print("half", flush=True)
    time.sleep(30)                       # killed here, the backbone written, the head not
st.save_file = slow
import mmrm.model
mmrm.model.save_file = slow
model.save({str(target)!r})
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    for line in proc.stdout:              # the library's warnings first, then "half"
        if line.strip() == "half":
            break
    else:
        raise AssertionError("the save never got half-way")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]    # no staging left
    check_reward_model(target)                                         # the first, whole
    assert (target / "value_head.safetensors").read_bytes() == \
        (first / "value_head.safetensors").read_bytes()
    shutil.copy(trained_runs["sfc_joint"] / "final" / "value_head.safetensors", target)
    with pytest.raises(ValueError, match="do not belong together"):
        check_reward_model(target)


def test_locks_live_in_a_private_folder_and_follow_no_symlink(tmp_path, monkeypatch):
    from mmrm.outputs import exclusive, lock_folder, lock_path

    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    os.chmod(shared, 0o777)
    monkeypatch.setenv("MMRM_LOCK_DIR", str(shared))
    with pytest.raises(ValueError, match="mode 0700"):
        lock_folder()
    private = tmp_path / "private"
    monkeypatch.setenv("MMRM_LOCK_DIR", str(private))
    assert oct(os.stat(lock_folder()).st_mode & 0o777) == "0o700"
    # another user's symlink where the lock file goes: refused, its target untouched
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    target = tmp_path / "out.jsonl"
    lock_path(target).symlink_to(victim)
    with pytest.raises(ValueError, match="a symlink where mmrm's lock file should be"):
        with exclusive(target, "x"):
            pass
    assert victim.read_text() == "precious"
    link = tmp_path / "link"
    link.symlink_to(private)
    monkeypatch.setenv("MMRM_LOCK_DIR", str(link))
    with pytest.raises(ValueError, match="a symlink"):
        lock_folder()


def test_a_scorer_and_a_converter_of_one_file_take_one_lock(trained_runs, tmp_path):
    """One lock key per output whichever command writes it: a converter writing a file
    refuses a scorer writing that file, and the reverse."""
    src = pairs_file(tmp_path / "src", 3)
    out = tmp_path / "out" / "pairs.jsonl"
    items = tmp_path / "items.jsonl"
    (tmp_path / "img.png").write_bytes(png(1))
    items.write_text(json.dumps({"prompt": "Q?", "img_path": "img.png",
                                 "responses": ["a"]}) + "\n")
    with exclusive([out.parent, out], "a conversion"):                 # as convert holds it
        refused = CliRunner().invoke(app, ["score", str(trained_runs["none"] / "final"),
                                           str(items), str(out)])
    assert refused.exit_code == 2 and "another mmrm process" in refused.output
    with exclusive(out, str(out)):                                     # as score holds it
        refused = CliRunner().invoke(app, ["convert", "--format", "pairs", str(src),
                                           str(out)])
    assert refused.exit_code == 2 and "another mmrm process" in refused.output


def test_two_trainings_into_one_folder(tiny_vlm_dir, tiny_pairs, tmp_path):
    from mmrm.config import TrainConfig
    from mmrm.train import train

    config = TrainConfig.model_validate({
        "model": str(tiny_vlm_dir), "output_dir": str(tmp_path / "run"),
        "data": {"train": [str(tiny_pairs[("povid", "train")])]}, "max_steps": 1,
        "per_device_batch_size": 4, "calibration_pairs": 0})
    with exclusive(tmp_path / "run", "the first training"):
        with pytest.raises(ValueError, match="another mmrm process"):
            train(config, resume=False, log=lambda line: None)
    assert not (tmp_path / "run").exists()
    train(config, resume=False, log=lambda line: None)                 # the lock went with it
    assert (tmp_path / "run" / "final" / "mmrm_files.json").is_file()


def test_a_stage_whose_tracking_server_is_down_fails_in_seconds(tmp_path, monkeypatch):
    from mmrm.tracking.runs import check_tracking_server

    started = time.monotonic()
    with pytest.raises(ValueError, match="does not answer within 2 s"):
        check_tracking_server("http://127.0.0.1:1", timeout=2)
    assert time.monotonic() - started < 30          # a hang guard, not a timing claim
    check_tracking_server("sqlite:///x.db")         # a local store needs no server


def test_an_image_edited_after_convert_is_found_and_repaired(tmp_path):
    src = pairs_file(tmp_path / "src", 3)
    out = tmp_path / "out" / "pairs.jsonl"
    assert CliRunner().invoke(app, ["convert", "--format", "pairs", str(src),
                                    str(out)]).exit_code == 0
    clean = CliRunner().invoke(app, ["validate", str(out)])
    assert clean.exit_code == 0 and '"problems": []' in clean.output
    image = sorted((out.parent / "images").iterdir())[0]
    original = image.read_bytes()
    image.unlink()              # (published images may be hard links to their sources)
    image.write_bytes(original[:len(original) // 2])                   # torn on disk
    found = CliRunner().invoke(app, ["validate", str(out)])
    assert found.exit_code == 1 and f"{image}: its bytes are not" in " ".join(
        found.output.split())
    again = CliRunner().invoke(app, ["convert", "--format", "pairs", str(src), str(out)])
    assert again.exit_code == 0, again.output
    assert image.read_bytes() == original
    assert CliRunner().invoke(app, ["validate", str(out)]).exit_code == 0


def test_a_converter_writing_next_to_its_source_deletes_nothing_of_the_users(tmp_path):
    """OUT beside the source, so its images/ is the user's image folder: the user's files
    there, whatever their names, survive a conversion and a failed one."""
    src = pairs_file(tmp_path / "data", 2)
    images = tmp_path / "data" / "images"
    images.mkdir()
    mine = [images / "notes.tmp123", images / ".staging99", images / "photo.png.tmp999999"]
    for path in mine:
        path.write_text("the user's")
    out = tmp_path / "data" / "converted.jsonl"
    assert CliRunner().invoke(app, ["convert", "--format", "pairs", str(src),
                                    str(out)]).exit_code == 0
    bad = tmp_path / "data" / "bad.jsonl"
    bad.write_text('{"id": 1}\n')
    assert CliRunner().invoke(app, ["convert", "--format", "pairs", str(bad),
                                    str(tmp_path / "data" / "x.jsonl")]).exit_code == 2
    assert all(path.read_text() == "the user's" for path in mine)
