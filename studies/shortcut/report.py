"""The report of a grid from its result files alone (``results/<grid>/runs/``): per replicate
and method the means over the environments, the SFC-free default rule, paired differences
from the standard RM with bootstrap CIs, headroom capture, the weights early / middle / late,
the cost, a phase diagram per method, and (``predictions.py``) the targets at the default,
the best non-paper method and which predictions held. Pre-registered rules: README.md
(grid 2)."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

import predictions
from stats import NAN, fmt, headroom_capture, mean, paired  # noqa: F401 (also report.*)

ORDER = ("none", "neutral", "sfc_joint", "sfc_two_stage", "group_balance", "poe")
MEASURES = ("id", "ood", "anticue", "cue_balanced", "bon_correct", "sfd")
#: The SFC-free default rule (README, grid 2): per environment, over the cell's replicates.
RULE = {"anticue": 0.30, "proxy": 0.05, "headroom": 0.10, "image": 0.05}


def load_results(results: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((results / "runs").glob("*/*.json"))]


def model_rows(result: dict) -> list[dict]:
    """One row per (environment, method) of a replicate's result."""
    rows = []
    envs = list(next(iter(result["matrix"].values())))
    for row, cells in result["matrix"].items():
        env, method = row.split("/")
        diag = result["diagnosis"]["models"].get(row, {})
        proxy = result["diagnosis"]["proxies"].get(env, {})
        weights = diag.get("weights", [])
        rows.append({
            "cell": result["cell"], "replicate": (result["base_seed"], result["data_seed"]),
            "env": env, "method": method, "id": cells[env],
            "ood": statistics.fmean(cells[e] for e in envs if e != env),
            "anticue": result["shortcut"][row].get("anticue", NAN),
            "bon_correct": result["shortcut"][row]["bon_correct"],
            "cue_balanced": diag.get("cue_balanced", NAN), "sfd": diag.get("sfd", NAN),
            "proxy_test": proxy.get("test", NAN), "proxy_in": proxy.get("in_sample", NAN),
            "proxy_out": proxy.get("out_of_sample", NAN),
            **{f"w_{part}_{side}": (weights[i][side] if len(weights) > i else NAN)
               for i, part in enumerate(("early", "middle", "late"))
               for side in ("proxy_wrong", "proxy_right")}})
    return rows


def cell_key(cell: dict) -> str:
    return f"{cell['visual']}-c{cell['cue']}-f{cell['foreign']}-{cell['reuse']}"


def by_cell(rows: list[dict]) -> dict[str, list[dict]]:
    cells = defaultdict(list)
    for row in rows:
        cells[cell_key(row["cell"])].append(row)
    return cells


def criteria(rows: list[dict]) -> dict[str, dict[str, float]] | None:
    """The SFC-free rule's slacks per environment of one cell (None where a method is
    missing): standard anti-cue <= its ID - 0.30; proxy within 0.05 of the standard ID;
    neutral OOD >= standard OOD + 0.10; neutral ID >= standard ID - 0.05."""
    if not rows:
        return None
    out = {}
    for env in sorted({r["env"] for r in rows}):
        none = [r for r in rows if r["env"] == env and r["method"] == "none"]
        neutral = [r for r in rows if r["env"] == env and r["method"] == "neutral"]
        if not none or not neutral:
            return None
        n_id, n_ood = mean(r["id"] for r in none), mean(r["ood"] for r in none)
        out[env] = {
            "anticue": n_id - mean(r["anticue"] for r in none) - RULE["anticue"],
            "proxy": RULE["proxy"] - abs(n_id - mean(r["proxy_test"] for r in none)),
            "headroom": mean(r["ood"] for r in neutral) - n_ood - RULE["headroom"],
            "image": mean(r["id"] for r in neutral) - n_id + RULE["image"]}
    return out


