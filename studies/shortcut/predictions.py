"""Grid 2's pre-registered predictions, the best non-paper method and the targets at the
default, checked from the result files alone (README.md, grid 2: the text each check
implements; "Reading the pre-registration" there fixes the few words it left open, written
before the grid was complete and before any of its numbers was read).

Every check returns ``{"n", "claim", "held", "detail"}``: ``held`` is True or False, or None
while a cell it needs has no results; ``detail`` carries the numbers it was decided on."""

from __future__ import annotations

import stats
from sweep import AWARE, GRIDS     # the shortcut-aware methods; grid 2's cells

#: The methods the best non-paper method is chosen from.
NON_PAPER = ("group_balance", "poe")
TIE = 0.005
#: The cells the predictions speak of, as (visual, foreign rate, reuse).
CELLS = tuple((c.visual, c.foreign, c.reuse) for c in GRIDS["grid2"].cells)


class Cells:
    """A grid's per-cell rows (one per replicate, environment and method) and replicate
    means, looked up by (visual, foreign rate, reuse)."""

    def __init__(self, grid, rows_by_cell: dict, reps_by_cell: dict):
        self.keys = {(c.visual, c.foreign, c.reuse): c.key for c in grid.cells}
        self.rows, self.reps = rows_by_cell, reps_by_cell

    def key(self, visual, foreign, reuse) -> str | None:
        """A cell's key; None where the grid has no such cell."""
        return self.keys.get((visual, foreign, reuse))

    def all_keys(self) -> list[str | None]:
        return [self.key(*c) for c in CELLS]

    def have(self, keys, methods) -> bool:
        """Every cell is in the grid and has results of every method."""
        return all(k is not None and all(any(m in r for r in self.reps.get(k, {}).values())
                                         for m in methods) for k in keys)

    def env_mean(self, key, method, measure) -> dict[str, float]:
        rows = [r for r in self.rows.get(key, []) if r["method"] == method]
        return {env: stats.mean(r[measure] for r in rows if r["env"] == env)
                for env in sorted({r["env"] for r in rows})}

    def cell_mean(self, key, method, measure) -> float:
        return stats.mean(r[method][measure] for r in self.reps[key].values() if method in r)

    def gain(self, key, method, measure="ood") -> dict:
        return stats.paired(self.reps[key], method, measure)

    def headroom(self, key) -> float:
        return self.gain(key, "neutral")["mean"]

    def contrast(self, key, method, part) -> float:
        """Mean weight on proxy-wrong minus proxy-right pairs in a third of training."""
        return (self.cell_mean(key, method, f"w_{part}_proxy_wrong")
                - self.cell_mean(key, method, f"w_{part}_proxy_right"))


def check(n: int, claim: str, held, detail: str) -> dict:
    return {"n": n, "claim": claim, "held": held, "detail": detail}


def pending(n: int, claim: str) -> dict:
    return check(n, claim, None, "cells without results")


def best_non_paper(cells: Cells, key: str) -> dict:
    """Of group_balance and poe, the larger mean paired OOD gain over none at the default
    cell; within 0.005 of each other, the smaller ID loss (README, default rule)."""
    if not key or not cells.have([key], ("none", *NON_PAPER)):
        return {}
    gains = {m: cells.gain(key, m)["mean"] for m in NON_PAPER}
    ids = {m: cells.gain(key, m, "id")["mean"] for m in NON_PAPER}
    a, b = NON_PAPER
    if abs(gains[a] - gains[b]) <= TIE:
        chosen, by = max(NON_PAPER, key=lambda m: ids[m]), "ID loss (OOD gains within .005)"
    else:
        chosen, by = max(NON_PAPER, key=lambda m: gains[m]), "OOD gain"
    return {"method": chosen, "by": by, "ood_gain": gains, "id_gain": ids}


def best_aware(cells: Cells, key: str) -> str:
    """The best shortcut-aware method at a cell: the largest mean paired OOD gain."""
    return max(AWARE, key=lambda m: cells.gain(key, m)["mean"])


