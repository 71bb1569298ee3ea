"""Writers of the released raw formats, so synthetic data enters through the real converters.

Each writer takes synthetic items and lays them out as the public release does (see
``shared/formats.md``), returning the path a user would hand to ``mmrm convert`` and, where the
release keeps images apart, the image root to pass with ``--image-root``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mmrm.synthetic.scenes import Scene, draw, encode


@dataclass(frozen=True)
class PairItem:
    id: str
    scene: Scene
    prompt: str
    chosen: str
    rejected: str


@dataclass(frozen=True)
class MultiItem:
    id: str
    scene: Scene
    prompt: str
    responses: tuple[str, ...]
    ratings: tuple[dict[str, str], ...]   # per completion: aspect -> rating string
    models: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class Released:
    """Where a written data set lies: ``src`` for the converter, ``image_root`` if separate."""

    format: str
    src: Path
    image_root: Path | None = None


def _image_struct(scene: Scene, size: int) -> dict:
    return {"bytes": encode(draw(scene, size)), "path": None}


def write_povid(items: list[PairItem], folder: Path, size: int = 56) -> Released:
    """POVID: a JSON array of LLaVA conversations; COCO-named JPEGs in ``train2014/``."""
    images = Path(folder) / "train2014"
    images.mkdir(parents=True, exist_ok=True)
    records = []
    for n, item in enumerate(items):
        name = f"COCO_train2014_{n:012d}.jpg"
        draw(item.scene, size).save(images / name, format="JPEG", quality=95)
        human = {"from": "human", "value": "<image>\n" + item.prompt}
        records.append({"id": item.id, "image": name,
                        "conversations": [human, {"from": "gpt", "value": item.chosen}],
                        "rejected_conversations": [human, {"from": "gpt",
                                                           "value": item.rejected}]})
    src = Path(folder) / "POVID_preference_data_for_VLLMs.json"
    src.write_text(json.dumps(records, indent=1))
    return Released("povid", src, images)


def write_rlhfv(items: list[PairItem], folder: Path, size: int = 56) -> Released:
    """RLHF-V: one parquet, ``text`` a JSON string, image bytes embedded, ``idx`` int64."""
    rows = [{"ds_name": "synthetic", "image": _image_struct(it.scene, size),
             "text": json.dumps({"question": it.prompt, "chosen": it.chosen,
                                 "rejected": it.rejected}),
             "origin_dataset": "synthetic", "origin_split": "train", "idx": n,
             "image_path": f"synthetic/{n}.png"} for n, it in enumerate(items)]
    src = Path(folder) / "RLHF-V-Dataset.parquet"
    src.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), src)
    return Released("rlhfv", src)


def write_rlaifv(items: list[PairItem], folder: Path, shards: int = 2, size: int = 56
                 ) -> Released:
    """RLAIF-V: parquet shards ``RLAIF-V-Dataset_000.parquet`` ..., ``idx`` a string."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for shard in range(shards):
        rows = [{"ds_name": "synthetic", "image": _image_struct(it.scene, size),
                 "question": it.prompt, "chosen": it.chosen, "rejected": it.rejected,
                 "origin_dataset": "synthetic", "origin_split": "train", "idx": it.id,
                 "image_path": f"synthetic/{it.id}.png"}
                for it in items[shard::shards]]
        pq.write_table(pa.Table.from_pylist(rows), folder / f"RLAIF-V-Dataset_{shard:03d}.parquet")
    return Released("rlaifv", folder)


def write_vlfeedback(items: list[MultiItem], folder: Path, size: int = 56) -> Released:
    """VLFeedback: JSONL with rated completions (ratings are strings); JPEGs in merged_images/."""
    folder = Path(folder)
    (folder / "merged_images").mkdir(parents=True, exist_ok=True)
    src = folder / "vlfeedback_80k.jsonl"
    with open(src, "w") as f:
        for item in items:
            draw(item.scene, size).save(folder / "merged_images" / f"{item.id}.jpg",
                                        format="JPEG", quality=95)
            models = item.models or tuple(f"model-{k}" for k in range(len(item.responses)))
            completions = [{"annotations": {aspect: {"Rating": rating, "Rationale": "synthetic"}
                                            for aspect, rating in ratings.items()},
                            "model": model, "response": response}
                           for response, ratings, model in zip(item.responses, item.ratings,
                                                               models)]
            f.write(json.dumps({"id": item.id, "prompt": item.prompt, "models": list(models),
                                "completions": completions}) + "\n")
    return Released("vlfeedback", src)


def write_vlrewardbench(items: list[PairItem], folder: Path, size: int = 56) -> Released:
    """VL-RewardBench: parquet under data/, two responses, ``human_ranking`` 0 = best.

    The better response is put first for even items and second for odd ones, so that the
    converter's reading of the ranking is exercised both ways.
    """
    rows = []
    for n, it in enumerate(items):
        responses, ranking = ([it.chosen, it.rejected], [0, 1]) if n % 2 == 0 else \
                             ([it.rejected, it.chosen], [1, 0])
        rows.append({"id": it.id, "query": it.prompt, "response": responses,
                     "image": _image_struct(it.scene, size), "human_ranking": ranking,
                     "models": ["synthetic-a", "synthetic-b"], "judge": "synthetic",
                     "rationale": "", "query_source": "synthetic", "meta": "{}",
                     "human_error_analysis": "", "ground_truth": ""})
    src = Path(folder) / "data" / "test-00000-of-00001.parquet"
    src.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), src)
    return Released("vlrewardbench", src.parent)


def write_mmrewardbench(items: list[PairItem], folder: Path, category: str = "synthetic",
                        size: int = 56) -> Released:
    """Multimodal RewardBench: ``data/all_data.json`` with images relative to ``data/``."""
    data = Path(folder) / "data"
    (data / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for n, it in enumerate(items):
        image = f"images/{it.id}.png"
        draw(it.scene, size).save(data / image, format="PNG")
        first, second, better = (it.chosen, it.rejected, "Output1") if n % 2 == 0 else \
                                (it.rejected, it.chosen, "Output2")
        records.append({"ID": it.id, "Text": it.prompt, "Image": image, "Output1": first,
                        "Output2": second, "Better": better, "Category": category})
    src = data / "all_data.json"
    src.write_text(json.dumps(records, indent=1))
    return Released("mmrewardbench", src)
