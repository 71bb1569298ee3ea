"""Grid 3's report from its result files alone (``results/grid3/runs/``): per cell and method
the means, paired differences from the standard RM with bootstrap CIs, headroom capture,
the best-of-N curve, collapsed runs, the worst run, the share of replicates that gain OOD,
the weights and effective sample share early / middle / late, the interpolation rule's
choices and the cost; then the product's default by the pre-registered rule, the targets at
the default cell and which predictions held. Pre-registration: README.md, grid 3."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import report

ORDER = ("none", "neutral", "sfc_two_stage", "sfc_normalized", "group_balance", "poe",
         "conf_reg", "interpolated")
#: The shortcut-aware methods: the candidates of the product's default and of the targets.
AWARE = ("sfc_two_stage", "sfc_normalized", "group_balance", "poe", "conf_reg",
         "interpolated")
CURVE = (1, 2, 4, 8, 16, 32, 64)
#: A run (replicate x environment) collapses when its ID falls this far below `none`'s.
COLLAPSE = 0.10
#: The product's default rule: the paired ID difference's CI lower bound at least this.
ID_LOSS_BOUND = 0.03
#: A best-of-N curve falls when its end (N = 64) lies this far below its highest point.
CURVE_DROP = 0.02
#: The product's default when no method qualifies (today's).
FALLBACK = "sfc_two_stage"
DEFAULT_CELL = "V1-c0.95-f0.2-repeated"
FRESH_CELL = "V1-c0.95-f0.2-fresh"
NAN = float("nan")


def run_rows(result: dict) -> list[dict]:
    """:func:`report.model_rows` of one result, with the best-of-N curve (``bon_<N>``) and
    the mean weight and effective sample share per third (``w_<part>_mean``,
    ``ess_<part>``)."""
    rows = report.model_rows(result)
    for row in rows:
        key = f"{row['env']}/{row['method']}"
        measures = result["shortcut"][key]
        row.update({f"bon_{n}": measures.get(f"bon_n{n}", NAN) for n in CURVE})
        weights = result["diagnosis"]["models"].get(key, {}).get("weights", [])
        for i, part in enumerate(("early", "middle", "late")):
            phase = weights[i] if len(weights) > i else {}
            row[f"w_{part}_mean"] = phase.get("mean", NAN)
            row[f"ess_{part}"] = phase.get("ess", NAN)
        row["w_mean"] = report.mean(row[f"w_{p}_mean"] for p in ("early", "middle", "late"))
    return rows


def interpolation_choices(result: dict) -> list[tuple[str, float]]:
    """The partner and alpha the interpolation rule chose, per environment of a result."""
    return [(s["chosen"]["partner"], s["chosen"]["alpha"])
            for s in result.get("interpolation", {}).values()]


def run_id(row: dict) -> str:
    """A run's name within its cell: ``b<base seed>-d<data seed>/<environment>``."""
    return f"b{row['replicate'][0]}-d{row['replicate'][1]}/{row['env']}"


def collapse_table(rows: list[dict]) -> dict[str, dict]:
    """Per method of one cell: its runs (replicate x environment), how many collapsed (ID
    more than :data:`COLLAPSE` below `none`'s in the same replicate and environment), the
    worst run's ID and which runs collapsed."""
    none = {(r["replicate"], r["env"]): r["id"] for r in rows if r["method"] == "none"}
    out = {}
    for method in {r["method"] for r in rows}:
        runs = [r for r in rows if r["method"] == method and (r["replicate"], r["env"]) in none]
        fell = [r for r in runs if r["id"] < none[(r["replicate"], r["env"])] - COLLAPSE]
        out[method] = {"runs": len(runs), "collapsed": len(fell),
                       "worst": min((r["id"] for r in runs), default=NAN),
                       "which": sorted(run_id(r) for r in fell)}
    return out


def share_gaining(reps: dict, method: str) -> float:
    """The share of replicates whose mean OOD (over environments) is above `none`'s."""
    diffs = [m[method]["ood"] - m["none"]["ood"] for m in reps.values()
             if method in m and "none" in m]
    return sum(d > 0 for d in diffs) / len(diffs) if diffs else NAN


def curve_of(reps: dict, method: str) -> dict[int, float]:
    return {n: report.mean(m[method].get(f"bon_{n}", NAN) for m in reps.values()
                           if method in m) for n in CURVE}


