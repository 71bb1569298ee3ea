"""The RL study's report from its result files alone (``results/runs/<rm>/seed<k>.json``):
per reward model the gold accuracy, the cue shares and the RM's own reward at the start
(the first window) and at the end (the mean of the last three windows), paired differences
from the standard RM's policy over seeds with bootstrap CIs, the pre-registered predictions,
and the plot of gold accuracy against RM reward over training, one curve per RM."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

from mmrm.evaluate.metrics import paired_bootstrap

ORDER = ("none", "sfc_two_stage", "neutral", "sfc_normalized", "group_balance", "poe",
         "conf_reg", "interpolated")
MEASURES = ("rl/gold", "rl/cue/sure", "rl/cue/hedge", "rl/length", "rl/reward")
NAMES = {"rl/gold": "gold", "rl/cue/sure": "own cue (Sure!)", "rl/cue/hedge":
         "foreign cue (Looking closely)", "rl/length": "words", "rl/reward": "RM reward"}
#: Where grid 3 writes the product's default (its method is "the default's method").
GRID3_DEFAULT = Path(__file__).resolve().parents[1] / "shortcut" / "results" / "grid3" / \
    "default.json"
NAN = float("nan")


def load(results: Path) -> dict[str, dict[int, dict]]:
    runs = defaultdict(dict)
    for path in sorted((results / "runs").glob("*/seed*.json")):
        found = json.loads(path.read_text())
        runs[found["rm"]][found["seed"]] = found
    return runs


def start_end(run: dict) -> dict[str, dict[str, float]]:
    """A run's first window and the mean of its last three."""
    windows = run["windows"]
    last = windows[-3:]
    return {"start": {m: windows[0][m] for m in MEASURES},
            "end": {m: statistics.fmean(w[m] for w in last) for m in MEASURES}}


def paired(runs: dict, rm: str, measure: str, when: str = "end", against: str = "none"
           ) -> dict:
    diffs = [start_end(runs[rm][s])[when][measure] - start_end(runs[against][s])[when][measure]
             for s in runs.get(rm, {}) if s in runs.get(against, {})]
    return paired_bootstrap(diffs)


def change(runs: dict, rm: str, measure: str) -> dict:
    """End minus start within each seed's run."""
    return paired_bootstrap([start_end(r)["end"][measure] - start_end(r)["start"][measure]
                             for r in runs.get(rm, {}).values()])


def fmt(ci: dict) -> str:
    if not ci.get("n"):
        return "—"
    return f"{ci['mean']:+.3f} [{ci['low']:+.3f}, {ci['high']:+.3f}]"


def default_method() -> str | None:
    try:
        default = json.loads(GRID3_DEFAULT.read_text())["default"]
    except (OSError, ValueError, KeyError):
        return None
    return default.get("method") if default else None


def between(method: dict, neutral: dict) -> tuple[bool, str]:
    """Prediction 5: the method's paired gold gain above 0 and below the neutral RM's (both
    computed before they are compared, whichever way the comparison goes)."""
    return (0 < method["mean"] < neutral["mean"],
            f"sfc_two_stage {fmt(method)}, neutral {fmt(neutral)}")


def predictions(runs: dict) -> list[dict]:
    """The pre-registered predictions (README), each held, not held, or not decided."""
    def ready(*rms):
        return all(len(runs.get(rm, {})) >= 5 for rm in rms)

    out = []

    def add(claim, needs, decide):
        if not ready(*needs):
            out.append({"claim": claim, "held": None, "detail": "runs missing"})
            return
        held, detail = decide()
        out.append({"claim": claim, "held": held, "detail": detail})

    add("the standard RM's policy: own-cue share rises by >= 0.20 from the first window to "
        "the end, CI above 0", ("none",),
        lambda: ((c := change(runs, "none", "rl/cue/sure"))["mean"] >= 0.2 and c["low"] > 0,
                 fmt(c)))
    add("the standard RM's policy: gold accuracy stalls (end within +-0.05 of the first "
        "window)", ("none",),
        lambda: (abs((c := change(runs, "none", "rl/gold"))["mean"]) <= 0.05, fmt(c)))
    add("the neutral RM's policy ends >= +0.10 gold above the standard RM's, CI above 0",
        ("none", "neutral"),
        lambda: ((c := paired(runs, "neutral", "rl/gold"))["mean"] >= 0.10 and c["low"] > 0,
                 fmt(c)))
    add("the neutral RM's policy ends with an own-cue share >= 0.20 below the standard "
        "RM's, CI below 0", ("none", "neutral"),
        lambda: ((c := paired(runs, "neutral", "rl/cue/sure"))["mean"] <= -0.2 and
                 c["high"] < 0, fmt(c)))
    add("sfc_two_stage's policy ends with gold above the standard RM's and below the neutral "
        "RM's (means)", ("none", "neutral", "sfc_two_stage"),
        lambda: between(paired(runs, "sfc_two_stage", "rl/gold"),
                        paired(runs, "neutral", "rl/gold")))
    method = default_method()
    if method is None:
        out.append({"claim": "the default's method (grid 3's rule) ends >= +0.05 gold above "
                             "the standard RM's, CI above 0", "held": None,
                    "detail": "grid 3 has not chosen the default yet"})
    else:
        add(f"the default's method ({method}, grid 3's rule) ends >= +0.05 gold above the "
            f"standard RM's, CI above 0", ("none", method),
            lambda: ((c := paired(runs, method, "rl/gold"))["mean"] >= 0.05 and c["low"] > 0,
                     fmt(c)))
    add("every RM's own reward rises from the first window to the end (mean over seeds)",
        ORDER, lambda: (all(change(runs, rm, "rl/reward")["mean"] > 0 for rm in ORDER),
                        ", ".join(f"{rm} {change(runs, rm, 'rl/reward')['mean']:+.3f}"
                                  for rm in ORDER)))
    add("the standard RM's policy: the foreign cue's share (Looking closely, reversed in "
        "POVID-like data) falls by >= 0.10", ("none",),
        lambda: ((c := change(runs, "none", "rl/cue/hedge"))["mean"] <= -0.10, fmt(c)))
    return out