def targets(cells: Cells, key: str) -> list[dict]:
    """The targets at the default cell, for every shortcut-aware method (the best one, by
    mean paired OOD gain, is the one the targets name)."""
    if not key or not cells.have([key], ("none", "neutral", *AWARE)):
        return []
    best = best_aware(cells, key)
    out = []
    for m in AWARE:
        ood, id_, bon = (cells.gain(key, m, k) for k in ("ood", "id", "bon_correct"))
        capture = stats.headroom_capture(cells.reps[key], m)
        out.append({"method": m, "best": m == best, "ood": ood, "id": id_, "bon": bon,
                    "capture": capture,
                    "met": {"ood": ood["mean"] >= 0.10 and ood["low"] > 0,
                            "id": id_["mean"] >= -0.02,
                            "capture": capture["mean"] >= 0.50,
                            "bon": bon["mean"] >= 0.10}})
    return out


def check_all(cells: Cells, default: dict, slacks: dict) -> list[dict]:
    checks = [shortcut_present, headroom_grows, image_criterion, image_price,
              sfc_saturates, sfc_fresh_reversed, product_of_experts, joint_vs_two_stage,
              group_balance_between, best_of_n_follows_ood, default_targets, non_paper]
    return [c(cells, default, slacks) for c in checks]


def num(x: float) -> str:
    return f"{x:+.3f}" if x == x else "nan"


def shortcut_present(cells, default, slacks) -> dict:
    claim = ("standard RM's anti-cue gap >= .30 in every environment of every f0.2 cell and "
             "both V2 f0.5 cells; < .30 in some environment of V1 f0.5 repeated")
    big = [cells.key(v, f, r) for v in ("V1", "V2") for f, r in
           ((0.2, "fresh"), (0.2, "repeated"))] + [cells.key("V2", 0.5, r)
                                                   for r in ("fresh", "repeated")]
    small = cells.key("V1", 0.5, "repeated")
    if not cells.have(big + [small], ("none",)):
        return pending(1, claim)

    def gaps(key):
        ids, anti = cells.env_mean(key, "none", "id"), cells.env_mean(key, "none", "anticue")
        return {env: ids[env] - anti[env] for env in ids}

    held = all(g >= 0.30 for k in big for g in gaps(k).values()) and \
        min(gaps(small).values()) < 0.30
    detail = "; ".join(f"{k}: " + " / ".join(f"{g:.3f}" for g in gaps(k).values())
                       for k in big + [small])
    return check(1, claim, held, detail)


def headroom_grows(cells, default, slacks) -> dict:
    claim = ("mean headroom larger at f0.2 than f0.5 by >= .05 in every (V, reuse), larger "
             "fresh than repeated in every (V, f); <= .05 at V2 f0.5 repeated")
    keys = cells.all_keys()
    if not cells.have(keys, ("none", "neutral")):
        return pending(2, claim)
    h = {k: cells.headroom(cells.key(*k)) for k in CELLS}
    by_f = all(h[(v, 0.2, r)] - h[(v, 0.5, r)] >= 0.05 for v in ("V1", "V2")
               for r in ("fresh", "repeated"))
    by_reuse = all(h[(v, f, "fresh")] > h[(v, f, "repeated")] for v in ("V1", "V2")
                   for f in (0.5, 0.2))
    low = h[("V2", 0.5, "repeated")] <= 0.05
    detail = "; ".join(f"{cells.key(*k)} {num(v)}" for k, v in sorted(h.items()))
    return check(2, claim, by_f and by_reuse and low,
                 f"{detail} (f: {by_f}, reuse: {by_reuse}, V2 f0.5 repeated <= .05: {low})")


def image_criterion(cells, default, slacks) -> dict:
    claim = ("neutral ID more than .05 below the standard RM's in some environment of every "
             "cell; no cell qualifies; the default misses on the image criterion, at f0.2")
    if None in cells.all_keys() or any(s is None for s in slacks.values()) or not default:
        return pending(3, claim)
    every = all(min(env["image"] for env in s.values()) < 0 for s in slacks.values())
    worst = min(((v, name) for env in slacks[default["cell"]].values()
                 for name, v in env.items()))
    on_image = worst[1] == "image"
    at_f02 = "-f0.2-" in default["cell"]
    held = every and not default["qualifies"] and on_image and at_f02
    detail = (f"image slack < 0 in every cell: {every}; default {default['cell']} "
              f"({'qualifies' if default['qualifies'] else 'a miss'}), its smallest slack "
              f"{worst[1]} {num(worst[0])}")
    return check(3, claim, held, detail)