def curve_falls(curve: dict[int, float]) -> bool:
    """Whether the curve's end lies more than :data:`CURVE_DROP` below its highest point."""
    points = [v for v in curve.values() if v == v]
    return bool(points) and curve[max(n for n, v in curve.items() if v == v)] < \
        max(points) - CURVE_DROP


class Cell:
    """One cell's numbers: its rows, replicate means, collapse table."""

    def __init__(self, key: str, rows: list[dict], choices: list[tuple[str, float]] = ()):
        self.key, self.rows, self.choices = key, rows, list(choices)
        self.reps = report.replicate_means(rows)
        self.collapse = collapse_table(rows)
        self.methods = [m for m in ORDER if any(m in r for r in self.reps.values())]

    def has(self, *methods) -> bool:
        return bool(self.reps) and all(m in self.methods for m in methods)

    def gain(self, method: str, measure: str = "ood") -> dict:
        return report.paired(self.reps, method, measure)

    def mean(self, method: str, measure: str) -> float:
        return report.mean(r[method][measure] for r in self.reps.values() if method in r)

    def capture(self, method: str) -> dict:
        return report.headroom_capture(self.reps, method)


# ---------------------------------------------------------------------------- the rules
def product_default(cell: Cell) -> dict:
    """The pre-registered rule for the product's default method: among the shortcut-aware
    methods whose paired ID difference has a 95% CI lower bound >= -0.03 and that have no
    collapsed run at the default cell, the largest mean paired OOD gain (within 0.005 of
    each other: the smaller mean ID loss). None qualifies: `sfc_two_stage` stays, a miss."""
    if not cell.has("none", *AWARE):
        return {}
    rows = {}
    for m in AWARE:
        ood, id_ = cell.gain(m), cell.gain(m, "id")
        rows[m] = {"ood": ood["mean"], "id": id_["mean"], "id_low": id_["low"],
                   "collapsed": cell.collapse[m]["collapsed"],
                   "qualifies": id_["low"] >= -ID_LOSS_BOUND and
                   cell.collapse[m]["collapsed"] == 0}
    qualifying = [m for m in AWARE if rows[m]["qualifies"]]
    if not qualifying:
        return {"method": FALLBACK, "qualifies": False, "candidates": rows}
    top = max(rows[m]["ood"] for m in qualifying)
    near = [m for m in qualifying if rows[m]["ood"] >= top - 0.005]
    chosen = max(near, key=lambda m: (rows[m]["id"], -AWARE.index(m)))
    return {"method": chosen, "qualifies": True, "candidates": rows}


def targets(cell: Cell) -> list[dict]:
    """Every shortcut-aware method's row of the targets at the default cell."""
    if not cell.has("none", "neutral", *AWARE):
        return []
    none_falls = curve_falls(curve_of(cell.reps, "none"))
    out = []
    for m in AWARE:
        ood, id_, bon = cell.gain(m), cell.gain(m, "id"), cell.gain(m, "bon_8")
        capture, falls = cell.capture(m), curve_falls(curve_of(cell.reps, m))
        met = {"ood": ood["mean"] >= 0.10 and ood["low"] > 0, "id": id_["mean"] >= -0.02,
               "collapse": cell.collapse[m]["collapsed"] == 0,
               "every": share_gaining(cell.reps, m) == 1.0, "capture": capture["mean"] >= 0.5,
               "bon": bon["mean"] >= 0.10, "curve": not falls}
        out.append({"method": m, "ood": ood, "id": id_, "bon": bon, "capture": capture,
                    "falls": falls, "none_falls": none_falls, "met": met,
                    "all": all(met.values())})
    return out


# ---------------------------------------------------------------------------- predictions
def check(n: int, claim: str, held, detail: str) -> dict:
    return {"n": n, "claim": claim, "held": held, "detail": detail}