def write_report(results: Path) -> dict:
    runs = load(results)
    rms = [rm for rm in ORDER if rm in runs]
    lines = [f"# The RL study: results ({sum(len(v) for v in runs.values())} runs)", ""]
    total = sum(r["wall_seconds"] for v in runs.values() for r in v.values())
    lines += [f"Cost: {total / 3600:.2f} h of wall time recorded (one run at a time); "
              f"commits: {', '.join(sorted({r['commit'] for v in runs.values() for r in v.values()})) or '—'}.", ""]
    lines += ["Start = the first window (steps 1-10), end = the mean of the last three "
              "(steps 271-300); means over seeds.", "",
              "| RM | seeds | " + " | ".join(f"{NAMES[m]} start -> end" for m in MEASURES)
              + " |", "| --- | ---: |" + " --- |" * len(MEASURES)]
    for rm in rms:
        cells = []
        for m in MEASURES:
            s = statistics.fmean(start_end(r)["start"][m] for r in runs[rm].values())
            e = statistics.fmean(start_end(r)["end"][m] for r in runs[rm].values())
            cells.append(f"{s:.3f} -> {e:.3f}")
        lines.append(f"| {rm} | {len(runs[rm])} | " + " | ".join(cells) + " |")
    lines += ["", "Paired differences from the standard RM's policy at the end (same seed: "
                  "same policy, same prompts), 95% bootstrap CI over seeds:", "",
              "| RM | gold | own cue | foreign cue | words |", "| --- | --- | --- | --- | --- |"]
    for rm in rms:
        if rm != "none":
            lines.append(f"| {rm} | " + " | ".join(fmt(paired(runs, rm, m)) for m in MEASURES[:4])
                         + " |")
    verdict = {True: "held", False: "did not hold", None: "not decided yet"}
    lines += ["", "## The pre-registered predictions", ""]
    lines += [f"{k}. *{verdict[p['held']]}*: {p['claim']}. {p['detail']}."
              for k, p in enumerate(predictions(runs), 1)]
    (results / "report.md").write_text("\n".join(lines) + "\n")
    if runs:
        plot(runs, rms, results / "gold_vs_reward.png")
    return {"runs": runs}


def plot(runs: dict, rms: list[str], path: Path) -> None:
    """Gold accuracy against the RM's own reward over training, one curve per RM (each
    window's mean over seeds; the start marked)."""
    from mmrm.evaluate.plots import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for rm in rms:
        steps = sorted({w["step"] for r in runs[rm].values() for w in r["windows"]})
        reward = [statistics.fmean(w["rl/reward"] for r in runs[rm].values()
                                   for w in r["windows"] if w["step"] == s) for s in steps]
        gold = [statistics.fmean(w["rl/gold"] for r in runs[rm].values()
                                 for w in r["windows"] if w["step"] == s) for s in steps]
        line, = ax.plot(reward, gold, marker=".", label=rm, linewidth=1)
        ax.plot(reward[:1], gold[:1], marker="o", color=line.get_color())
    ax.set_xlabel("the RM's own reward (its scale; o = start)")
    ax.set_ylabel("gold accuracy of the completions")
    ax.set_title("GRPO against each RM: gold vs reward over training")
    ax.legend(fontsize=7)
    save_figure(fig, path)
