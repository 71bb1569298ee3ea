"""Plots of evaluation results: the matrix heatmap, reward and margin histograms, the pair
weights over training (matplotlib, headless)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch


def plot_matrix(accuracy: dict[str, dict[str, float]], columns: list[str],
                sources: dict[str, str], path: str | Path, title: str) -> Path:
    """A heatmap of accuracies (rows: trained on, columns: tested on), each row's own source
    in bold."""
    plt = pyplot()
    rows = list(accuracy)
    values = [[accuracy[r].get(c, float("nan")) for c in columns] for r in rows]
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(columns), 1.2 + 0.6 * len(rows)))
    image = ax.imshow(values, vmin=0.0, vmax=1.0, cmap="RdYlGn", aspect="auto")
    ax.set_xticks(range(len(columns)), columns)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("tested on")
    ax.set_ylabel("trained on")
    for i, row in enumerate(rows):
        for j, col in enumerate(columns):
            if not math.isnan(values[i][j]):
                weight = "bold" if col == sources[row] else "normal"
                ax.text(j, i, f"{values[i][j]:.3f}", ha="center", va="center",
                        fontweight=weight)
    fig.colorbar(image, ax=ax)
    ax.set_title(title)
    return save_figure(fig, path)


def plot_reward_margins(chosen: torch.Tensor, rejected: torch.Tensor, path: str | Path,
                        title: str = "") -> Path:
    """Histograms of the chosen and rejected rewards, and of their margin."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.hist(chosen.numpy(), bins=40, alpha=0.6, label="chosen")
    left.hist(rejected.numpy(), bins=40, alpha=0.6, label="rejected")
    left.set_xlabel("reward")
    left.legend()
    right.hist((chosen - rejected).numpy(), bins=40, color="grey")
    right.axvline(0.0, color="black", linewidth=1)
    right.set_xlabel("margin (chosen - rejected)")
    fig.suptitle(title or "reward distribution")
    return save_figure(fig, path)


def plot_weight_histograms(metrics_file: str | Path, path: str | Path, parts: int = 3) -> Path:
    """SFC weight histograms over training, from ``metrics.jsonl`` (``weight/hist``).

    The log steps are split into ``parts`` consecutive stretches (early, ..., late) and the
    histogram counts summed within each, so the plot shows how the weights move as the
    multimodal RM learns.
    """
    from mmrm.weighting import WEIGHT_BIN_EDGES

    records = [json.loads(line) for line in Path(metrics_file).read_text().splitlines()
               if line.strip()]
    records = [r for r in records if "weight/hist" in r]
    if not records:
        raise ValueError(f"{metrics_file}: no weight/hist records (a run with weighting "
                         f"none, or one logged before weight histograms existed)")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    centres = [(a + b) / 2 for a, b in zip(WEIGHT_BIN_EDGES, WEIGHT_BIN_EDGES[1:])]
    width = WEIGHT_BIN_EDGES[1] - WEIGHT_BIN_EDGES[0]
    size = math.ceil(len(records) / parts)
    for k in range(0, len(records), size):
        chunk = records[k:k + size]
        counts = [sum(r["weight/hist"][i] for r in chunk) for i in range(len(centres))]
        total = max(1, sum(counts))
        ax.step(centres, [c / total / width for c in counts], where="mid",
                label=f"steps {chunk[0]['step']}-{chunk[-1]['step']}")
    ax.set_xlabel("pair weight (SFC)")
    ax.set_ylabel("density")
    ax.legend()
    return save_figure(fig, path)


def pyplot():
    """matplotlib's pyplot on the headless Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path) -> Path:
    """Write ``fig`` as a PNG (folders made) and close it."""
    from mmrm.outputs import atomic_file

    path = Path(path)
    fig.tight_layout()
    try:
        with atomic_file(path, "wb") as handle:       # written whole, like every output
            fig.savefig(handle, dpi=100, format="png")
    finally:
        pyplot().close(fig)
    return path