def predictions(cells: dict[str, Cell], default: dict) -> list[dict]:
    """The twelve predictions of the pre-registration (README, grid 3), each decided from
    the cells' numbers (None while a cell or method it needs has no results)."""
    d, f = cells.get(DEFAULT_CELL), cells.get(FRESH_CELL)
    both = [c for c in (d, f) if c is not None]
    ready = len(both) == 2 and all(c.has("none", "neutral", *AWARE) for c in both)
    claims = [
        "collapse is not SFC's alone: the neutral RM has >= 1 collapsed run in some cell",
        "sfc_two_stage and poe each have >= 3 collapsed runs at the default cell",
        "sfc_normalized: OOD gain within +-.03 of sfc_two_stage's and >= 3 collapsed runs, "
        "at the default cell",
        "group_balance has fewer collapsed runs than sfc_two_stage and than poe, in both cells",
        "conf_reg at the default: mean ID loss <= .03, <= 2 collapsed runs, OOD gain between "
        "+.03 and +.10 with a CI above 0",
        "interpolated in both cells: mean ID loss <= .02, no collapsed run, OOD gain >= +.05 "
        "with a CI above 0, below poe's gain",
        "the interpolation rule's most frequent partner (over both cells' runs) is "
        "group_balance",
        "the product's default by the rule is interpolated",
        "targets at the default: the OOD target is met by poe and group_balance; no method "
        "meets every target; the best-of-8 target is missed by every method",
        "no method's best-of-N curve falls (end within .02 of its highest point), none's "
        "included, in both cells; none's rises from N=1 to 64 by >= .15 less than the "
        "neutral RM's",
        "sfc_two_stage's collapsed runs have a lower mean weight over training than its other "
        "runs, by >= .10 (both cells pooled)",
        "the same method ranks first by mean OOD gain in both cells",
    ]
    if not ready:
        return [check(i + 1, c, None, "cells without results") for i, c in enumerate(claims)]
    out = []
    neutral = {c.key: c.collapse["neutral"]["collapsed"] for c in both}
    out.append(check(1, claims[0], any(v >= 1 for v in neutral.values()),
                     f"neutral collapsed runs {neutral}"))
    col = {m: d.collapse[m]["collapsed"] for m in AWARE}
    out.append(check(2, claims[1], col["sfc_two_stage"] >= 3 and col["poe"] >= 3,
                     f"collapsed at the default {col}"))
    dn = d.gain("sfc_normalized")["mean"] - d.gain("sfc_two_stage")["mean"]
    out.append(check(3, claims[2], abs(dn) <= 0.03 and col["sfc_normalized"] >= 3,
                     f"OOD gain difference {dn:+.3f}; collapsed {col['sfc_normalized']}"))
    fewer = {c.key: (c.collapse["group_balance"]["collapsed"],
                     c.collapse["sfc_two_stage"]["collapsed"], c.collapse["poe"]["collapsed"])
             for c in both}
    out.append(check(4, claims[3], all(g < s and g < p for g, s, p in fewer.values()),
                     f"group_balance / sfc_two_stage / poe collapsed: {fewer}"))
    cr_id, cr_ood = d.gain("conf_reg", "id"), d.gain("conf_reg")
    out.append(check(5, claims[4], cr_id["mean"] >= -0.03 and col["conf_reg"] <= 2 and
                     0.03 <= cr_ood["mean"] <= 0.10 and cr_ood["low"] > 0,
                     f"ID {report.fmt(cr_id)}, OOD {report.fmt(cr_ood)}, collapsed "
                     f"{col['conf_reg']}"))
    parts = {c.key: (c.gain("interpolated", "id"), c.gain("interpolated"),
                     c.collapse["interpolated"]["collapsed"], c.gain("poe")["mean"])
             for c in both}
    out.append(check(6, claims[5], all(i["mean"] >= -0.02 and n == 0 and o["mean"] >= 0.05
                                       and o["low"] > 0 and o["mean"] < p
                                       for i, o, n, p in parts.values()),
                     "; ".join(f"{k}: ID {report.fmt(i)}, OOD {report.fmt(o)}, collapsed {n}, "
                               f"poe {p:+.3f}" for k, (i, o, n, p) in parts.items())))
    partners = Counter(partner for c in both for partner, _ in c.choices)
    top = partners.most_common(1)[0][0] if partners else None
    out.append(check(7, claims[6], top == "group_balance", f"partners {dict(partners)}"))
    verdict = "qualifies" if default.get("qualifies") else "a miss"
    out.append(check(8, claims[7], default.get("method") == "interpolated" and
                     default.get("qualifies", False),
                     f"default {default.get('method')} ({verdict})"))
    rows = {t["method"]: t for t in targets(d)}
    ood_met = {m for m, t in rows.items() if t["met"]["ood"]}
    out.append(check(9, claims[8], {"poe", "group_balance"} <= ood_met and
                     not any(t["all"] for t in rows.values()) and
                     not any(t["met"]["bon"] for t in rows.values()),
                     f"OOD target met by {sorted(ood_met)}; every target met by "
                     f"{sorted(m for m, t in rows.items() if t['all']) or 'none'}; best-of-8 "
                     f"met by {sorted(m for m, t in rows.items() if t['met']['bon']) or 'none'}"))
    falls = {f"{c.key}/{m}": curve_falls(curve_of(c.reps, m)) for c in both
             for m in ("none", "neutral", *AWARE)}
    rise = {c.key: (curve_of(c.reps, "neutral")[64] - curve_of(c.reps, "neutral")[1]) -
            (curve_of(c.reps, "none")[64] - curve_of(c.reps, "none")[1]) for c in both}
    out.append(check(10, claims[9], not any(falls.values()) and
                     all(v >= 0.15 for v in rise.values()),
                     f"falling: {[k for k, v in falls.items() if v] or 'none'}; neutral's rise "
                     f"minus none's: " + ", ".join(f"{k} {v:+.3f}" for k, v in rise.items())))
    sfc = [(r, run_id(r) in c.collapse["sfc_two_stage"]["which"]) for c in both
           for r in c.rows if r["method"] == "sfc_two_stage"]
    down = [r["w_mean"] for r, fell in sfc if fell]
    rest = [r["w_mean"] for r, fell in sfc if not fell]
    gap = report.mean(rest) - report.mean(down) if down else NAN
    out.append(check(11, claims[10], bool(down) and gap >= 0.10,
                     f"mean weight: collapsed {report.mean(down):.3f} ({len(down)} runs), "
                     f"others {report.mean(rest):.3f} ({len(rest)})"))
    firsts = {c.key: max(AWARE, key=lambda m: c.gain(m)["mean"]) for c in both}
    out.append(check(12, claims[11], len(set(firsts.values())) == 1, f"first: {firsts}"))
    return out


