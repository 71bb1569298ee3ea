"""``mmrm eval``, ``matrix``, ``diagnose`` and ``plot-weights`` on tiny trained models, and the
external benchmarks read from fixtures in their released formats."""

import json

import pytest
import torch
from typer.testing import CliRunner

from mmrm.cli import app
from mmrm.convert import convert
from mmrm.data import load_pairs
from mmrm.evaluate.metrics import evaluation_report
from mmrm.synthetic.environments import ENVIRONMENTS
from mmrm.synthetic.released import PairItem, write_mmrewardbench, write_vlrewardbench
from mmrm.synthetic.scenes import Scene

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_eval_reproduces_the_training_runs_numbers(trained_runs, tiny_pairs, tmp_path):
    run = trained_runs["none"]
    out = tmp_path / "eval.json"
    invoke("eval", run / "final", *[f"{e}={tiny_pairs[(e, 'test')]}" for e in ENVIRONMENTS],
           "--out", out, "--plots", tmp_path / "plots")
    report = json.loads(out.read_text())["datasets"]
    trained = json.loads((run / "result.json").read_text())
    for env in ENVIRONMENTS:
        assert report[env]["accuracy"] == trained[f"eval/{env}/accuracy"]
        assert report[env]["pairs"] == len(load_pairs(tiny_pairs[(env, "test")]))
        assert set(report[env]["margin"]) == {"mean", "std", "p10", "p50", "p90"}
        assert (tmp_path / "plots" / f"{env}.png").stat().st_size > 1000


def test_matrix_rows_and_in_distribution_cells(trained_runs, tiny_pairs, tmp_path):
    invoke("matrix", "--model", f"povid/none={trained_runs['none'] / 'final'}",
           "--model", f"povid/sfc_joint={trained_runs['sfc_joint'] / 'final'}",
           *[a for e in ENVIRONMENTS for a in ("--test", f"{e}={tiny_pairs[(e, 'test')]}")],
           "--out", tmp_path)
    matrix = json.loads((tmp_path / "matrix.json").read_text())
    for row, weighting in (("povid/none", "none"), ("povid/sfc_joint", "sfc_joint")):
        trained = json.loads((trained_runs[weighting] / "result.json").read_text())
        assert matrix["accuracy"][row] == {e: trained[f"eval/{e}/accuracy"]
                                           for e in ENVIRONMENTS}
        assert matrix["rows"][row]["ID"] == trained["eval/povid/accuracy"]
    assert (tmp_path / "matrix.png").stat().st_size > 1000
    assert "| povid/none |" in (tmp_path / "matrix.md").read_text()


def test_diagnose_trains_a_text_only_proxy_and_reports_sfd(trained_runs, tiny_pairs, tmp_path):
    config = tmp_path / "proxy.yaml"
    config.write_text(json.dumps({"model": str(json.loads(
        (trained_runs["none"] / "final" / "reward_config.json").read_text())["base_model"]),
        "output_dir": "unused", "data": {"train": ["unused"]}, "max_steps": 2,
        "per_device_batch_size": 8, "optim": {"lr": 1e-2, "warmup_ratio": 0}}))
    train, test = tiny_pairs[("povid", "train")], tiny_pairs[("povid", "test")]
    invoke("diagnose", train, "--test", test, "--config", config,
           "--model", trained_runs["none"] / "final", "--out", tmp_path / "diag")
    report = json.loads((tmp_path / "diag" / "diagnosis.json").read_text())
    proxy_config = json.loads((tmp_path / "diag" / "run" / "proxy" / "train_config.json")
                              .read_text())
    assert proxy_config["mode"] == "text_only" and proxy_config["data"]["train"] == [str(train)]
    n = len(load_pairs(test))
    assert report["pairs"] == n
    failures = len(report["shortcut_failure_ids"])
    assert report["failure_pairs"] == failures and report["rest_pairs"] == n - failures
    assert report["sfd"] == pytest.approx(report["accuracy_rest"] - report["accuracy_failure"],
                                          nan_ok=True)
    assert report["cues"] and {"cue", "coverage", "accuracy"} <= set(report["cues"][0])


def test_plot_weights_from_a_shortcut_aware_run(trained_runs, tmp_path):
    records = [json.loads(line) for line in
               (trained_runs["sfc_joint"] / "metrics.jsonl").read_text().splitlines()]
    assert all(sum(r["weight/hist"]) == r["pairs_in_window"] for r in records)
    invoke("plot-weights", trained_runs["sfc_joint"], "--out", tmp_path / "w.png")
    assert (tmp_path / "w.png").stat().st_size > 1000
    result = runner.invoke(app, ["plot-weights", str(trained_runs["none"])])
    assert result.exit_code == 2 and "no weight/hist records" in result.output