def cost_order(key: str) -> tuple:
    """Lowest visual cost first, then the foreign rate closer to 0.5, then repeated data
    before fresh (the cheaper make run)."""
    visual, _, foreign, reuse = key.split("-")
    return (visual, abs(float(foreign[1:]) - 0.5), reuse != "repeated")


def choose_default(slacks: dict[str, dict]) -> dict:
    """The default cell by the rule: the first qualifying cell in cost order, else the one
    with the largest smallest slack (a miss)."""
    smallest = {k: min(v for env in s.values() for v in env.values())
                for k, s in slacks.items() if s is not None}
    if not smallest:
        return {}
    qualifying = sorted((k for k, v in smallest.items() if v >= 0), key=cost_order)
    if qualifying:
        return {"cell": qualifying[0], "qualifies": True, "smallest_slack":
                smallest[qualifying[0]]}
    best = sorted(smallest, key=lambda k: (-smallest[k], cost_order(k)))[0]
    return {"cell": best, "qualifies": False, "smallest_slack": smallest[best]}


def replicate_means(rows: list[dict]) -> dict[tuple, dict[str, dict[str, float]]]:
    """Per replicate, per method, the mean over environments of every measure."""
    grouped = defaultdict(lambda: defaultdict(list))
    for r in rows:
        grouped[r["replicate"]][r["method"]].append(r)
    return {rep: {m: {k: mean(r[k] for r in rs) for k in rs[0] if k not in
                      ("cell", "replicate", "env", "method")}
                  for m, rs in methods.items()} for rep, methods in grouped.items()}


def write_report(results: Path, grid) -> dict:
    """``report.md``, ``default.json`` and ``phase.png`` under ``results``."""
    found = load_results(results)
    rows = [row for result in found for row in model_rows(result)]
    cells = by_cell(rows)
    slacks = {key: criteria(cells.get(key, [])) for key in (c.key for c in grid.cells)}
    default = choose_default(slacks)
    lines = [f"# {results.name}: results ({len(found)} of "
             f"{len(grid.cells) * len(grid.replicates()) * 2} replicate phases)", ""]
    lines += cost_lines(found) + [""] + proxy_check_lines(found) + [""]
    lines += rule_lines(slacks, default) + [""]
    summary, reps_by_cell = {}, {}
    for cell in grid.cells:
        reps = replicate_means(cells.get(cell.key, []))
        if reps:
            lines += cell_lines(cell.key, reps)
            summary[cell.key], reps_by_cell[cell.key] = cell_summary(reps), reps
    looked_up = predictions.Cells(grid, cells, reps_by_cell)
    non_paper = predictions.best_non_paper(looked_up, default.get("cell", ""))
    checks = predictions.check_all(looked_up, default, slacks)
    lines += target_lines(predictions.targets(looked_up, default.get("cell", "")), non_paper)
    lines += prediction_lines(checks)
    (results / "report.md").write_text("\n".join(lines) + "\n")
    (results / "default.json").write_text(json.dumps(
        {"default": default, "slacks": slacks, "best_non_paper": non_paper,
         "predictions": {c["n"]: c["held"] for c in checks}},
        indent=2, sort_keys=True) + "\n")
    if summary:
        phase_diagram(summary, grid, results / "phase.png")
    return {"default": default, "summary": summary, "best_non_paper": non_paper,
            "predictions": checks}


def target_lines(targets: list[dict], non_paper: dict) -> list[str]:
    lines = ["## Targets at the default", ""]
    if not targets:
        return lines + ["(the default cell's runs are not all in yet)", ""]
    lines += ["| method | OOD - none (>= +.10, CI > 0) | ID - none (>= -.02) | headroom "
              "capture (>= 50%) | best-of-N - none (>= +.10) |", "| --- |" + " --- |" * 4]
    for t in targets:
        cols = [f"{fmt(t[k])} {'met' if t['met'][k] else 'missed'}"
                for k in ("ood", "id", "capture", "bon")]
        name = f"**{t['method']}** (best)" if t["best"] else t["method"]
        lines.append(f"| {name} | " + " | ".join(cols) + " |")
    lines += ["", "The best method is the one with the largest mean paired OOD gain; the "
              "paper's SFC (`sfc_joint`, `sfc_two_stage`) is reported on its own rows."]
    if non_paper:
        lines += ["", f"**Best non-paper method: {non_paper['method']}** (by "
                      f"{non_paper['by']}; OOD gain " + ", ".join(
                          f"{m} {g:+.3f}" for m, g in non_paper["ood_gain"].items())
                  + "; ID - none " + ", ".join(
                      f"{m} {g:+.3f}" for m, g in non_paper["id_gain"].items()) + ")."]
    return lines + [""]