# ---------------------------------------------------------------------------- the report
def write_report(results: Path, grid) -> dict:
    """``report.md`` and ``default.json`` under ``results``."""
    found = report.load_results(results)
    rows = [row for result in found for row in run_rows(result)]
    by_cell, choices = defaultdict(list), defaultdict(list)
    for row in rows:
        by_cell[report.cell_key(row["cell"])].append(row)
    for result in found:
        choices[report.cell_key(result["cell"])] += interpolation_choices(result)
    cells = {key: Cell(key, rs, choices[key]) for key, rs in by_cell.items()}
    default = product_default(cells[DEFAULT_CELL]) if DEFAULT_CELL in cells else {}
    checks = predictions(cells, default)
    lines = [f"# {results.name}: results ({len(found)} of {len(grid.runs())} replicate runs)",
             "", *report.cost_lines(found), *method_cost_lines(found), ""]
    for cell in grid.cells:
        if cell.key in cells:
            lines += cell_lines(cells[cell.key])
    lines += default_lines(default) + target_lines(cells.get(DEFAULT_CELL))
    verdict = {True: "held", False: "did not hold", None: "not decided yet"}
    lines += ["## The pre-registered predictions", ""]
    lines += [f"{c['n']}. *{verdict[c['held']]}*: {c['claim']}. {c['detail']}." for c in checks]
    (results / "report.md").write_text("\n".join(lines) + "\n")
    (results / "default.json").write_text(json.dumps(
        {"default": default, "predictions": {c["n"]: c["held"] for c in checks}},
        indent=2, sort_keys=True) + "\n")
    return {"default": default, "predictions": checks, "cells": cells}


def method_cost_lines(found: list[dict]) -> list[str]:
    seconds = defaultdict(float)
    for r in found:
        for k, v in r["seconds"].items():
            seconds[k] += v
    return ["Recorded one-thread hours by part: " + ", ".join(
        f"{k} {v / 3600:.2f}" for k, v in sorted(seconds.items())) + "."] if seconds else []


