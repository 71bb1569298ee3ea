"""Deterministic train / test / validation splits of a converted data set, by group.

Pairs that share an image (``key: image``), a prompt (``prompt``), or either (``both``: the
connected groups of pairs linked by a shared image or prompt) form a group; each group goes
to one split by a stable hash of its key and a seed, so the split is the same on every machine
and a model is never tested on an image it trained on. The split manifest records the sizes
and the leakage check, read back from the written files: how many image digests and prompts
occur in more than one split (0 for what the key groups by; generic prompts such as "Describe
this image." are shared under ``key: image``, and the manifest says how many).

Converted pairs name their images by content hash (``images/<sha256 prefix>.<ext>``), so the
image path *is* the image's digest.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from mmrm.formats import ImageCheck, ImageRules, read_pairs
from mmrm.images import sha256_file
from mmrm.outputs import write_atomic

SPLITS = ("train", "test", "val")


def group_keys(records: list[dict], key: str) -> list[str]:
    """Each pair's group: its image, its prompt, or (``both``) the smallest image path of the
    pairs it is linked to through shared images and prompts (union-find)."""
    if key in ("image", "prompt"):
        return [r["img_path" if key == "image" else "prompt"] for r in records]
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for r in records:
        a, b = find("i:" + r["img_path"]), find("p:" + r["prompt"])
        if a != b:
            parent[max(a, b)] = min(a, b)
    return [find("i:" + r["img_path"]) for r in records]


def assign(group: str, seed: int, test: float, val: float) -> str:
    """The split of a group: a point in [0, 1) from a stable hash, cut at test and val."""
    digest = hashlib.sha256(f"{seed}\0{group}".encode()).digest()
    point = int.from_bytes(digest[:8], "big") / 2**64
    return "test" if point < test else "val" if point < test + val else "train"


def split_pairs(pairs_file: Path, spec, test_only: bool = False) -> dict:
    """Write ``train.jsonl``, ``test.jsonl`` and ``val.jsonl`` beside ``pairs_file`` (the
    images stay where they are) and ``split.manifest.json``; returns the manifest.

    Args:
        pairs_file: a converted data set (``pairs.jsonl`` with ``images/`` beside it).
        spec: :class:`mmrm.pipeline.SplitParams` (test / val shares, key, seed, cap).
        test_only: every pair is test (an evaluation set).
    """
    pairs_file = Path(pairs_file)
    folder = pairs_file.parent
    rows = {name: [] for name in SPLITS}
    records = [r.to_json() for r in read_pairs(pairs_file, images=ImageRules(
        check=ImageCheck.NONE))]
    for record, group in zip(records, group_keys(records, spec.key)):
        split = "test" if test_only else assign(group, spec.seed, spec.test, spec.val)
        rows[split].append(record)
    if spec.max_train_pairs is not None:      # the first by hash, kept in file order
        keep = set(sorted(range(len(rows["train"])), key=lambda i: hashlib.sha256(
            f"{spec.seed}\0{rows['train'][i]['id']}".encode()).digest())[:spec.max_train_pairs])
        rows["train"] = [r for i, r in enumerate(rows["train"]) if i in keep]
    for name in SPLITS:
        write_atomic(folder / f"{name}.jsonl",
                      "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows[name]))
    manifest = {"source": pairs_file.name, "source_sha256": sha256_file(pairs_file),
                "key": spec.key, "seed": spec.seed, "test_only": test_only,
                "pairs": {name: len(rows[name]) for name in SPLITS},
                "dropped_by_cap": len(records) - sum(len(r) for r in rows.values()),
                "leakage": leakage(folder),
                "grouped_by": {"image": ["images"], "prompt": ["prompts"],
                               "both": ["images", "prompts"]}[spec.key],
                "files": {name: sha256_file(folder / f"{name}.jsonl") for name in SPLITS}}
    write_atomic(folder / "split.manifest.json", json.dumps(manifest, indent=2) + "\n")
    return manifest


def leakage(folder: Path) -> dict[str, int]:
    """Image digests and prompts that occur in more than one of the written splits."""
    seen = {"images": {}, "prompts": {}}
    for name in SPLITS:
        for line in (Path(folder) / f"{name}.jsonl").read_text().splitlines():
            record = json.loads(line)
            seen["images"].setdefault(record["img_path"], set()).add(name)
            seen["prompts"].setdefault(record["prompt"], set()).add(name)
    return {kind: sum(len(splits) > 1 for splits in found.values())
            for kind, found in seen.items()}




__all__ = ["SPLITS", "assign", "group_keys", "leakage", "split_pairs"]
