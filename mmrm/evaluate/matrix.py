"""The cross-distribution matrix: every reward model (rows: trained on) on every test set
(columns: tested on)."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from mmrm.evaluate.metrics import evaluate_model
from mmrm.evaluate.plots import plot_matrix


def id_ood(accuracy: dict[str, float], source: str) -> dict[str, float]:
    """The one ID / OOD of mmrm (the matrix, the training runs' MLflow metrics,
    ``metrics/pipeline.json``): ``ID`` is the accuracy on the test set of the source the RM
    was trained on, ``OOD`` the mean over the other test sets (NaN where there is none).

    >>> id_ood({"povid": 0.9, "rlhfv": 0.5, "vlf": 0.75}, "povid")
    {'ID': 0.9, 'OOD': 0.625}
    """
    others = [v for column, v in accuracy.items() if column != source]
    return {"ID": accuracy.get(source, float("nan")),
            "OOD": statistics.mean(others) if others else float("nan")}


@dataclass
class CrossDistributionMatrix:
    """Accuracy of RMs (rows: trained on) on test sets (columns: tested on).

    A cell is in distribution (ID) when the row's source label equals the column's. A row's
    source is ``row_sources[row]``, else the row name up to the first ``/``
    (``povid/sfc_two_stage`` was trained on ``povid``).
    """

    accuracy: dict[str, dict[str, float]]
    row_sources: dict[str, str] = field(default_factory=dict)

    def source_of(self, row: str) -> str:
        return self.row_sources.get(row, row.split("/")[0])

    @property
    def columns(self) -> list[str]:
        return sorted({c for cells in self.accuracy.values() for c in cells})

    def row_summary(self, row: str) -> dict[str, float]:
        """The row's :func:`id_ood`."""
        return id_ood(self.accuracy[row], self.source_of(row))

    def summary(self) -> dict[str, float]:
        """Mean ID over rows that have an ID cell; mean OOD over rows' OOD means."""
        rows = [self.row_summary(r) for r in self.accuracy]
        ids = [r["ID"] for r in rows if not math.isnan(r["ID"])]
        oods = [r["OOD"] for r in rows if not math.isnan(r["OOD"])]
        return {"ID": statistics.mean(ids) if ids else float("nan"),
                "OOD": statistics.mean(oods) if oods else float("nan")}

    def to_json(self) -> dict:
        return {"accuracy": self.accuracy,
                "sources": {r: self.source_of(r) for r in self.accuracy},
                "rows": {r: self.row_summary(r) for r in self.accuracy}, **self.summary()}

    def to_markdown(self) -> str:
        cols = self.columns
        lines = ["| trained on \\ tested on | " + " | ".join(cols) + " | ID | OOD |",
                 "| --- |" + " ---: |" * (len(cols) + 2)]
        for row, cells in self.accuracy.items():
            source = self.source_of(row)
            shown = [(f"**{cells[c]:.3f}**" if c == source else f"{cells[c]:.3f}")
                     if c in cells else "" for c in cols]
            s = self.row_summary(row)
            lines.append(f"| {row} | " + " | ".join(shown) + f" | {s['ID']:.3f} | {s['OOD']:.3f} |")
        total = self.summary()
        lines.append(f"\nmean ID {total['ID']:.3f} · mean OOD {total['OOD']:.3f} "
                     f"(bold: in distribution)")
        return "\n".join(lines) + "\n"

    def plot(self, path: str | Path, title: str = "pairwise accuracy") -> Path:
        """A heatmap PNG of the matrix (rows: trained on, columns: tested on)."""
        rows = list(self.accuracy)
        return plot_matrix({r: self.accuracy[r] for r in rows}, self.columns,
                           {r: self.source_of(r) for r in rows}, path, title)

    def write(self, folder: str | Path, stem: str = "matrix") -> dict[str, Path]:
        """``stem.json``, ``stem.md`` and ``stem.png`` under ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = {"json": folder / f"{stem}.json", "markdown": folder / f"{stem}.md",
                 "png": folder / f"{stem}.png"}
        from mmrm.outputs import write_atomic

        write_atomic(paths["json"], json.dumps(self.to_json(), indent=2) + "\n")
        write_atomic(paths["markdown"], self.to_markdown())
        self.plot(paths["png"])
        return paths


def cross_distribution(models: dict[str, str | Path], tests: dict[str, str | Path],
                       row_sources: dict[str, str] | None = None, batch_size: int = 32,
                       progress: bool = False) -> CrossDistributionMatrix:
    """Evaluate every model on every test set.

    Args:
        models: row name -> saved RM directory.
        tests: column name (the test set's source label) -> pairwise file.
        row_sources: row name -> the source label it was trained on (default: the row name
            up to the first ``/``, so ``povid/sfc_two_stage`` was trained on ``povid``).
    """
    accuracy = {}
    for row, model_dir in models.items():
        reports = evaluate_model(model_dir, tests, batch_size, progress=progress)
        accuracy[row] = {col: report["accuracy"] for col, report in reports.items()}
    return CrossDistributionMatrix(accuracy, dict(row_sources or {}))
