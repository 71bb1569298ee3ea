"""Record schemas and the validating reader: every kind of bad line, in both policies."""

import json

import pytest

from imagebytes import png_claiming_size
from mmrm.formats import (ImageCheck, ImageRules, InferenceRecord, MultiRecord, PairRecord,
                          read_inference, read_multi, read_pairs)
from mmrm.ledger import Ledger, OnError, RecordError



def good(i, **changes):
    record = {"id": f"p{i}", "prompt": "What colour?", "img_path": "img.png",
              "chosen": "Red.", "rejected": "Blue."}
    record.update(changes)
    return record


def write_jsonl(path, rows):
    """Rows are dicts (dumped) or raw strings (written as they are)."""
    with open(path, "w") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return path


@pytest.fixture
def data_dir(tmp_path, write_image):
    write_image("img.png")
    write_image("broken.png", data=b"this is not an image")
    write_image("bomb.png", data=png_claiming_size(100_000, 100_000))
    (tmp_path / "outside").mkdir()
    write_image("outside/secret.png")
    return tmp_path


BAD_LINES = [
    ("malformed_json", '{"id": "x", "prompt": ', "<line>", "malformed JSON"),
    ("missing_field", {k: v for k, v in good(1).items() if k != "chosen"}, "chosen", "missing"),
    ("wrong_type", good(2, prompt=["not", "text"]), "prompt", "expected a string, got list"),
    ("empty_text", good(3, prompt="   "), "prompt", "empty"),
    ("empty_text", good(4, rejected=""), "rejected", "empty"),
    ("chosen_equals_rejected", good(5, rejected="Red."), "rejected", "identical to chosen"),
    ("duplicate_id", good(0, chosen="Green."), "id", "duplicate id 'p0'"),
    ("image_missing", good(6, img_path="nope.png"), "img_path", "image not found"),
    ("image_undecodable", good(7, img_path="broken.png"), "img_path", "does not decode"),
    ("image_path_escapes_root", good(8, img_path="../escape.png"), "img_path",
     "is outside the data root"),
    ("image_too_large", good(9, img_path="bomb.png"), "img_path", "exceeds the limit"),
]


@pytest.mark.parametrize("reason,line,field,problem", BAD_LINES,
                         ids=[f"{r}-{f}" for r, _, f, _ in BAD_LINES])
def test_raise_names_file_line_field_and_problem(data_dir, reason, line, field, problem):
    path = write_jsonl(data_dir / "pairs.jsonl", [good(0), "", line, good(10)])
    with pytest.raises(RecordError) as caught:
        list(read_pairs(path, images=ImageRules(check=ImageCheck.HEADER)))
    err = caught.value
    # the bad record is on line 3: line 2 is blank and holds no record
    assert str(err).startswith(f"{path}:3: {field}: ")
    assert problem in err.problem
    assert (err.line, err.field, err.reason) == (3, field, reason)


def test_skip_counts_every_bad_line_exactly(data_dir):
    rows = [good(0)] + [line for _, line, _, _ in BAD_LINES] + [good(10), good(11)]
    path = write_jsonl(data_dir / "pairs.jsonl", rows)
    ledger = Ledger(on_error=OnError.SKIP)
    records = list(read_pairs(path, images=ImageRules(check=ImageCheck.HEADER), ledger=ledger))
    ledger.written = len(records)
    assert [r.id for r in records] == ["p0", "p10", "p11"]
    assert ledger.read == 3 + len(BAD_LINES)
    assert ledger.skipped_by_reason == {"malformed_json": 1, "missing_field": 1,
                                        "wrong_type": 1, "empty_text": 2,
                                        "chosen_equals_rejected": 1, "duplicate_id": 1,
                                        "image_missing": 1, "image_undecodable": 1,
                                        "image_path_escapes_root": 1, "image_too_large": 1}
    ledger.check_balanced()
    assert ledger.examples[0].startswith(f"{path}:2: <line>: malformed JSON")
    assert len(ledger.examples) == 5