def prediction_lines(checks: list[dict]) -> list[str]:
    verdict = {True: "held", False: "did not hold", None: "not decided yet"}
    lines = ["## The pre-registered predictions", ""]
    for c in checks:
        lines.append(f"{c['n']}. *{verdict[c['held']]}*: {c['claim']}. {c['detail']}.")
    return lines + [""]


def unshared_proxies(found: list[dict]) -> list[str]:
    """Replicates whose two phases report different proxies. A replicate's phases share its
    data, base and cross-fitted proxies (the sweep reuses them), so their proxy accuracies
    must agree; where a phase had to rebuild them (its work folder lost between phases, the
    rebuild on another machine), they may not, and its paired differences then compare RMs
    grown from different bases: listed, not hidden, not dropped."""
    phases = defaultdict(dict)
    for r in found:
        phases[(cell_key(r["cell"]), r["base_seed"], r["data_seed"])][r["phase"]] = \
            r["diagnosis"]["proxies"]
    return [f"{key} b{b}-d{d}" for (key, b, d), got in sorted(phases.items())
            if len(got) == 2 and len({json.dumps(v, sort_keys=True) for v in got.values()}) > 1]


def proxy_check_lines(found: list[dict]) -> list[str]:
    unshared = unshared_proxies(found)
    if not unshared:
        return ["Shared-proxy check: every replicate's two phases report the same proxies."]
    return [f"Shared-proxy check: the two phases of {len(unshared)} replicate(s) report "
            f"different proxies (rebuilt between phases): {', '.join(unshared)}."]


def cost_lines(found: list[dict]) -> list[str]:
    total = sum(r["wall_seconds"] for r in found)
    by_phase = defaultdict(float)
    for r in found:
        by_phase[r["phase"]] += r["wall_seconds"]
    parts = ", ".join(f"{k} {v / 3600:.2f} h" for k, v in sorted(by_phase.items()))
    machines = sorted({f"{r['machine']['processor']} x{r['machine']['cpus']}" for r in found})
    return [f"Cost: {total / 3600:.2f} h of one-thread replicate time ({parts}); machines: "
            f"{', '.join(machines) or '—'}; commits: "
            f"{', '.join(sorted({r['commit'] for r in found})) or '—'}."]


