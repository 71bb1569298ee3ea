"""The built-in benchmark as ``mmrm benchmark make`` writes it: every split in its released
format (:func:`mmrm.synthetic.environments.write_benchmark`), then converted to pairs by the
real converters, as a user's data would be."""

from __future__ import annotations

from pathlib import Path

from mmrm.convert import convert
from mmrm.synthetic.environments import WrittenSplit


def convert_benchmark(folder: Path, written: list[WrittenSplit]) -> dict[tuple[str, str], Path]:
    """Convert every written split with the real converters to ``folder/pairs/<env>/<split>.jsonl``.

    Returns the pairwise file of each (environment, split).
    """
    outputs = {}
    for w in written:
        out = Path(folder) / "pairs" / w.environment / f"{w.split}.jsonl"
        convert(w.raw.format, w.raw.src, out, image_root=w.raw.image_root)
        outputs[(w.environment, w.split)] = out
    return outputs