def image_price(cells, default, slacks) -> dict:
    claim = "neutral ID - none ID between -.15 and -.06 in every cell"
    keys = cells.all_keys()
    if not cells.have(keys, ("none", "neutral")):
        return pending(4, claim)
    price = {k: cells.gain(k, "neutral", "id")["mean"] for k in keys}
    return check(4, claim, all(-0.15 <= p <= -0.06 for p in price.values()),
                 "; ".join(f"{k} {num(p)}" for k, p in price.items()))


def sfc_saturates(cells, default, slacks) -> dict:
    claim = ("sfc_two_stage's weight contrast (proxy-wrong - proxy-right) >= .2 smaller late "
             "than early in every repeated cell; late contrast larger fresh than repeated")
    keys = cells.all_keys()
    if not cells.have(keys, ("sfc_two_stage",)):
        return pending(5, claim)
    c = {k: {p: cells.contrast(cells.key(*k), "sfc_two_stage", p)
             for p in ("early", "middle", "late")} for k in CELLS}
    drop = all(c[k]["early"] - c[k]["late"] >= 0.2 for k in c if k[2] == "repeated")
    fresh = all(c[(v, f, "fresh")]["late"] > c[(v, f, "repeated")]["late"]
                for v in ("V1", "V2") for f in (0.5, 0.2))
    detail = "; ".join(f"{cells.key(*k)} " + " / ".join(num(x) for x in v.values())
                       for k, v in sorted(c.items()))
    return check(5, claim, drop and fresh,
                 f"early / middle / late: {detail} (drop: {drop}, fresh > repeated: {fresh})")


def sfc_fresh_reversed(cells, default, slacks) -> dict:
    claim = ("sfc_two_stage's OOD gain >= +.05, CI excluding 0, in both f0.2 fresh cells; "
             "within +-.03, CI including 0, in both f0.5 repeated cells")
    up = [cells.key(v, 0.2, "fresh") for v in ("V1", "V2")]
    flat = [cells.key(v, 0.5, "repeated") for v in ("V1", "V2")]
    if not cells.have(up + flat, ("none", "sfc_two_stage")):
        return pending(6, claim)
    g = {k: cells.gain(k, "sfc_two_stage") for k in up + flat}
    held = all(g[k]["mean"] >= 0.05 and g[k]["low"] > 0 for k in up) and \
        all(abs(g[k]["mean"]) <= 0.03 and g[k]["low"] <= 0 <= g[k]["high"] for k in flat)
    return check(6, claim, held, "; ".join(
        f"{k} {num(v['mean'])} [{num(v['low'])}, {num(v['high'])}]" for k, v in g.items()))


def product_of_experts(cells, default, slacks) -> dict:
    claim = ("at V2 f0.2 (both reuse) poe has the largest OOD gain of the four and capture "
             ">= 50%; at V1 fresh (both f) its ID is > .10 below none and its gain below "
             "sfc_two_stage's")
    top = [cells.key("V2", 0.2, r) for r in ("fresh", "repeated")]
    low = [cells.key("V1", f, "fresh") for f in (0.5, 0.2)]
    if not cells.have(top + low, ("none", "neutral", *AWARE)):
        return pending(7, claim)
    parts, held = [], True
    for k in top:
        best = best_aware(cells, k)
        capture = stats.headroom_capture(cells.reps[k], "poe")["mean"]
        held &= best == "poe" and capture >= 0.5
        parts.append(f"{k}: largest gain {best}, poe capture {capture:.0%}")
    for k in low:
        id_, gain = cells.gain(k, "poe", "id")["mean"], cells.gain(k, "poe")["mean"]
        two = cells.gain(k, "sfc_two_stage")["mean"]
        held &= id_ < -0.10 and gain < two
        parts.append(f"{k}: poe ID - none {num(id_)}, OOD gain {num(gain)} vs "
                     f"sfc_two_stage {num(two)}")
    return check(7, claim, held, "; ".join(parts))


