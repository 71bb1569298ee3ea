"""The two external evaluation sets: VL-RewardBench and Multimodal RewardBench.

VL-RewardBench (MMInstruction/VL-RewardBench): parquet ``data/test-*`` with ``id``, ``query``,
``response`` (two strings), ``image`` (struct with bytes) and ``human_ranking`` (the rank of
each response, 0 = best). A pair's ``subset`` is its group, read from the id's prefix.

Multimodal RewardBench (facebookresearch/multimodal_rewardbench): ``data/all_data.json``, a
JSON array with ``ID``, ``Text``, ``Image`` (relative to ``data/``), ``Output1``, ``Output2``,
``Better`` (``"Output1"`` or ``"Output2"``) and ``Category``. A pair's ``subset`` is its
category.
"""

from __future__ import annotations

from pathlib import Path

from mmrm.convert.rlhfv import image_bytes
from mmrm.convert.sink import PairSink
from mmrm.convert.sources import iter_json_array, iter_parquet_rows, parquet_files
from mmrm.formats import id_field, text_field
from mmrm.images import resolve_image_path
from mmrm.ledger import FieldProblem

#: VL-RewardBench's groups by id prefix; any other id is ``general``.
VLRB_GROUPS = ("RLAIF", "RLHF", "mathverse", "mmmu", "wildvision")


def vlrewardbench_group(record_id: str) -> str:
    lowered = record_id.lower()
    for group in VLRB_GROUPS:
        if lowered.startswith(group.lower()):
            return group
    return "general"


def ranked_pair(responses, ranking) -> tuple[int, int]:
    """Indices (better, worse) of two responses from ``human_ranking`` (0 = best).

    Raises:
        FieldProblem: not two responses and two integer ranks, or equal ranks (a tie).
    """
    if not isinstance(responses, list) or not isinstance(ranking, list):
        raise FieldProblem("response", "expected lists for response and human_ranking",
                           "wrong_type")
    if len(responses) != 2 or len(ranking) != 2:
        raise FieldProblem("human_ranking", f"expected 2 responses and 2 ranks, got "
                                            f"{len(responses)} and {len(ranking)}",
                           "mismatched_lengths")
    if not all(isinstance(r, int) and not isinstance(r, bool) for r in ranking):
        raise FieldProblem("human_ranking", "expected integer ranks", "wrong_type")
    if ranking[0] == ranking[1]:
        raise FieldProblem("human_ranking", f"tie {ranking}", "tie")
    return (0, 1) if ranking[0] < ranking[1] else (1, 0)


def convert_vlrewardbench(src: Path, out: Path, *, on_error: str = "raise",
                          image_root: Path | None = None, max_pixels: int | None = None) -> dict:
    """Convert VL-RewardBench's parquet (a file or its ``data/`` folder) to pairs."""
    files = parquet_files(src)
    kwargs = {"max_pixels": max_pixels} if max_pixels else {}
    columns = ["id", "query", "response", "image", "human_ranking"]
    with PairSink(out, "vlrewardbench", sources=files, on_error=on_error, **kwargs) as sink:
        for path in files:
            for row_no, row in iter_parquet_rows(path, columns, sink.records):
                with sink.record(path, row_no, unit="row"):
                    record_id = id_field(row)
                    better, worse = ranked_pair(row.get("response"), row.get("human_ranking"))
                    responses = [text_field({f"response[{i}]": r}, f"response[{i}]")
                                 for i, r in enumerate(row["response"])]
                    sink.write({"id": record_id, "prompt": text_field(row, "query"),
                                "img_path": sink.images.add_bytes(image_bytes(row)),
                                "chosen": responses[better], "rejected": responses[worse],
                                "subset": vlrewardbench_group(record_id)})
    return sink.manifest


def convert_mmrewardbench(src: Path, out: Path, *, on_error: str = "raise",
                          image_root: Path | None = None, max_pixels: int | None = None) -> dict:
    """Convert Multimodal RewardBench's ``all_data.json`` to pairs."""
    src = Path(src)
    root = Path(image_root) if image_root is not None else src.parent
    kwargs = {"max_pixels": max_pixels} if max_pixels else {}
    with PairSink(out, "mmrewardbench", sources=[src], on_error=on_error, **kwargs) as sink:
        for line, obj in iter_json_array(src, sink.records):
            with sink.record(src, line):
                better = obj.get("Better")
                if better not in ("Output1", "Output2"):
                    raise FieldProblem("Better", f"expected 'Output1' or 'Output2', got "
                                                 f"{better!r}", "bad_label")
                worse = "Output2" if better == "Output1" else "Output1"
                image = resolve_image_path(text_field(obj, "Image"), root,
                                           root_is_explicit=image_root is not None,
                                           field="Image")
                sink.write({"id": id_field(obj, "ID"), "prompt": text_field(obj, "Text"),
                            "img_path": sink.images.add_file(image, field="Image"),
                            "chosen": text_field(obj, better),
                            "rejected": text_field(obj, worse),
                            "subset": text_field(obj, "Category")})
    return sink.manifest
