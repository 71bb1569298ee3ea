"""VLFeedback (MMInstruction/VLFeedback) and the project's multi-completion JSONL.

VLFeedback's raw ``vlfeedback_80k.jsonl`` has ``id``, ``prompt``, ``models`` and four
``completions`` with per-aspect ratings; its image is ``merged_images/{id}.jpg`` beside the
file (or under ``image_root``). A record that carries ``img_path`` (as a loading script adds)
uses that instead. The ``multi`` format is the same shape with ``img_path`` required.

Pairs follow the paper's rule (:mod:`mmrm.convert.pairing`); a pair's id is
``{record id}#{chosen}-{rejected}`` (completion indices), and it keeps both models' names and
scores.
"""

from __future__ import annotations

from pathlib import Path

from mmrm.convert.pairing import pairs_from_completions
from mmrm.convert.sink import PairSink
from mmrm.formats import MultiRecord, iter_jsonl
from mmrm.images import resolve_image_path


def convert_multi_completion(src: Path, out: Path, *, on_error: str = "raise",
                             image_root: Path | None = None, max_pixels: int | None = None,
                             fmt: str = "multi") -> dict:
    """Convert multi-completion JSONL (``multi``, or raw ``vlfeedback``) to pairs."""
    src = Path(src)
    root = Path(image_root) if image_root is not None else src.parent
    kwargs = {"max_pixels": max_pixels} if max_pixels else {}
    with PairSink(out, fmt, sources=[src], on_error=on_error, one_pair_per_record=False,
                  **kwargs) as sink:
        for line, obj in iter_jsonl(src, sink.records):
            with sink.record(src, line):
                record = MultiRecord.from_json(obj, require_img_path=fmt == "multi")
                img_path = record.img_path or f"merged_images/{record.id}.jpg"
                image = resolve_image_path(img_path, root, root_is_explicit=image_root
                                           is not None)
                pairs = pairs_from_completions(record.completions, sink.record_pairs,
                                               where=f"{src}:{line}")
                stored = sink.images.add_file(image) if pairs else None
                for p in pairs:
                    chosen, rejected = record.completions[p.chosen], record.completions[p.rejected]
                    sink.write({"id": f"{record.id}#{p.chosen}-{p.rejected}",
                                "prompt": record.prompt, "img_path": stored,
                                "chosen": chosen.response, "rejected": rejected.response,
                                "chosen_model": chosen.model, "rejected_model": rejected.model,
                                "chosen_score": p.chosen_score,
                                "rejected_score": p.rejected_score})
    return sink.manifest


def convert_vlfeedback(src: Path, out: Path, **kwargs) -> dict:
    """Convert VLFeedback's released JSONL (images in ``merged_images/``)."""
    return convert_multi_completion(src, out, fmt="vlfeedback", **kwargs)