def joint_vs_two_stage(cells, default, slacks) -> dict:
    claim = "sfc_joint gains less OOD than sfc_two_stage in at least 6 of the 8 cells"
    keys = cells.all_keys()
    if not cells.have(keys, ("none", "sfc_joint", "sfc_two_stage")):
        return pending(8, claim)
    less = [k for k in keys if cells.gain(k, "sfc_joint")["mean"]
            < cells.gain(k, "sfc_two_stage")["mean"]]
    return check(8, claim, len(less) >= 6, f"{len(less)} of {len(keys)}: {', '.join(less)}")


def group_balance_between(cells, default, slacks) -> dict:
    claim = ("group_balance's anti-cue gain between sfc_two_stage's and poe's in every "
             "repeated cell")
    keys = [cells.key(*c) for c in CELLS if c[2] == "repeated"]
    if not cells.have(keys, ("none", "sfc_two_stage", "group_balance", "poe")):
        return pending(9, claim)
    parts, held = [], True
    for k in keys:
        two, gb, poe = (cells.gain(k, m, "anticue")["mean"]
                        for m in ("sfc_two_stage", "group_balance", "poe"))
        held &= min(two, poe) <= gb <= max(two, poe)
        parts.append(f"{k}: {num(two)} / {num(gb)} / {num(poe)}")
    return check(9, claim, held, "sfc_two_stage / group_balance / poe: " + "; ".join(parts))


def best_of_n_follows_ood(cells, default, slacks) -> dict:
    claim = ("each method's best-of-N gain within +-.05 of its OOD gain in every cell "
             "(every method but none, the neutral RM included)")
    keys, methods = cells.all_keys(), ("neutral", *AWARE)
    if not cells.have(keys, ("none", *methods)):
        return pending(10, claim)
    off = [(k, m, cells.gain(k, m, "bon_correct")["mean"] - cells.gain(k, m)["mean"])
           for k in keys for m in methods]
    bad = [(k, m, d) for k, m, d in off if abs(d) > 0.05]
    worst = max(off, key=lambda x: abs(x[2]))
    return check(10, claim, not bad,
                 f"{len(bad)} of {len(off)} (cell, method) outside +-.05; largest "
                 f"{worst[0]} {worst[1]} {num(worst[2])}"
                 + ("; outside: " + ", ".join(f"{k} {m} {num(d)}" for k, m, d in bad)
                    if bad else ""))


def default_targets(cells, default, slacks) -> dict:
    claim = ("at the default: OOD >= +.10 with CI > 0 met by poe if the default is an f0.2 "
             "fresh cell, by no method otherwise; ID-loss target missed by every method "
             "(loss .03-.10); capture >= 50% met by poe, missed by sfc_two_stage; best-of-N "
             "target missed")
    rows = targets(cells, default.get("cell", ""))
    if not rows:
        return pending(11, claim)
    t = {r["method"]: r for r in rows}
    f02_fresh = default["cell"].endswith("-f0.2-fresh")
    ood = t["poe"]["met"]["ood"] if f02_fresh else not any(r["met"]["ood"] for r in rows)
    id_ = all(-0.10 <= r["id"]["mean"] <= -0.03 for r in rows)
    capture = t["poe"]["met"]["capture"] and not t["sfc_two_stage"]["met"]["capture"]
    best = next(r for r in rows if r["best"])
    bon = not best["met"]["bon"]
    return check(11, claim, ood and id_ and capture and bon,
                 f"OOD part {ood}, ID part {id_}, capture part {capture}, best-of-N part "
                 f"{bon} (best method {best['method']})")


def non_paper(cells, default, slacks) -> dict:
    claim = "the best non-paper method by the rule is poe"
    chosen = best_non_paper(cells, default.get("cell", ""))
    if not chosen:
        return pending(12, claim)
    return check(12, claim, chosen["method"] == "poe",
                 f"{chosen['method']} by {chosen['by']}: OOD gain " + ", ".join(
                     f"{m} {num(g)}" for m, g in chosen["ood_gain"].items()))
