"""mmrm's own pairwise JSONL, validated and made self-contained (images copied in)."""

from __future__ import annotations

from pathlib import Path

from mmrm.convert.sink import PairSink
from mmrm.formats import ImageCheck, ImageRules, PairRecord, read_records


def convert_pairs(src: Path, out: Path, *, on_error: str = "raise",
                  image_root: Path | None = None, max_pixels: int | None = None) -> dict:
    """Validate pairwise JSONL and write it with images in a content-hashed folder."""
    src = Path(src)
    kwargs = {"max_pixels": max_pixels} if max_pixels else {}
    with PairSink(out, "pairs", sources=[src], on_error=on_error, **kwargs) as sink:
        rules = ImageRules(root=image_root, check=ImageCheck.NONE)
        for record in read_records(src, PairRecord, images=rules, ledger=sink.records,
                                   unique_ids=False):
            with sink.record(src, record.line):
                sink.write({**record.to_json(), "img_path":
                            sink.images.add_file(record.image_file)})
    return sink.manifest
