"""The real ``mmrm`` command on tiny inputs."""

import json
import subprocess
import sys

from typer.testing import CliRunner

from mmrm.cli import app
from mmrm.convert import FORMATS

runner = CliRunner()


def test_convert_help_explains_every_format():
    result = runner.invoke(app, ["convert", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for name, fmt in FORMATS.items():
        assert f"  {name:<14} {fmt.description}" in result.output


def test_convert_reports_location_and_exit_code(tmp_path, write_image):
    write_image("a.png")
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"id": "1", "prompt": "P", "img_path": "a.png", "chosen": "x",
                               "rejected": "y"}) + "\n" + '{"id": "2", "prompt": 5}\n')
    out = tmp_path / "out" / "pairs.jsonl"
    result = runner.invoke(app, ["convert", "--format", "pairs", str(src), str(out)])
    assert result.exit_code == 2
    assert f"error: {src}:2: prompt: expected a string, got int" in result.output
    result = runner.invoke(app, ["convert", "-f", "pairs", str(src), str(out),
                                 "--on-error", "skip"])
    assert result.exit_code == 0, result.output
    assert "pairs: read 2 records, wrote 1 pairs" in result.output
    assert "skipped records: wrong_type=1" in result.output


def test_validate_counts_problems(tmp_path, write_image):
    write_image("a.png")
    src = tmp_path / "infer.jsonl"
    src.write_text(json.dumps({"prompt": "P", "img_path": "a.png", "responses": ["x", "y"]})
                   + "\n" + json.dumps({"prompt": "P", "img_path": "b.png",
                                        "responses": ["x"]}) + "\n")
    result = runner.invoke(app, ["validate", str(src), "--kind", "inference"])
    assert result.exit_code == 1
    report = json.loads(result.output)
    assert (report["read"], report["written"], report["skipped_by_reason"]) == \
        (2, 1, {"image_missing": 1})


def test_sample_converts_every_released_format_through_the_console_script(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mmrm", "sample", str(tmp_path),
                             "--count", "4"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    for fmt in ("povid", "rlhfv", "rlaifv", "vlfeedback", "vlrewardbench", "mmrewardbench"):
        manifest = json.loads((tmp_path / "converted" / fmt / "pairs.manifest.json").read_text())
        assert manifest["records"]["read"] == 4 and manifest["records"]["skipped"] == 0
        lines = (tmp_path / "converted" / fmt / "pairs.jsonl").read_text().splitlines()
        assert len(lines) == manifest["output"]["pairs"] > 0
        assert f"{fmt}: read 4 records" in result.stdout
    # VLFeedback: 4 completions, the right one rated 5/5, others 1-4 / 1 -> 3 pairs at least
    vlf = json.loads((tmp_path / "converted" / "vlfeedback" / "pairs.manifest.json").read_text())
    assert vlf["pairs"]["read"] == 4 * 6


def test_cli_names_its_choices_and_version():
    from mmrm.cli import StageName
    from mmrm.pipeline.registry import STAGES

    assert [s.value for s in StageName] == [stage.name for stage in STAGES]
    assert runner.invoke(app, ["--version"]).output.startswith("mmrm ")
    stage = runner.invoke(app, ["stage", "--help"], env={"COLUMNS": "200"}).output
    assert "--variant" in stage and "benchmark, convert" in stage
    score = runner.invoke(app, ["score", "--help"], env={"COLUMNS": "200"}).output
    assert "dtype=fp32 <fp32|bf16|fp16>" in score and "preprocess=auto <auto|driver|worker>" in score
    assert "workers=1" in score and "--workers" not in score      # a key, not an option
    serve = runner.invoke(app, ["serve", "--help"], env={"COLUMNS": "200"}).output
    assert "max_tokens=null" in serve and "--port" in serve and "--replicas" not in serve
    train = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"}).output
    assert "--resume / --no-resume" in train and "no-no-resume" not in train
    assert "<list[str]>" not in train
    bad = runner.invoke(app, ["stage", "nonsense"])
    assert bad.exit_code == 2 and "nonsense" in bad.output


def test_score_and_serve_without_options_build_their_configs_defaults(tmp_path, monkeypatch):
    """Run with nothing but their arguments, the commands build the very config the classes'
    defaults give (the few options left, --port and the files, have the same defaults), and
    KEY=VALUE sets any other key."""
    import mmrm.score
    import mmrm.serve
    from mmrm.config import ScoreConfig, ServeConfig

    built = {}

    def score_file(config, **_):
        built["score"] = config
        return {"already_complete": True, "items_written": 0}

    monkeypatch.setattr(mmrm.score, "score_file", score_file)
    monkeypatch.setattr(mmrm.serve, "serve_model",
                        lambda config, **_: built.setdefault("serve", config))
    paths = [str(tmp_path / name) for name in ("rm", "items.jsonl", "scores.jsonl")]
    for args in (["score", *paths], ["serve", paths[0]]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
    assert built["score"] == ScoreConfig(model=paths[0], input=paths[1], output=paths[2])
    assert built["serve"] == ServeConfig(model=paths[0])
    built.clear()
    for args in (["score", *paths, "workers=3", "dtype=bf16"],
                 ["serve", paths[0], "replicas=2", "max_tokens=512", "--port", "9001"]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
    assert (built["score"].workers, built["score"].dtype) == (3, "bf16")
    assert (built["serve"].replicas, built["serve"].max_tokens, built["serve"].port) == \
        (2, 512, 9001)
    bad = CliRunner().invoke(app, ["score", *paths, "wokers=3"])
    assert bad.exit_code == 2 and "wokers" in bad.output
