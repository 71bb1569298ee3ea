"""The statistics every report of the shortcut study shares: means that skip NaN, paired
differences with bootstrap CIs, headroom capture, and how a CI is written."""

from __future__ import annotations

import statistics

NAN = float("nan")


def mean(values) -> float:
    values = [v for v in values if v == v]
    return statistics.fmean(values) if values else NAN


def paired(reps: dict, method: str, measure: str, against: str = "none") -> dict:
    from mmrm.evaluate.metrics import paired_bootstrap

    diffs = [m[method][measure] - m[against][measure] for m in reps.values()
             if method in m and against in m]
    return paired_bootstrap(diffs)


def headroom_capture(reps: dict, method: str, resamples: int = 10000, seed: int = 0) -> dict:
    """(method OOD - none OOD) / (neutral OOD - none OOD), as a ratio of the replicates'
    summed differences, with a percentile bootstrap CI over replicates."""
    import numpy as np

    pairs = [(m[method]["ood"] - m["none"]["ood"], m["neutral"]["ood"] - m["none"]["ood"])
             for m in reps.values() if {method, "none", "neutral"} <= set(m)]
    if not pairs:
        return {"n": 0, "mean": NAN, "low": NAN, "high": NAN}
    gain, room = np.array(pairs).T
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(pairs), (resamples, len(pairs)))
    ratios = gain[idx].sum(1) / room[idx].sum(1)
    low, high = np.quantile(ratios, [0.025, 0.975])
    return {"n": len(pairs), "mean": float(gain.sum() / room.sum()), "low": float(low),
            "high": float(high)}


def fmt(ci: dict) -> str:
    if not ci.get("n"):
        return "—"
    return f"{ci['mean']:+.3f} [{ci['low']:+.3f}, {ci['high']:+.3f}]"
