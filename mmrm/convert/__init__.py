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
from mmrm.outputs import refuse_overwriting_inputs


@dataclass(frozen=True)
class Format:
    convert: Callable[..., dict]
    description: str
    reads_folder: bool = False      # SRC may be a folder (of parquet shards)


FORMATS: dict[str, Format] = {
    "vlfeedback": Format(convert_vlfeedback, "VLFeedback JSONL (4 rated completions per "
                         "prompt), images in merged_images/{id}.jpg; pairs by mean rating"),
    "povid": Format(convert_povid, "POVID JSON array of LLaVA conversations; COCO images "
                    "under --image-root, by bare name or relative path"),
    "rlhfv": Format(convert_rlhfv, "RLHF-V parquet, 'text' a JSON string of "
                    "question/chosen/rejected, image bytes embedded"),
    "rlaifv": Format(convert_rlaifv, "RLAIF-V parquet shards (a folder or a file), "
                     "question/chosen/rejected columns, image bytes embedded", True),
    "vlrewardbench": Format(convert_vlrewardbench, "VL-RewardBench parquet (evaluation): two "
                            "responses ranked by human_ranking, 0 = best", True),
    "mmrewardbench": Format(convert_mmrewardbench, "Multimodal RewardBench all_data.json "
                            "(evaluation): Output1/Output2 and Better, per Category"),
    "pairs": Format(convert_pairs, "mmrm pairwise JSONL {id,prompt,img_path,chosen,rejected}: "
                    "validated, images copied in"),
    "multi": Format(convert_multi_completion, "mmrm multi-completion JSONL "
                    "{id,prompt,img_path,completions}: pairs by mean rating"),
}


def convert(fmt: str, src: Path, out: Path, **kwargs) -> dict:
    """Convert ``src`` in format ``fmt`` to pairwise JSONL at ``out``; returns the manifest.

    Raises:
        ValueError: an unknown format, or paths that cannot work (see :func:`check_paths`).
        RecordError: the first bad record, under ``on_error="raise"``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {sorted(FORMATS)}")
    src, out = Path(src), Path(out)
    check_paths(FORMATS[fmt], src, out)
    return FORMATS[fmt].convert(src, out, **kwargs)


def check_paths(fmt: Format, src: Path, out: Path) -> None:
    """Refuse, before anything is written, paths that would fail half-way or destroy data:
    a missing SRC, a folder where a file is read, an OUT that is a folder, sits under a file
    or would overwrite the source (OUT, its manifest or its images folder)."""
    if not src.exists():
        raise ValueError(f"{src}: no such file or folder")
    if src.is_dir() and not fmt.reads_folder:
        raise ValueError(f"{src}: is a folder; this format reads one file")
    if out.is_dir():
        raise ValueError(f"{out}: is a folder; OUT is the pairwise .jsonl file to write")
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise ValueError(f"{out}: cannot be written, {parent} is a file")
    files = [src] if src.is_file() else [p for p in src.rglob("*") if p.is_file()]
    refuse_overwriting_inputs(files, {"OUT": out, "OUT's manifest": manifest_path(out)})
    sources = {p.resolve() for p in files}
    images = (out.parent / "images").resolve()
    if any(s.is_relative_to(images) for s in sources):
        raise ValueError(f"{src}: lies in {images}, where OUT's images are written; choose "
                         f"another output folder")


__all__ = ["FORMATS", "Format", "convert", "manifest_path"]