def cell_lines(cell: Cell) -> list[str]:
    lines = [f"## {cell.key} ({len(cell.reps)} replicates)", "",
             "| method | ID | OOD | anti-cue | cue-bal. | SFD | OOD - none | ID - none | "
             "anti-cue - none | best-of-8 - none | capture | collapsed runs | worst ID | "
             "replicates gaining OOD |", "| --- |" + " ---: |" * 13]
    for m in cell.methods:
        means = " | ".join(f"{cell.mean(m, k):.3f}" for k in
                           ("id", "ood", "anticue", "cue_balanced", "sfd"))
        diffs = " | ".join(report.fmt(cell.gain(m, k)) if m != "none" else "" for k in
                           ("ood", "id", "anticue", "bon_8"))
        capture = report.fmt(cell.capture(m)) if m not in ("none", "neutral") else ""
        c = cell.collapse.get(m, {"runs": 0, "collapsed": 0, "worst": NAN})
        gaining = f"{share_gaining(cell.reps, m):.0%}" if m != "none" else ""
        lines.append(f"| {m} | {means} | {diffs} | {capture} | {c['collapsed']} of "
                     f"{c['runs']} | {c['worst']:.3f} | {gaining} |")
    lines += ["", "Best-of-N: the pick fully correct, N = " + ", ".join(map(str, CURVE)) +
              " (exact expectation over N-subsets of 64 candidates):", "",
              "| method | " + " | ".join(f"N={n}" for n in CURVE) + " | falls |",
              "| --- |" + " ---: |" * (len(CURVE) + 1)]
    for m in cell.methods:
        curve = curve_of(cell.reps, m)
        lines.append(f"| {m} | " + " | ".join(f"{curve[n]:.3f}" for n in CURVE) +
                     f" | {'yes' if curve_falls(curve) else 'no'} |")
    lines += ["", "Effective weights (mean over runs): mean / proxy-wrong / proxy-right / "
                  "effective sample share, early; middle; late:", ""]
    for m in cell.methods:
        parts = [" / ".join(f"{cell.mean(m, k):.2f}" for k in
                            (f"w_{p}_mean", f"w_{p}_proxy_wrong", f"w_{p}_proxy_right",
                             f"ess_{p}")) for p in ("early", "middle", "late")]
        lines.append(f"- {m}: " + "; ".join(parts))
    collapsed = [f"{m}: {', '.join(c['which'])}" for m, c in cell.collapse.items()
                 if c["which"]]
    if collapsed:
        lines += ["", "Collapsed runs: " + "; ".join(sorted(collapsed)) + "."]
    choices = Counter(cell.choices)
    if choices:
        lines += ["", "Interpolation rule's choices (partner, alpha: runs): " + ", ".join(
            f"{p} {a:g}: {n}" for (p, a), n in sorted(choices.items(), key=lambda x: -x[1]))
            + "."]
    proxy = [report.mean(r["none"][k] for r in cell.reps.values() if "none" in r)
             for k in ("proxy_in", "proxy_out", "proxy_test")]
    return lines + ["", f"Proxies: {proxy[0]:.3f} in sample / {proxy[1]:.3f} out of sample / "
                        f"{proxy[2]:.3f} test.", ""]


def default_lines(default: dict) -> list[str]:
    lines = ["## The product's default, by the rule", ""]
    if not default:
        return lines + ["(the default cell's runs are not all in yet)", ""]
    lines += ["| method | OOD - none | ID - none | ID CI low (>= -.03) | collapsed (= 0) | "
              "qualifies |", "| --- | ---: | ---: | ---: | ---: | --- |"]
    for m, r in default["candidates"].items():
        lines.append(f"| {m} | {r['ood']:+.3f} | {r['id']:+.3f} | {r['id_low']:+.3f} | "
                     f"{r['collapsed']} | {'yes' if r['qualifies'] else 'no'} |")
    verdict = "qualifies" if default["qualifies"] else "none qualifies: a miss, the default stays"
    return lines + ["", f"**Default: {default['method']}** ({verdict}).", ""]


def target_lines(cell: Cell | None) -> list[str]:
    lines = ["## Targets at the default cell", ""]
    rows = targets(cell) if cell is not None else []
    if not rows:
        return lines + ["(the default cell's runs are not all in yet)", ""]
    names = {"ood": "OOD >= +.10, CI > 0", "id": "ID loss <= .02", "collapse": "no collapse",
             "every": "every replicate gains", "capture": "capture >= 50%",
             "bon": "best-of-8 >= +.10", "curve": "curve does not fall"}
    lines += ["| method | " + " | ".join(names.values()) + " | all |",
              "| --- |" + " --- |" * (len(names) + 1)]
    for t in rows:
        lines.append(f"| {t['method']} | " + " | ".join(
            "met" if t["met"][k] else "missed" for k in names) +
            f" | {'**met**' if t['all'] else 'missed'} |")
    return lines + ["", f"none's curve falls: {'yes' if rows[0]['none_falls'] else 'no'}.", ""]