def items(n):
    colours = ("red", "blue", "green")
    return [PairItem(id=f"{group}_{i}", scene=Scene.single("circle", colours[i % 3], "large"),
                     prompt="What is shown?", chosen=f"A {colours[i % 3]} circle.",
                     rejected="A square.")
            for i, group in zip(range(n), ["RLAIF", "mathverse", "wildvision"] * n)]


@pytest.mark.parametrize("writer, fmt", [(write_vlrewardbench, "vlrewardbench"),
                                         (write_mmrewardbench, "mmrewardbench")])
def test_external_benchmarks_from_released_files_with_macro_average(
        writer, fmt, tmp_path, trained_runs):
    released = writer(items(6), tmp_path / fmt)
    out = tmp_path / "pairs.jsonl"
    convert(fmt, released.src, out)
    pairs = load_pairs(out)
    # rewards chosen so the per-group accuracies are known: pair i is right unless i == 1
    chosen = torch.tensor([0.0 if i == 1 else 1.0 for i in range(6)])
    rejected = torch.zeros(6) + 0.5
    report = evaluation_report(pairs, chosen, rejected)
    if fmt == "vlrewardbench":  # groups from the id prefix; mathverse has pairs 1 and 4
        assert {k: v["accuracy"] for k, v in report["subsets"].items()} == \
            {"RLAIF": 1.0, "mathverse": 0.5, "wildvision": 1.0}
        assert report["macro_accuracy"] == pytest.approx((1.0 + 0.5 + 1.0) / 3)
    else:                       # one category: macro equals overall
        assert list(report["subsets"]) == ["synthetic"]
        assert report["macro_accuracy"] == pytest.approx(5 / 6)
    assert report["accuracy"] == pytest.approx(5 / 6)

    # the CLI converts the released files itself and reports the same structure
    invoke("eval", trained_runs["none"] / "final", f"{fmt}={released.src}", "--format", fmt,
           "--work", tmp_path / "work", "--out", tmp_path / "report.json")
    report = json.loads((tmp_path / "report.json").read_text())["datasets"][fmt]
    assert report["pairs"] == 6 and "macro_accuracy" in report


def test_eval_reports_bad_records_with_their_line(trained_runs, tiny_pairs, tmp_path):
    lines = open(tiny_pairs[("povid", "test")]).read().splitlines()
    bad = json.loads(lines[1])
    bad["chosen"] = ""
    src = tiny_pairs[("povid", "test")].parent / "bad.jsonl"
    src.write_text("\n".join([lines[0], json.dumps(bad)]) + "\n")
    result = runner.invoke(app, ["eval", str(trained_runs["none"] / "final"), str(src)])
    assert result.exit_code == 2
    assert f"error: {src}:2: chosen: " in result.output


def test_pairs_with_words_the_tokenizer_lacks_are_counted(trained_runs, tiny_pairs, tiny_vlm_dir,
                                                          tmp_path):
    """The tiny base reads other words as <unk>: eval counts such pairs and warns, and a run
    trained on them says so in its log; a file without them reports 0."""
    from mmrm.config import TrainConfig
    from mmrm.train import train

    lines = tiny_pairs[("povid", "test")].read_text().splitlines()
    odd = json.loads(lines[2])
    odd["chosen"] = odd["chosen"].replace("shows", "depicts")
    src = tiny_pairs[("povid", "test")].parent / "odd.jsonl"
    src.write_text("\n".join([*lines[:2], json.dumps(odd), *lines[3:]]) + "\n")
    result = runner.invoke(app, ["eval", str(trained_runs["none"] / "final"), f"odd={src}",
                                 f"plain={tiny_pairs[('povid', 'test')]}", "--out",
                                 str(tmp_path / "eval.json")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "eval.json").read_text())["datasets"]
    assert report["odd"]["pairs_with_unknown_tokens"] == 1
    assert report["plain"]["pairs_with_unknown_tokens"] == 0
    assert f"warning: {src}: 1 of {len(lines)} pairs hold words" in result.output
    logged = []
    train(TrainConfig.model_validate({
        "model": str(tiny_vlm_dir), "output_dir": str(tmp_path / "run"),
        "data": {"train": [str(src)]}, "max_steps": 1, "per_device_batch_size": 4}),
        resume=False, log=logged.append)
    assert logged[0] == (f"warning: data.train: 1 of {len(lines)} pairs hold words the "
                         f"tokenizer does not know (read as its unknown token; first: pair "
                         f"{odd['id']})")
