"""Grid 3's rules worked by hand (collapse, the product's default, the falling curve), and one
tiny replicate with every method of the grid through the real stages, then its report."""

import json
from dataclasses import replace

import pytest

import grid3
import sweep
from test_sweep import TINY


def row(rep, env, method, id_, ood=0.7):
    return {"replicate": rep, "env": env, "method": method, "id": id_, "ood": ood}


def test_a_run_collapses_when_its_id_falls_more_than_a_tenth_below_none():
    rows = [row((0, 0), "a", "none", 0.95), row((0, 0), "a", "poe", 0.84),
            row((0, 0), "b", "none", 0.95), row((0, 0), "b", "poe", 0.86),
            row((1, 0), "a", "none", 0.90), row((1, 0), "a", "poe", 0.50)]
    table = grid3.collapse_table(rows)
    # .84 is .11 below .95: collapsed; .86 is .09 below: not; .50 vs .90: collapsed
    assert table["poe"] == {"runs": 3, "collapsed": 2, "worst": 0.50,
                            "which": ["b0-d0/a", "b1-d0/a"]}
    assert table["none"]["collapsed"] == 0


def test_a_curve_falls_when_its_end_is_below_its_top_by_more_than_two_points():
    assert grid3.curve_falls({1: 0.5, 8: 0.80, 64: 0.77})
    assert not grid3.curve_falls({1: 0.5, 8: 0.80, 64: 0.79})
    assert not grid3.curve_falls({1: 0.5, 8: 0.6, 64: float("nan")})   # its end is N = 8


def fake_cell(gains, id_losses, collapsed):
    """A cell of 4 replicates x 1 environment whose methods gain OOD / lose ID by these
    (constant) amounts, with ``collapsed[m]`` of the 4 runs collapsed."""
    rows = []
    for d in range(4):
        rows.append(row((0, d), "a", "none", 0.95, 0.60))
        rows.append(row((0, d), "a", "neutral", 0.93, 0.90))
        for m in grid3.AWARE:
            id_ = 0.95 - id_losses.get(m, 0.0) - (0.2 if d < collapsed.get(m, 0) else 0.0)
            rows.append(row((0, d), "a", m, id_, 0.60 + gains.get(m, 0.0)))
    for r in rows:
        r.update({"anticue": 0.5, "bon_8": 0.7})
    return grid3.Cell(grid3.DEFAULT_CELL, rows)


def test_the_product_default_rule_by_hand():
    # poe gains most but collapses; conf_reg loses .04 ID (CI low -.04 < -.03); of the rest
    # interpolated and group_balance tie within .005: the smaller ID loss wins
    cell = fake_cell({"poe": 0.20, "conf_reg": 0.15, "interpolated": 0.100,
                      "group_balance": 0.104, "sfc_two_stage": 0.05},
                     {"conf_reg": 0.04, "group_balance": 0.02, "interpolated": 0.005},
                     {"poe": 1})
    chosen = grid3.product_default(cell)
    assert chosen["qualifies"] and chosen["method"] == "interpolated"
    assert not chosen["candidates"]["poe"]["qualifies"]
    assert not chosen["candidates"]["conf_reg"]["qualifies"]
    # nothing qualifies: today's default stays, a miss
    none = grid3.product_default(fake_cell({}, {}, {m: 1 for m in grid3.AWARE}))
    assert none["method"] == "sfc_two_stage" and not none["qualifies"]


def test_targets_by_hand():
    cell = fake_cell({"group_balance": 0.12}, {"group_balance": 0.01}, {})
    rows = {t["method"]: t for t in grid3.targets(cell)}
    met = rows["group_balance"]["met"]
    assert met["ood"] and met["id"] and met["collapse"] and met["every"]
    assert met["capture"] is False        # .12 of .30 headroom
    assert not rows["group_balance"]["all"] and not rows["poe"]["met"]["ood"]


def test_one_tiny_replicate_of_every_method_then_its_report(tmp_path, monkeypatch):
    tiny = replace(sweep.GRIDS["grid3"], cells=(sweep.Cell("V1", 0.95, 0.2, "repeated"),),
                   base_seeds=(0,), data_seeds=(0,), extension_seeds=(),
                   params=(("benchmark.val_size", 16),
                           ("benchmark.best_of_n", {"items": 2, "candidates": 8})))
    monkeypatch.setitem(sweep.GRIDS, "tiny3", tiny)
    args = ["tiny3", "--work", str(tmp_path / "work"), "--results", str(tmp_path / "results")]
    args += [item for kv in TINY if "best_of_n" not in kv for item in ("--set", kv)]
    sweep.main(args)
    [path] = (tmp_path / "results" / "runs" / "V1-c0.95-f0.2-repeated").glob("*.json")
    assert path.name == "b0-d0.all.json"
    result = json.loads(path.read_text())
    methods = {r.split("/")[1] for r in result["matrix"]}
    assert methods == set(sweep.GRID3_TRAINED) | set(sweep.GRID3_DERIVED)
    # the interpolation rule's choice per environment, a curve to N = 8, the ESS per third
    assert set(result["interpolation"]) == {"povid", "rlhfv", "vlfeedback"}
    chosen = result["interpolation"]["povid"]["chosen"]
    assert chosen["partner"] in ("none", "sfc_two_stage", "sfc_normalized", "group_balance",
                                 "poe") and chosen["alpha"] in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    assert {"bon_n1", "bon_n8"} <= set(result["shortcut"]["povid/conf_reg"])
    assert 0 < result["diagnosis"]["models"]["povid/group_balance"]["weights"][0]["ess"] < 1
    text = (tmp_path / "results" / "report.md").read_text()
    assert "## V1-c0.95-f0.2-repeated (1 replicates)" in text and "| interpolated |" in text
    assert "**Default: " in text and "## Targets at the default cell" in text
    assert text.count("*not decided yet*") == 12          # the fresh cell has no results
    assert sweep.tasks(sweep.parse_args(args), tiny) == []