def rule_lines(slacks: dict, default: dict) -> list[str]:
    lines = ["## The default, by the SFC-free rule", "",
             "Slack per environment (>= 0 passes): anti-cue gap - .30 / .05 - |proxy - ID| / "
             "headroom - .10 / neutral ID - ID + .05.", "",
             "| cell | " + " | ".join(["env", "anti-cue", "proxy", "headroom", "image"]) + " |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for key, envs in slacks.items():
        if envs is None:
            lines.append(f"| {key} | (SFC-free runs missing) | | | | |")
            continue
        for env, s in envs.items():
            lines.append(f"| {key} | {env} | {s['anticue']:+.3f} | {s['proxy']:+.3f} | "
                         f"{s['headroom']:+.3f} | {s['image']:+.3f} |")
    if default:
        verdict = "qualifies" if default["qualifies"] else "no cell qualifies: a miss"
        lines += ["", f"**Default: {default['cell']}** ({verdict}; smallest slack "
                      f"{default['smallest_slack']:+.3f})."]
    return lines


def cell_lines(key: str, reps: dict) -> list[str]:
    methods = [m for m in ORDER if any(m in r for r in reps.values())]
    lines = [f"## {key} ({len(reps)} replicates)", "",
             "| method | ID | OOD | anti-cue | cue-bal. | best-of-N | SFD | OOD - none | "
             "ID - none | anti-cue - none | best-of-N - none | headroom capture |",
             "| --- |" + " ---: |" * 11]
    for m in methods:
        means = {k: mean(r[m][k] for r in reps.values() if m in r) for k in MEASURES}
        diffs = [fmt(paired(reps, m, k)) if m != "none" else "" for k in
                 ("ood", "id", "anticue", "bon_correct")]
        capture = fmt(headroom_capture(reps, m)) if m not in ("none", "neutral") else ""
        lines.append(f"| {m} | " + " | ".join(f"{means[k]:.3f}" for k in MEASURES) + " | "
                     + " | ".join(diffs) + f" | {capture} |")
    if "neutral" in methods:
        lines += ["", "ID price of reading the image (neutral ID - none ID, paired): "
                      f"{fmt(paired(reps, 'neutral', 'id'))}."]
    lines += ["", "Weights (mean over environments and replicates), proxy wrong / right: "
              "early, middle, late; proxy accuracy in sample / out of sample / test:", ""]
    for m in methods:
        w = [f"{mean(r[m][f'w_{p}_proxy_wrong'] for r in reps.values() if m in r):.2f} / "
             f"{mean(r[m][f'w_{p}_proxy_right'] for r in reps.values() if m in r):.2f}"
             for p in ("early", "middle", "late")]
        lines.append(f"- {m}: " + ", ".join(w))
    proxy = [mean(r["none"][k] for r in reps.values() if "none" in r)
             for k in ("proxy_in", "proxy_out", "proxy_test")]
    lines += [f"- proxy: {proxy[0]:.3f} / {proxy[1]:.3f} / {proxy[2]:.3f}", ""]
    return lines


def cell_summary(reps: dict) -> dict:
    methods = {m for r in reps.values() for m in r}
    return {m: {"ood_gain": paired(reps, m, "ood")["mean"] if m != "none" else 0.0,
                "capture": headroom_capture(reps, m)["mean"]
                if m not in ("none", "neutral") and "neutral" in methods else NAN}
            for m in methods}


def phase_diagram(summary: dict, grid, path: Path) -> None:
    """Per method, its mean OOD gain over the standard RM in every cell (rows: visual cost;
    columns: foreign-cue rate x data reuse)."""
    from mmrm.evaluate.plots import pyplot, save_figure

    methods = [m for m in ORDER[1:] if any(m in s for s in summary.values())]
    visuals = sorted({c.visual for c in grid.cells})
    columns = sorted({(c.foreign, c.reuse) for c in grid.cells}, key=lambda x: (-x[0], x[1]))
    plt = pyplot()
    fig, axes = plt.subplots(1, len(methods), figsize=(3.4 * len(methods), 2.8),
                             squeeze=False)
    for ax, method in zip(axes[0], methods):
        values = [[summary.get(f"{v}-c{grid.cells[0].cue}-f{f}-{r}", {}).get(
            method, {}).get("ood_gain", NAN) for f, r in columns] for v in visuals]
        ax.imshow(values, vmin=-0.2, vmax=0.2, cmap="RdYlGn", aspect="auto")
        ax.set_xticks(range(len(columns)), [f"f{f}\n{r}" for f, r in columns], fontsize=7)
        ax.set_yticks(range(len(visuals)), visuals)
        for i, row in enumerate(values):
            for j, value in enumerate(row):
                if value == value:
                    ax.text(j, i, f"{value:+.3f}", ha="center", va="center", fontsize=8)
        ax.set_title(f"{method}: OOD - none", fontsize=9)
    save_figure(fig, path)
