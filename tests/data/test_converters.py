"""Data contracts of the converters on fixtures written here in each release's own format.

The fixtures are laid out by hand (parquet via pyarrow, JSON arrays, JSONL, real PNG/JPEG
bytes), independently of mmrm's synthetic writers, and the expected pairs are spelled out.
"""

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from imagebytes import image_bytes, png_claiming_size
from mmrm.convert import FORMATS, convert, manifest_path
from mmrm.ledger import RecordError


RED, BLUE, GREEN = (220, 30, 30), (30, 30, 220), (30, 200, 30)


def read_pairs_file(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def check_contract(out: Path) -> dict:
    """What every converter output must satisfy; returns the manifest."""
    manifest = json.loads(manifest_path(out).read_text())
    pairs = read_pairs_file(out)
    records = manifest["records"]
    assert records["read"] == records["written"] + records["skipped"]
    assert records["skipped"] == sum(records["skipped_by_reason"].values())
    if "pairs" in manifest:
        ledger = manifest["pairs"]
        assert ledger["read"] == ledger["written"] + ledger["skipped"]
    assert manifest["output"]["pairs"] == len(pairs)
    assert len({p["id"] for p in pairs}) == len(pairs)
    for pair in pairs:
        assert not os.path.isabs(pair["img_path"])
        image = out.parent / pair["img_path"]
        assert image.resolve().is_relative_to(out.parent.resolve())
        with Image.open(image) as img:
            img.load()
        assert pair["chosen"] != pair["rejected"]
    import hashlib
    assert manifest["output"]["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    return manifest


def core(pair: dict) -> tuple:
    return pair["id"], pair["prompt"], pair["chosen"], pair["rejected"]


# --------------------------------------------------------------------------------- POVID

def povid_record(coco_id, image, human, chosen, rejected, rejected_human=None):
    return {"id": coco_id, "image": image,
            "conversations": [{"from": "human", "value": human},
                              {"from": "gpt", "value": chosen}],
            "rejected_conversations": [{"from": "human", "value": rejected_human or human},
                                       {"from": "gpt", "value": rejected}]}


@pytest.fixture
def povid(tmp_path):
    coco = tmp_path / "coco"
    (coco / "data" / "coco").mkdir(parents=True)
    (coco / "COCO_train2014_000000000001.jpg").write_bytes(image_bytes(RED, fmt="JPEG"))
    (coco / "data" / "coco" / "COCO_train2014_000000000002.jpg").write_bytes(
        image_bytes(BLUE, fmt="JPEG"))
    (coco / "COCO_train2014_000000000003.jpg").write_bytes(image_bytes(GREEN, fmt="JPEG"))
    records = [
        povid_record("COCO_train2014_000000000001", "COCO_train2014_000000000001.jpg",
                     "<image>\nDescribe this image in detail.", "A red square.",
                     "A red square next to a dog."),
        # the README's reading: a relative path that exists as written
        povid_record("COCO_train2014_000000000002", "./data/coco/COCO_train2014_000000000002.jpg",
                     "Describe the colours.\n<image>", "It is blue.", "It is blue and gold."),
        # a relative path that does not exist as written: found by its bare name
        povid_record("COCO_train2014_000000000003", "./data/coco/COCO_train2014_000000000003.jpg",
                     "<image>\nWhat is it?", "A green square.", "A green circle."),
    ]
    src = tmp_path / "POVID_preference_data_for_VLLMs.json"
    src.write_text(json.dumps(records, indent=2))
    return src, coco, records


def test_povid_pairs_and_both_path_readings(tmp_path, povid):
    src, coco, _ = povid
    out = tmp_path / "out" / "povid.jsonl"
    manifest = convert("povid", src, out, image_root=coco)
    pairs = read_pairs_file(out)
    assert [core(p) for p in pairs] == [
        ("COCO_train2014_000000000001", "Describe this image in detail.", "A red square.",
         "A red square next to a dog."),
        ("COCO_train2014_000000000002", "Describe the colours.", "It is blue.",
         "It is blue and gold."),
        ("COCO_train2014_000000000003", "What is it?", "A green square.", "A green circle."),
    ]
    assert {p["source"] for p in pairs} == {"povid"}
    assert manifest["notes"]["image_reading"] == {"bare_name": 2, "relative_path": 1}
    # the pixels travelled: pair 2's image is the blue one
    with Image.open(out.parent / pairs[1]["img_path"]) as img:
        r, g, b = img.convert("RGB").getpixel((3, 3))
        assert b > 150 and r < 80
    check_contract(out)


def test_povid_bad_records(tmp_path, povid):
    src, coco, records = povid
    records = records + [
        povid_record("COCO_train2014_000000000009", "COCO_train2014_000000000009.jpg",
                     "<image>\nQ?", "a", "b"),                         # image missing
        povid_record("COCO_train2014_000000000001", "COCO_train2014_000000000001.jpg",
                     "<image>\nQ?", "a", "b"),                         # duplicate id
        povid_record("x4", "COCO_train2014_000000000001.jpg", "<image>\nQ?", "same", "same"),
        povid_record("x5", "COCO_train2014_000000000001.jpg", "<image>\nQ?", "a", "b",
                     rejected_human="<image>\nAnother question?"),
        {"id": "x6", "image": "COCO_train2014_000000000001.jpg", "conversations": []},
        povid_record("x7", "../COCO_train2014_000000000001.jpg", "<image>\nQ?", "a", "b"),
        povid_record("x8", str(tmp_path / "COCO_train2014_000000000001.jpg"), "<image>\nQ?",
                     "a", "b"),                     # absolute, outside the image root
        povid_record("x9", str(coco / "COCO_train2014_000000000001.jpg"), "<image>\nQ?", "a",
                     "b"),                          # absolute, inside it: accepted
    ]
    (tmp_path / "COCO_train2014_000000000001.jpg").write_bytes(
        (coco / "COCO_train2014_000000000001.jpg").read_bytes())
    src.write_text(json.dumps(records, indent=2))
    out = tmp_path / "out" / "povid.jsonl"
    with pytest.raises(RecordError) as caught:
        convert("povid", src, out, image_root=coco)
    # the element's "{" is on the line before its "id"
    start = next(n for n, text in enumerate(src.read_text().splitlines(), 1)
                 if '"COCO_train2014_000000000009"' in text) - 1
    assert str(caught.value) == (
        f"{src}:{start}: image: image not found as "
        f"'{(coco / 'COCO_train2014_000000000009.jpg').resolve()}' nor as "
        f"'{coco / 'COCO_train2014_000000000009.jpg'}'")
    assert not out.exists() and not manifest_path(out).exists()

    manifest = convert("povid", src, out, image_root=coco, on_error="skip")
    assert manifest["records"]["skipped_by_reason"] == {
        "image_missing": 1, "duplicate_id": 1, "chosen_equals_rejected": 1,
        "prompt_mismatch": 1, "missing_field": 1, "image_path_escapes_root": 2}
    assert manifest["records"]["read"] == 11 and manifest["records"]["written"] == 4
    check_contract(out)


# -------------------------------------------------------------------------------- RLHF-V

def image_struct(colour, fmt="PNG"):
    return {"bytes": image_bytes(colour, fmt=fmt), "path": None}


def rlhfv_row(idx, question, chosen, rejected, image):
    return {"ds_name": "vqa", "image": image,
            "text": json.dumps({"question": question, "chosen": chosen, "rejected": rejected}),
            "origin_dataset": "coco", "origin_split": "train", "idx": idx,
            "image_path": f"coco/{idx}.jpg"}


def test_rlhfv_pairs_and_images_written_once(tmp_path):
    rows = [rlhfv_row(10, "What colour?", "Red.", "Blue.", image_struct(RED)),
            rlhfv_row(11, "Which shape?", "A square.", "A disc.", image_struct(RED)),
            rlhfv_row(12, "What colour?", "Blue.", "Red.", image_struct(BLUE, "JPEG"))]
    src = tmp_path / "RLHF-V-Dataset.parquet"
    pq.write_table(pa.Table.from_pylist(rows), src)
    out = tmp_path / "out" / "rlhfv.jsonl"
    manifest = convert("rlhfv", src, out)
    pairs = read_pairs_file(out)
    assert [core(p) for p in pairs] == [("10", "What colour?", "Red.", "Blue."),
                                        ("11", "Which shape?", "A square.", "A disc."),
                                        ("12", "What colour?", "Blue.", "Red.")]
    # same bytes -> one file named by content hash; JPEG keeps its extension
    assert pairs[0]["img_path"] == pairs[1]["img_path"] != pairs[2]["img_path"]
    assert pairs[2]["img_path"].endswith(".jpg") and pairs[0]["img_path"].startswith("images/")
    assert manifest["images"]["count"] == 2 == len(list((out.parent / "images").iterdir()))
    check_contract(out)


def test_rlhfv_bad_rows(tmp_path):
    rows = [rlhfv_row(1, "Q?", "Yes.", "No.", image_struct(RED)),
            rlhfv_row(2, "Q?", "Yes.", "No.", {"bytes": None, "path": "lost.jpg"}),
            rlhfv_row(3, "Q?", "Yes.", "No.", {"bytes": b"garbage", "path": None}),
            {**rlhfv_row(4, "Q?", "Yes.", "No.", image_struct(RED)), "text": "{not json"},
            {**rlhfv_row(5, "Q?", "Yes.", "No.", image_struct(RED)),
             "text": json.dumps({"question": "Q?", "chosen": "Yes."})},
            rlhfv_row(6, "Q?", "Yes.", "No.", {"bytes": png_claiming_size(20_000, 20_000),
                                               "path": None}),
            rlhfv_row(7, "Q?", "Yes.", "No.", image_struct(BLUE))]
    src = tmp_path / "RLHF-V-Dataset.parquet"
    pq.write_table(pa.Table.from_pylist(rows), src)
    out = tmp_path / "out" / "rlhfv.jsonl"
    with pytest.raises(RecordError) as caught:
        convert("rlhfv", src, out)
    assert str(caught.value) == f"{src}:row 2: image.bytes: no image bytes"
    manifest = convert("rlhfv", src, out, on_error="skip")
    assert manifest["records"]["skipped_by_reason"] == {
        "no_image_bytes": 1, "image_undecodable": 1, "malformed_json": 1, "missing_field": 1,
        "image_too_large": 1}
    assert [p["id"] for p in read_pairs_file(out)] == ["1", "7"]
    bomb = manifest["records"]["examples"][4]
    assert bomb.startswith(f"{src}:row 6: image: image ") and "exceeds the limit" in bomb
    check_contract(out)


def test_max_pixels_is_configurable(tmp_path):
    rows = [rlhfv_row(1, "Q?", "Yes.", "No.", image_struct(RED))]  # 8 x 6 = 48 pixels
    src = tmp_path / "RLHF-V-Dataset.parquet"
    pq.write_table(pa.Table.from_pylist(rows), src)
    with pytest.raises(RecordError, match="8x6 pixels exceeds the limit of 47"):
        convert("rlhfv", src, tmp_path / "out.jsonl", max_pixels=47)


def test_missing_parquet_column_names_the_file(tmp_path):
    src = tmp_path / "RLHF-V-Dataset.parquet"
    pq.write_table(pa.Table.from_pylist([{"idx": 1, "question": "Q?"}]), src)
    with pytest.raises(ValueError, match=r"RLHF-V-Dataset.parquet: missing column\(s\) "
                                         r"\['image', 'text'\]"):
        convert("rlhfv", src, tmp_path / "out.jsonl")


# ------------------------------------------------------------------------------- RLAIF-V

def test_rlaifv_shards(tmp_path):
    shards = tmp_path / "rlaifv"
    shards.mkdir()
    for n, colour in enumerate([RED, BLUE]):
        rows = [{"ds_name": "x", "image": image_struct(colour), "question": f"Q{n}{k}?",
                 "chosen": f"good {n}{k}", "rejected": f"bad {n}{k}", "origin_dataset": "x",
                 "origin_split": "train", "idx": f"s{n}-{k}", "image_path": "x.jpg"}
                for k in range(2)]
        pq.write_table(pa.Table.from_pylist(rows), shards / f"RLAIF-V-Dataset_{n:03d}.parquet")
    out = tmp_path / "out" / "rlaifv.jsonl"
    manifest = convert("rlaifv", shards, out)
    assert [core(p) for p in read_pairs_file(out)] == [
        ("s0-0", "Q00?", "good 00", "bad 00"), ("s0-1", "Q01?", "good 01", "bad 01"),
        ("s1-0", "Q10?", "good 10", "bad 10"), ("s1-1", "Q11?", "good 11", "bad 11")]
    assert [s["path"] for s in manifest["sources"]] == [
        "../rlaifv/RLAIF-V-Dataset_000.parquet", "../rlaifv/RLAIF-V-Dataset_001.parquet"]
    check_contract(out)


# ---------------------------------------------------------------------------- VLFeedback

def vlf_completion(model, response, *ratings):
    aspects = ["Helpfulness", "Ethical Considerations", "Visual Faithfulness"]
    return {"annotations": {a: {"Rating": r, "Rationale": "because"}
                            for a, r in zip(aspects, ratings)},
            "model": model, "response": response}


def test_vlfeedback_pairs_by_mean_rating(tmp_path, write_image):
    write_image("merged_images/svit-1.jpg", RED, fmt="JPEG")
    write_image("merged_images/svit-2.jpg", BLUE, fmt="JPEG")
    write_image("merged_images/svit-3.jpg", GREEN, fmt="JPEG")
    records = [
        # means: a = 4.0, b = 2.0, c = 4.0 (ties a), d = unparseable (N/A)
        {"id": "svit-1", "prompt": "Describe.", "models": ["a", "b", "c", "d"],
         "completions": [vlf_completion("a", "A.", "5", "4", "3"),
                         vlf_completion("b", "B.", "2", "2", "2"),
                         vlf_completion("c", "C.", "4", "4", "4"),
                         vlf_completion("d", "D.", "N/A", "5", "5")]},
        # all equal: every pair a tie, the record yields nothing
        {"id": "svit-2", "prompt": "Describe.", "models": ["a", "b"],
         "completions": [vlf_completion("a", "A.", "3", "3", "3"),
                         vlf_completion("b", "B.", "3", "3", "3")]},
        # dict-of-lists shape, as a columnar loader returns it
        {"id": "svit-3", "prompt": "Which colour?", "models": ["x", "y"],
         "completions": {"annotations": [vlf_completion("x", "", "1", "1", "1")["annotations"],
                                         vlf_completion("y", "", "5", "5", "4")["annotations"]],
                         "model": ["x", "y"], "response": ["Red.", "Green."]}},
    ]
    src = tmp_path / "vlfeedback_80k.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "out" / "vlf.jsonl"
    manifest = convert("vlfeedback", src, out)
    pairs = read_pairs_file(out)
    assert [(p["id"], p["chosen"], p["rejected"], p["chosen_score"], p["rejected_score"])
            for p in pairs] == [("svit-1#0-1", "A.", "B.", 4.0, 2.0),
                                ("svit-1#2-1", "C.", "B.", 4.0, 2.0),
                                ("svit-3#1-0", "Green.", "Red.", 14 / 3, 1.0)]
    assert (pairs[0]["chosen_model"], pairs[0]["rejected_model"]) == ("a", "b")
    assert manifest["records"] == {**manifest["records"], "read": 3, "written": 2,
                                   "skipped": 1, "skipped_by_reason": {"no_pairs": 1}}
    # candidates: svit-1 C(4,2)=6 (2 kept, 1 tie, 3 N/A); svit-2 1 tie; svit-3 1 kept
    assert {k: manifest["pairs"][k] for k in ("read", "written", "skipped_by_reason")} == \
        {"read": 8, "written": 3, "skipped_by_reason": {"tie": 2, "unparseable_rating": 3}}
    check_contract(out)


def test_vlfeedback_bad_records(tmp_path, write_image):
    write_image("merged_images/ok.jpg", RED, fmt="JPEG")
    write_image("merged_images/broken.jpg", data=b"\xff\xd8 not really a jpeg")
    ok = {"id": "ok", "prompt": "P", "completions": [vlf_completion("a", "A.", "5"),
                                                     vlf_completion("b", "B.", "1")]}
    lines = [json.dumps(ok),
             '{"id": "torn", "prompt": "P", "completions": [',                   # malformed
             json.dumps({**ok, "id": "cols", "completions": {
                 "annotations": [{}, {}], "model": ["a"], "response": ["A.", "B."]}}),
             json.dumps({**ok, "id": "nofile"}),                                 # no image
             json.dumps({**ok, "id": "broken"}),                                 # undecodable
             json.dumps({**ok, "id": "rating", "completions": [
                 vlf_completion("a", "A.", {"value": 5}), vlf_completion("b", "B.", "1")]}),
             json.dumps({**ok, "id": 3.5})]                                      # wrong type
    src = tmp_path / "vlfeedback_80k.jsonl"
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out" / "vlf.jsonl"
    with pytest.raises(RecordError, match=rf"^{src}:2: <line>: malformed JSON"):
        convert("vlfeedback", src, out)
    manifest = convert("vlfeedback", src, out, on_error="skip")
    assert manifest["records"]["skipped_by_reason"] == {
        "malformed_json": 1, "mismatched_lengths": 1, "image_missing": 1,
        "image_undecodable": 1, "wrong_type": 2}
    # candidate pairs of skipped records are not counted: only the good record's one pair
    assert manifest["pairs"]["read"] == manifest["pairs"]["written"] == 1
    check_contract(out)


def test_multi_format_requires_img_path(tmp_path, write_image):
    write_image("pics/a.png", RED)
    record = {"id": "m1", "prompt": "P", "img_path": "pics/a.png",
              "completions": [vlf_completion("a", "A.", "5"), vlf_completion("b", "B.", "1")]}
    src = tmp_path / "multi.jsonl"
    src.write_text(json.dumps(record) + "\n" + json.dumps({**record, "id": "m2",
                                                           "img_path": None}) + "\n")
    out = tmp_path / "out" / "multi.jsonl"
    manifest = convert("multi", src, out, on_error="skip")
    assert [core(p) for p in read_pairs_file(out)] == [("m1#0-1", "P", "A.", "B.")]
    assert manifest["records"]["skipped_by_reason"] == {"missing_field": 1}
    assert manifest["records"]["examples"] == [f"{src}:2: img_path: missing"]


# ------------------------------------------------------------------------ VL-RewardBench

def test_vlrewardbench_ranking_both_ways_and_groups(tmp_path):
    rows = [{"id": "RLAIF-12", "query": "Q1", "response": ["good", "bad"],
             "image": image_struct(RED), "human_ranking": [0, 1]},
            {"id": "mathverse_3", "query": "Q2", "response": ["bad", "good"],
             "image": image_struct(BLUE), "human_ranking": [1, 0]},
            {"id": "vlfeedback_9", "query": "Q3", "response": ["a", "b"],
             "image": image_struct(RED), "human_ranking": [0, 0]},
            {"id": "wildvision_1", "query": "Q4", "response": ["a", "b", "c"],
             "image": image_struct(RED), "human_ranking": [0, 1, 2]}]
    folder = tmp_path / "VL-RewardBench" / "data"
    folder.mkdir(parents=True)
    table = pa.Table.from_pylist(rows)
    for extra in ("models", "judge", "rationale", "query_source", "meta",
                  "human_error_analysis", "ground_truth"):
        table = table.append_column(extra, pa.array([""] * len(rows)))
    pq.write_table(table, folder / "test-00000-of-00001.parquet")
    out = tmp_path / "out" / "vlrb.jsonl"
    with pytest.raises(RecordError, match=r"test-00000-of-00001.parquet:row 3: "
                                          r"human_ranking: tie \[0, 0\]"):
        convert("vlrewardbench", folder, out)
    manifest = convert("vlrewardbench", folder, out, on_error="skip")
    pairs = read_pairs_file(out)
    assert [(p["id"], p["prompt"], p["chosen"], p["rejected"], p["subset"]) for p in pairs] == \
        [("RLAIF-12", "Q1", "good", "bad", "RLAIF"),
         ("mathverse_3", "Q2", "good", "bad", "mathverse")]
    assert manifest["records"]["skipped_by_reason"] == {"tie": 1, "mismatched_lengths": 1}
    check_contract(out)


# ----------------------------------------------------------------- Multimodal RewardBench

def test_mmrewardbench_better_and_categories(tmp_path, write_image):
    write_image("mmrb/data/images/a.png", RED)
    write_image("mmrb/data/images/b.jpg", BLUE, fmt="JPEG")
    records = [{"ID": "nocaps_13062", "Text": "Caption it.", "Image": "images/a.png",
                "Output1": "A red card.", "Output2": "A blue card.", "Better": "Output1",
                "Category": "general"},
               {"ID": "mathvista_7", "Text": "Colour?", "Image": "images/b.jpg",
                "Output1": "Red.", "Output2": "Blue.", "Better": "Output2",
                "Category": "reasoning"},
               {"ID": "vqa_1", "Text": "Colour?", "Image": "images/b.jpg",
                "Output1": "Red.", "Output2": "Blue.", "Better": "Both", "Category": "x"},
               {"ID": "vqa_2", "Text": "Colour?", "Image": "../../secret.png",
                "Output1": "Red.", "Output2": "Blue.", "Better": "Output1", "Category": "x"}]
    src = tmp_path / "mmrb" / "data" / "all_data.json"
    src.write_text(json.dumps(records))
    out = tmp_path / "out" / "mmrb.jsonl"
    manifest = convert("mmrewardbench", src, out, on_error="skip")
    pairs = read_pairs_file(out)
    assert [(*core(p), p["subset"]) for p in pairs] == [
        ("nocaps_13062", "Caption it.", "A red card.", "A blue card.", "general"),
        ("mathvista_7", "Colour?", "Blue.", "Red.", "reasoning")]
    assert manifest["records"]["skipped_by_reason"] == {"bad_label": 1,
                                                        "image_path_escapes_root": 1}
    check_contract(out)


def test_json_array_errors_carry_line_numbers(tmp_path):
    src = tmp_path / "all_data.json"
    src.write_text('[\n  3,\n  {"ID": "b",\n   "Text": }\n]')
    with pytest.raises(RecordError, match=rf"^{src}:2: <element>: expected a JSON object"):
        convert("mmrewardbench", src, tmp_path / "out.jsonl")
    # a broken array cannot be resumed past the break, so even skip mode stops there
    with pytest.raises(RecordError, match=rf"^{src}:4: <element>: malformed JSON"):
        convert("mmrewardbench", src, tmp_path / "out.jsonl", on_error="skip")


# --------------------------------------------------------------------- pairs, all formats

def test_pairs_passthrough_copies_images_and_keeps_extras(tmp_path, write_image):
    write_image("imgs/a.png", RED)
    rows = [{"id": "1", "prompt": "P", "img_path": "imgs/a.png", "chosen": "x",
             "rejected": "y", "subset": "s", "source": "mine"},
            {"id": "2", "prompt": "P", "img_path": "imgs/missing.png", "chosen": "x",
             "rejected": "y"}]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out" / "pairs.jsonl"
    manifest = convert("pairs", src, out, on_error="skip")
    [pair] = read_pairs_file(out)
    assert (pair["subset"], pair["source"]) == ("s", "mine")
    assert manifest["records"]["examples"] == [
        f"{src}:2: img_path: image not found: '{tmp_path / 'imgs' / 'missing.png'}'"]
    check_contract(out)


def test_every_format_has_a_converter_and_a_description():
    assert set(FORMATS) == {"vlfeedback", "povid", "rlhfv", "rlaifv", "vlrewardbench",
                            "mmrewardbench", "pairs", "multi"}
    assert all(len(f.description) > 20 for f in FORMATS.values())


def test_conversion_is_deterministic(tmp_path, povid):
    src, coco, _ = povid
    first, second = tmp_path / "a" / "p.jsonl", tmp_path / "b" / "p.jsonl"
    convert("povid", src, first, image_root=coco)
    convert("povid", src, second, image_root=coco)
    assert first.read_bytes() == second.read_bytes()
    manifest_a = json.loads(manifest_path(first).read_text())
    manifest_b = json.loads(manifest_path(second).read_text())
    assert manifest_a == manifest_b
