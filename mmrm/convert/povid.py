"""POVID (YiyangAiLab/POVID_preference_data_for_VLLMs): a JSON array of LLaVA conversations.

Each element holds ``id``, ``image`` (a COCO train2014 file name), ``conversations`` (human
turn, then the chosen gpt turn) and ``rejected_conversations`` (same human turn, rejected gpt
turn). Images are not in the release: point ``image_root`` at the COCO train2014 folder.

``image`` is read both ways the release is used: as a path relative to the image root
(``./data/coco/COCO_train2014_....jpg`` in the README's reading) and, when that does not
exist, as a bare file name inside the root (the training code's reading). The manifest
counts which reading matched under ``notes.image_reading``.
"""

from __future__ import annotations

from pathlib import Path

from mmrm.convert.sink import PairSink
from mmrm.convert.sources import iter_json_array
from mmrm.formats import id_field, text_field
from mmrm.images import resolve_image_path
from mmrm.ledger import FieldProblem

IMAGE_MARKER = "<image>"


def conversation_turns(obj: dict, key: str) -> tuple[str, str]:
    """The first human turn (without the ``<image>`` marker) and the gpt turn after it."""
    turns = obj.get(key)
    if turns is None:
        raise FieldProblem(key, "missing", "missing_field")
    if not isinstance(turns, list):
        raise FieldProblem(key, f"expected a list of turns, got {type(turns).__name__}",
                           "wrong_type")
    human = gpt = None
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise FieldProblem(f"{key}[{i}]", "expected an object", "wrong_type")
        speaker = turn.get("from")
        if speaker == "human" and human is None:
            human = text_field(turn, "value", prefix=f"{key}[{i}].")
        elif speaker == "gpt" and human is not None:
            gpt = text_field(turn, "value", prefix=f"{key}[{i}].")
            break
    if human is None or gpt is None:
        raise FieldProblem(key, "needs a 'human' turn followed by a 'gpt' turn", "missing_field")
    prompt = strip_image_marker(human)
    if not prompt:
        raise FieldProblem(f"{key}[0].value", "empty once '<image>' is removed", "empty_text")
    return prompt, gpt


def strip_image_marker(text: str) -> str:
    """Remove LLaVA's ``<image>`` placeholder and the newline that goes with it."""
    return text.replace(IMAGE_MARKER + "\n", "").replace("\n" + IMAGE_MARKER, "") \
               .replace(IMAGE_MARKER, "").strip()


def find_image(name: str, root: Path, root_is_explicit: bool) -> tuple[Path, str]:
    """Apply both readings of POVID's ``image``; returns the path and the reading used."""
    as_path = resolve_image_path(name, root, root_is_explicit=root_is_explicit, field="image")
    bare = root / Path(name).name
    if Path(name).name == name or as_path == bare.resolve():
        reading = "bare_name"
    else:
        reading = "relative_path"
    if as_path.is_file():
        return as_path, reading
    if bare.is_file():
        return bare, "bare_name"
    raise FieldProblem("image", f"image not found as {str(as_path)!r} nor as {str(bare)!r}",
                       "image_missing")


def convert_povid(src: Path, out: Path, *, on_error: str = "raise",
                  image_root: Path | None = None, max_pixels: int | None = None) -> dict:
    """Convert POVID's JSON array to pairwise JSONL; returns the manifest."""
    src = Path(src)
    root = Path(image_root) if image_root is not None else src.parent
    kwargs = {"max_pixels": max_pixels} if max_pixels else {}
    with PairSink(out, "povid", sources=[src], on_error=on_error, **kwargs) as sink:
        for line, obj in iter_json_array(src, sink.records):
            with sink.record(src, line):
                record_id = id_field(obj)
                prompt, chosen = conversation_turns(obj, "conversations")
                rejected_prompt, rejected = conversation_turns(obj, "rejected_conversations")
                if rejected_prompt != prompt:
                    raise FieldProblem("rejected_conversations", "human turn differs from "
                                       "the one in 'conversations'", "prompt_mismatch")
                image, reading = find_image(text_field(obj, "image"), root, image_root is not None)
                sink.write({"id": record_id, "prompt": prompt,
                            "img_path": sink.images.add_file(image, field="image"),
                            "chosen": chosen, "rejected": rejected})
                sink.note("image_reading", reading)
    return sink.manifest
