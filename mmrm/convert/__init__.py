"""Converters from the released preference data sets to mmrm's pairwise JSONL.

Every converter has the signature ``convert(src, out, *, on_error, image_root, max_pixels)``
and returns the manifest it wrote beside ``out``. :data:`FORMATS` maps a format name to its
converter and a one-line description (shown by ``mmrm convert --help``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mmrm.convert.evalsets import convert_mmrewardbench, convert_vlrewardbench
from mmrm.convert.pairs import convert_pairs
from mmrm.convert.povid import convert_povid
from mmrm.convert.rlhfv import convert_rlaifv, convert_rlhfv
from mmrm.convert.sink import manifest_path
from mmrm.convert.vlfeedback import convert_multi_completion, convert_vlfeedback


@dataclass(frozen=True)
class Format:
    convert: Callable[..., dict]
    description: str


FORMATS: dict[str, Format] = {
    "vlfeedback": Format(convert_vlfeedback, "VLFeedback JSONL (4 rated completions per "
                         "prompt), images in merged_images/{id}.jpg; pairs by mean rating"),
    "povid": Format(convert_povid, "POVID JSON array of LLaVA conversations; COCO images "
                    "under --image-root, by bare name or relative path"),
    "rlhfv": Format(convert_rlhfv, "RLHF-V parquet, 'text' a JSON string of "
                    "question/chosen/rejected, image bytes embedded"),
    "rlaifv": Format(convert_rlaifv, "RLAIF-V parquet shards (a folder or a file), "
                     "question/chosen/rejected columns, image bytes embedded"),
    "vlrewardbench": Format(convert_vlrewardbench, "VL-RewardBench parquet (evaluation): two "
                            "responses ranked by human_ranking, 0 = best"),
    "mmrewardbench": Format(convert_mmrewardbench, "Multimodal RewardBench all_data.json "
                            "(evaluation): Output1/Output2 and Better, per Category"),
    "pairs": Format(convert_pairs, "mmrm pairwise JSONL {id,prompt,img_path,chosen,rejected}: "
                    "validated, images copied in"),
    "multi": Format(convert_multi_completion, "mmrm multi-completion JSONL "
                    "{id,prompt,img_path,completions}: pairs by mean rating"),
}


def convert(fmt: str, src: Path, out: Path, **kwargs) -> dict:
    """Convert ``src`` in format ``fmt`` to pairwise JSONL at ``out``; returns the manifest."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {sorted(FORMATS)}")
    return FORMATS[fmt].convert(Path(src), Path(out), **kwargs)


__all__ = ["FORMATS", "Format", "convert", "manifest_path"]