def test_absolute_paths_must_lie_inside_the_data_root(data_dir):
    """The root is the data file's folder unless --image-root names another: a record cannot
    reach an arbitrary file of the machine (README, "Bad input")."""
    inside = data_dir / "outside" / "secret.png"
    path = write_jsonl(data_dir / "outside" / "pairs.jsonl", [good(0, img_path=str(inside))])
    [record] = read_pairs(path)                       # inside the file's own folder
    assert record.image_file == inside
    (data_dir / "other").mkdir(exist_ok=True)
    elsewhere = write_jsonl(data_dir / "other" / "pairs.jsonl", [good(0, img_path=str(inside))])
    with pytest.raises(RecordError, match="absolute path .* is outside the data root .*"
                                          "--image-root names another"):
        list(read_pairs(elsewhere))
    [record] = read_pairs(elsewhere, images=ImageRules(root=data_dir))   # a root that holds it
    assert record.image_file == inside
    with pytest.raises(RecordError, match="is outside the data root"):
        list(read_pairs(path, images=ImageRules(root=data_dir / "other")))


def test_relative_paths_resolve_against_the_given_root(data_dir):
    path = write_jsonl(data_dir / "outside" / "pairs.jsonl", [good(0, img_path="img.png")])
    [record] = read_pairs(path, images=ImageRules(root=data_dir))
    assert record.image_file == (data_dir / "img.png").resolve()
    assert record.line == 1
    with pytest.raises(RecordError, match="image not found"):  # default root: file's folder
        list(read_pairs(path))


def test_decode_check_catches_a_truncated_image(data_dir):
    whole = (data_dir / "img.png").read_bytes()
    (data_dir / "cut.png").write_bytes(whole[: len(whole) // 2])
    path = write_jsonl(data_dir / "pairs.jsonl", [good(0, img_path="cut.png")])
    [_] = read_pairs(path, images=ImageRules(check=ImageCheck.EXISTS))
    with pytest.raises(RecordError, match="does not decode"):
        list(read_pairs(path, images=ImageRules(check=ImageCheck.DECODE)))


def test_extra_fields_are_kept_and_written_back():
    record = PairRecord.from_json(good(0, subset="hallucination", source="povid"))
    assert record.extra == {"subset": "hallucination", "source": "povid"}
    assert record.to_json() == good(0, subset="hallucination", source="povid")


def test_integer_ids_are_kept_as_text():
    assert PairRecord.from_json(good(0, id=17)).id == "17"


def test_inference_records(data_dir):
    rows = [{"prompt": "Q?", "img_path": "img.png", "responses": ["a", "b"]},
            {"id": "x", "prompt": "Q?", "img_path": "img.png", "responses": []},
            {"prompt": "Q?", "img_path": "img.png", "responses": ["a", " "]},
            {"prompt": "Q?", "img_path": "img.png", "responses": "a"}]
    path = write_jsonl(data_dir / "infer.jsonl", rows)
    ledger = Ledger(on_error=OnError.SKIP)
    records = list(read_inference(path, ledger=ledger))
    assert records == [InferenceRecord(prompt="Q?", img_path="img.png", responses=("a", "b"))]
    assert ledger.skipped_by_reason == {"empty_text": 2, "wrong_type": 1}
    assert "responses[1]: empty" in ledger.examples[1]


def test_multi_record_shapes_agree_and_mismatched_lengths_are_refused(data_dir):
    annotations = [{"Helpfulness": {"Rating": "4"}}, {"Helpfulness": {"Rating": "2"}}]
    as_list = {"id": "m", "prompt": "Q?", "img_path": "img.png",
               "completions": [{"annotations": a, "model": f"m{i}", "response": f"r{i}"}
                               for i, a in enumerate(annotations)]}
    as_columns = {**as_list, "completions": {"annotations": annotations, "model": ["m0", "m1"],
                                             "response": ["r0", "r1"]}}
    assert MultiRecord.from_json(as_list) == MultiRecord.from_json(as_columns)
    broken = {**as_list, "id": "n", "completions": {"annotations": annotations,
                                                     "model": ["m0"], "response": ["r0", "r1"]}}
    path = write_jsonl(data_dir / "multi.jsonl", [as_list, broken])
    with pytest.raises(RecordError) as caught:
        list(read_multi(path))
    assert str(caught.value).startswith(f"{path}:2: completions: lists of different lengths")
    assert caught.value.reason == "mismatched_lengths"
