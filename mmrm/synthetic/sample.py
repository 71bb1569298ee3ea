"""A small sample of every released format, written and converted end to end.

It shows, on a fresh machine and in seconds, what each converter reads and writes. The
items are simple captions of single-shape scenes: the chosen answer names the right colour,
the rejected one a wrong colour.
"""

from __future__ import annotations

import random
from pathlib import Path

from mmrm.convert import convert
from mmrm.synthetic import released
from mmrm.synthetic.scenes import COLOURS, SHAPES, Scene

PROMPT = "What is shown in the image?"


def _pair_items(prefix: str, count: int, rng: random.Random) -> list[released.PairItem]:
    items = []
    for n in range(count):
        scene = Scene.single(rng.choice(SHAPES), rng.choice(sorted(COLOURS)))
        wrong = rng.choice([c for c in sorted(COLOURS) if c != scene.thing.colour])
        items.append(released.PairItem(
            id=f"{prefix}-{n}", scene=scene, prompt=PROMPT,
            chosen=f"The image shows {scene.describe()}.",
            rejected=f"The image shows {scene.with_attribute('colour', wrong).describe()}."))
    return items


def _multi_items(count: int, rng: random.Random) -> list[released.MultiItem]:
    items = []
    for n in range(count):
        scene = Scene.single(rng.choice(SHAPES), rng.choice(sorted(COLOURS)))
        others = rng.sample([c for c in sorted(COLOURS) if c != scene.thing.colour], 3)
        responses = [f"The image shows {scene.with_attribute('colour', c).describe()}."
                     for c in [scene.thing.colour, *others]]
        ratings = [{"Helpfulness": "5", "Visual Faithfulness": "5"}] + \
                  [{"Helpfulness": str(rng.randint(1, 4)), "Visual Faithfulness": "1"}
                   for _ in others]
        items.append(released.MultiItem(id=f"vlf-{n}", scene=scene, prompt=PROMPT,
                                        responses=tuple(responses), ratings=tuple(ratings)))
    return items


def write_sample(folder: Path, seed: int = 0, count: int = 8) -> list[released.Released]:
    """Write ``count`` items in each released format under ``folder/raw/<format>/``."""
    rng = random.Random(seed)
    raw = Path(folder) / "raw"
    return [
        released.write_povid(_pair_items("COCO_train2014", count, rng), raw / "povid"),
        released.write_rlhfv(_pair_items("rlhfv", count, rng), raw / "rlhfv"),
        released.write_rlaifv(_pair_items("rlaifv", count, rng), raw / "rlaifv"),
        released.write_vlfeedback(_multi_items(count, rng), raw / "vlfeedback"),
        released.write_vlrewardbench(_pair_items("RLAIF", count, rng), raw / "vlrewardbench"),
        released.write_mmrewardbench(_pair_items("nocaps", count, rng), raw / "mmrewardbench"),
    ]


def convert_sample(folder: Path, seed: int = 0, count: int = 8) -> dict[str, dict]:
    """Write the sample and convert every format; returns each format's manifest."""
    manifests = {}
    for data in write_sample(folder, seed, count):
        out = Path(folder) / "converted" / data.format / "pairs.jsonl"
        manifests[data.format] = convert(data.format, data.src, out, image_root=data.image_root)
    return manifests
