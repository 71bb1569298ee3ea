"""A corpus of hostile or careless inputs for the ``mmrm`` command, built here (nothing is
downloaded): every case is a command line over files this module writes, and what the command
must do with it (exit code, what the message names, what must not be left behind).

    python tests/data/hostile_corpus.py OUT_DIR MODEL_DIR BASE_DIR   # writes and lists it

``MODEL_DIR`` is a saved reward model and ``BASE_DIR`` a base VLM folder; broken copies of
them are made under ``OUT_DIR``.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from PIL import Image

from mmrm.model import write_files_record

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # tests/, run as a script too
from imagebytes import image_bytes, png_claiming_size  # noqa: E402


@dataclass
class Case:
    """One hostile input and what the command must do with it.

    Attributes:
        name: the case's id.
        args: the command line after ``mmrm``.
        exit_code: 2 for a refused input, 0 where the input is skipped (counted) or fixed.
        says: what the message must contain (the file, the line or row, the field).
        absent: paths that must not exist afterwards (partial outputs, temporary files).
        unchanged: files whose bytes must not change (sources).
        ledger: a manifest whose records must balance (read = written + skipped).
        before: a command line that must run (successfully) first, e.g. a scoring run to
            resume.
        prepare: makes the case's files that need the model (broken copies of it); the
            rest is written by :func:`build`, so the corpus lists its cases without a model.
        between: run after ``before`` and before the command (e.g. deletes what a finished
            run wrote, leaving its state behind).
        check: a callable run on success (e.g. that a fixed image loads upright).
    """

    name: str
    args: list[str]
    exit_code: int = 2
    says: tuple[str, ...] = ()
    absent: tuple[Path, ...] = ()
    unchanged: tuple[Path, ...] = ()
    ledger: Path | None = None
    before: list[str] | None = None
    prepare: object = field(default=None, repr=False)
    between: object = field(default=None, repr=False)
    check: object = field(default=None, repr=False)


def pair(i, **changes) -> dict:
    record = {"id": f"p{i}", "prompt": "What colour is it?", "img_path": "img.png",
              "chosen": "It is red.", "rejected": "It is blue."}
    record.update(changes)
    return record


def jsonl(path: Path, rows) -> Path:
    """Rows are dicts (dumped), str (written as they are) or bytes (raw)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for row in rows:
            if isinstance(row, dict):
                row = json.dumps(row)
            f.write((row if isinstance(row, bytes) else row.encode()) + b"\n")
    return path


def build(root: Path, model_dir: Path, base_dir: Path) -> list[Case]:
    root = Path(root)
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "img.png").write_bytes(image_bytes())
    (data / "broken.png").write_bytes(b"this is not an image")
    (data / "bomb.png").write_bytes(png_claiming_size(100_000, 100_000))
    (root / "outside.png").write_bytes(image_bytes((0, 200, 0)))
    return (pair_cases(root, data) + path_cases(root, data) + release_cases(root)
            + image_fix_cases(root, data) + score_cases(root, data, model_dir)
            + model_cases(root, data, model_dir) + train_cases(root, data, base_dir)
            + output_cases(root, data, model_dir) + strict_json_cases(root, data)
            + config_cases(root, data, base_dir) + system_cases(root, data, model_dir,
                                                                 base_dir))


def convert_args(src: Path, out: Path, fmt="pairs", *extra) -> list[str]:
    return ["convert", "--format", fmt, str(src), str(out), *extra]


def pair_cases(root: Path, data: Path) -> list[Case]:
    """Bad pairwise records: each refused with file:line: field, or skipped and counted."""
    bad = {
        "malformed_json": ('{"id": "p1", "prompt": ', "<line>", "malformed JSON"),
        "not_an_object": ("[1, 2, 3]", "<line>", "expected a JSON object"),
        "invalid_utf8": (b'{"id": "p1", "prompt": "caf\xe9", "img_path": "img.png"}',
                         "<line>", "not valid UTF-8"),
        "missing_prompt": ({k: v for k, v in pair(1).items() if k != "prompt"}, "prompt",
                           "missing"),
        "wrong_type": (pair(1, chosen=5), "chosen", "expected a string"),
        "empty_response": (pair(1, rejected="  "), "rejected", "empty"),
        "same_answers": (pair(1, rejected="It is red."), "rejected", "identical"),
        "duplicate_id": (pair(0), "id", "duplicate id"),
        "missing_image": (pair(1, img_path="nope.png"), "img_path", "not found"),
        "broken_image": (pair(1, img_path="broken.png"), "img_path", "does not decode"),
        "escaping_path": (pair(1, img_path="../outside.png"), "img_path",
                          "outside the data root"),
        "absolute_outside": (pair(1, img_path=str(root / "outside.png")), "img_path",
                             "outside the data root"),
        "empty_image_path": (pair(1, img_path=""), "img_path", "empty"),
        "bomb": (pair(1, img_path="bomb.png"), "img_path", "exceeds the limit"),
        "nul_in_text": (pair(1, chosen="It is\x00 red."), "chosen", "NUL"),
        "null_prompt": (pair(1, prompt=None), "prompt", "missing"),
        "list_as_text": (pair(1, prompt=["a"]), "prompt", "expected a string"),
    }
    cases = []
    for name, (row, fld, problem) in bad.items():
        src = jsonl(data / f"{name}.jsonl", [pair(0), row, pair(2)])
        out = root / "out" / name / "pairs.jsonl"
        cases.append(Case(f"pairs-{name}-raise", convert_args(src, out),
                          says=(f"{src}:2: {fld}: ", problem),
                          absent=(out, out.parent / "images", out.with_name("pairs.manifest.json")),
                          unchanged=(src,)))
        skip_out = root / "out" / f"{name}-skip" / "pairs.jsonl"
        cases.append(Case(f"pairs-{name}-skip", convert_args(src, skip_out, "pairs",
                                                             "--on-error", "skip"),
                          exit_code=0, says=("skipped 1",),
                          ledger=skip_out.with_name("pairs.manifest.json")))
    bom = jsonl(data / "bom.jsonl", [b"\xef\xbb\xbf" + json.dumps(pair(0)).encode(), pair(1)])
    out = root / "out" / "bom" / "pairs.jsonl"
    cases.append(Case("pairs-utf8-bom-kept", convert_args(bom, out), exit_code=0,
                      says=("read 2 records, wrote 2 pairs",),
                      ledger=out.with_name("pairs.manifest.json")))
    blank = jsonl(data / "blank_lines.jsonl", [pair(0), "   ", "", pair(1)])
    out = root / "out" / "blank" / "pairs.jsonl"
    cases.append(Case("pairs-blank-lines-hold-no-record", convert_args(blank, out),
                      exit_code=0, says=("read 2 records",),
                      ledger=out.with_name("pairs.manifest.json")))
    multi = jsonl(data / "multi_bad.jsonl", [
        {"id": "m1", "prompt": "Q?", "img_path": "img.png",
         "completions": [{"response": "a", "annotations": {"Helpfulness": {"Rating": "x"}}},
                         {"response": "b", "annotations": {"Helpfulness": {"Rating": 3}}}]}])
    out = root / "out" / "multi" / "pairs.jsonl"
    cases.append(Case("multi-bad-rating-skipped-and-counted",
                      convert_args(multi, out, "multi", "--on-error", "skip"), exit_code=0,
                      ledger=out.with_name("pairs.manifest.json")))
    ragged = jsonl(data / "multi_ragged.jsonl", [
        {"id": "m1", "prompt": "Q?", "img_path": "img.png",
         "completions": {"response": ["a", "b"], "annotations": [{}]}}])
    out = root / "out" / "ragged" / "pairs.jsonl"
    cases.append(Case("multi-ragged-completions", convert_args(ragged, out, "multi"),
                      says=(f"{ragged}:1: completions",), absent=(out,)))
    inference = jsonl(data / "inference_bad.jsonl", [
        {"prompt": "Q?", "img_path": "img.png", "responses": ["a"]},
        {"prompt": "Q?", "img_path": "img.png", "responses": []}])
    cases.append(Case("validate-inference-empty-responses-counted",
                      ["validate", str(inference), "--kind", "inference"], exit_code=1,
                      says=(f"{inference}:2: responses: empty list",)))
    return cases


def path_cases(root: Path, data: Path) -> list[Case]:
    """Paths that cannot work or would destroy data, refused before anything is written."""
    src = jsonl(data / "good.jsonl", [pair(0), pair(1)])
    (root / "a_file").write_text("I am a file")
    (root / "out_folder").mkdir(exist_ok=True)
    stale = root / "out" / "stale" / "pairs.jsonl"
    stale.parent.mkdir(parents=True, exist_ok=True)
    dead = stale.with_name(".pairs.jsonl.mmrm-tmp999999")    # left by a run killed with -9
    dead.write_text("half a file")
    users = stale.with_name("pairs.jsonl.tmp999999")   # a user's file named like one: kept
    users.write_text("mine")
    parquet_dir = root / "shards"
    parquet_dir.mkdir(exist_ok=True)
    return [
        Case("convert-out-is-src", convert_args(src, src), says=(str(src), "overwrite"),
             unchanged=(src,)),
        Case("convert-src-missing", convert_args(data / "nope.jsonl", root / "o.jsonl"),
             says=(str(data / "nope.jsonl"), "no such file"), absent=(root / "o.jsonl",)),
        Case("convert-src-is-folder", convert_args(data, root / "o.jsonl"),
             says=(str(data), "is a folder"), absent=(root / "o.jsonl",)),
        Case("convert-out-is-folder", convert_args(src, root / "out_folder"),
             says=(str(root / "out_folder"), "is a folder")),
        Case("convert-out-under-a-file", convert_args(src, root / "a_file" / "o.jsonl"),
             says=(str(root / "a_file"), "is a file"),
             absent=(root / "a_file.tmp",)),
        Case("convert-parquet-folder-without-shards",
             convert_args(parquet_dir, root / "o.jsonl", "rlaifv"),
             says=(str(parquet_dir), "no *.parquet")),
        Case("convert-stale-temporary-cleaned", convert_args(src, stale), exit_code=0,
             absent=(dead,), unchanged=(users,), ledger=stale.with_name("pairs.manifest.json")),
        Case("convert-unknown-format", convert_args(src, root / "o.jsonl", "nonsense"),
             says=("nonsense",)),
    ]


def release_cases(root: Path) -> list[Case]:
    """Released formats that are corrupt, truncated or not what the format says."""
    rel = root / "released"
    rel.mkdir(exist_ok=True)
    corrupt = rel / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 this is not parquet at all")
    no_column = rel / "no_column.parquet"
    pq.write_table(pa.table({"idx": [1, 2]}), no_column)
    bad_text = rel / "bad_text.parquet"
    pq.write_table(pa.table({"image": [{"bytes": image_bytes(), "path": None}],
                             "text": ["{not json"], "idx": [0]}), bad_text)
    no_bytes = rel / "no_bytes.parquet"
    pq.write_table(pa.table({"image": [{"bytes": None, "path": "x.png"}],
                             "text": [json.dumps({"question": "Q", "chosen": "a",
                                                  "rejected": "b"})], "idx": [0]}), no_bytes)
    truncated = rel / "POVID_truncated.json"
    truncated.write_text('[\n {"id": "1", "image": "a.jpg",\n  "conversations": [')
    jsonl_as_povid = rel / "lines.json"
    jsonl_as_povid.write_text(json.dumps({"id": "1"}) + "\n" + json.dumps({"id": "2"}) + "\n")
    latin1 = rel / "latin1.json"
    latin1.write_bytes(b'[\n {"id": "caf\xe9"}\n]')
    vlf = rel / "vlfeedback_80k.jsonl"
    jsonl(vlf, [{"id": "v1", "prompt": "Q?", "completions": [
        {"response": "a", "annotations": {"Helpfulness": {"Rating": "N/A"}}},
        {"response": "b", "annotations": {"Helpfulness": {"Rating": "5"}}}]}])
    (rel / "merged_images").mkdir(exist_ok=True)
    (rel / "merged_images" / "v1.jpg").write_bytes(image_bytes())
    out = lambda name: root / "out" / name / "pairs.jsonl"   # noqa: E731
    return [
        Case("rlhfv-corrupt-parquet", convert_args(corrupt, out("corrupt"), "rlhfv"),
             says=(str(corrupt), "not a readable parquet"), absent=(out("corrupt"),)),
        Case("rlhfv-missing-column", convert_args(no_column, out("nocol"), "rlhfv"),
             says=(str(no_column), "missing column")),
        Case("rlhfv-text-not-json", convert_args(bad_text, out("badtext"), "rlhfv"),
             says=(f"{bad_text}:row 1: text",), absent=(out("badtext"),)),
        Case("rlhfv-row-without-image-bytes", convert_args(no_bytes, out("nobytes"), "rlhfv"),
             says=(f"{no_bytes}:row 1: image",)),
        Case("rlhfv-given-a-json-file", convert_args(truncated, out("wrongfmt"), "rlhfv"),
             says=(str(truncated), "parquet")),
        Case("povid-truncated-array", convert_args(truncated, out("trunc"), "povid"),
             says=(str(truncated), "malformed JSON")),
        Case("povid-given-jsonl", convert_args(jsonl_as_povid, out("jsonl"), "povid"),
             says=(f"{jsonl_as_povid}:1: <file>",)),
        Case("povid-not-utf8", convert_args(latin1, out("latin1"), "povid"),
             says=(f"{latin1}:2: <file>", "not valid UTF-8")),
        Case("vlfeedback-na-rating-counted", convert_args(vlf, out("vlf"), "vlfeedback",
                                                          "--on-error", "skip"),
             exit_code=0, ledger=out("vlf").with_name("pairs.manifest.json")),
    ]


def image_fix_cases(root: Path, data: Path) -> list[Case]:
    """Images that load wrongly unless fixed on load: 16-bit grey and EXIF-rotated JPEGs."""
    grey = (np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 60)
    Image.fromarray(grey).save(data / "grey16.png")
    tall = Image.new("RGB", (20, 40), (0, 0, 255))
    tall.paste((255, 0, 0), (0, 0, 20, 20))          # red on top when upright
    stored = tall.transpose(Image.Transpose.ROTATE_90)   # stored sideways ...
    exif = Image.Exif()
    exif[0x0112] = 6                                  # ... with "rotate 90 CW to view"
    stored.save(data / "rotated.jpg", exif=exif.tobytes(), quality=95)
    src = jsonl(data / "fixed_on_load.jsonl", [pair(0, img_path="grey16.png"),
                                               pair(1, img_path="rotated.jpg")])
    out = root / "out" / "fixed" / "pairs.jsonl"

    def loads_right(_root=root):
        from mmrm.images import open_rgb

        grey_rgb = np.asarray(open_rgb(data / "grey16.png"))
        upright = open_rgb(data / "rotated.jpg")
        assert 0 < grey_rgb.mean() < 200, grey_rgb.mean()       # not clipped to white
        assert upright.size == (20, 40)
        r, g, b = upright.getpixel((10, 5))
        assert r > 150 and b < 100, (r, g, b)
    return [Case("images-16bit-and-exif-fixed-on-load", convert_args(src, out), exit_code=0,
                 ledger=out.with_name("pairs.manifest.json"), check=loads_right)]


def score_cases(root: Path, data: Path, model_dir: Path) -> list[Case]:
    """Scoring inputs and resumes that must be refused (or skipped into the errors file)."""
    items = jsonl(data / "items.jsonl", [
        {"id": f"i{k}", "prompt": "Q?", "img_path": "img.png", "responses": ["a", "b"]}
        for k in range(3)])
    bad_items = jsonl(data / "items_bad.jsonl", [
        {"id": "i0", "prompt": "Q?", "img_path": "img.png", "responses": ["a", "b"]},
        {"id": "i1", "prompt": "Q?", "img_path": "nope.png", "responses": ["a"]},
        b'{"id": "i2", "prompt": "caf\xe9"}',
        {"id": "i3", "prompt": "Q?", "img_path": "img.png", "responses": []}])
    other = root / "other_model"

    def make_other():
        if not other.exists():
            shutil.copytree(model_dir, other)
            config = json.loads((other / "reward_config.json").read_text())
            config["reward_mean"] += 1.0
            (other / "reward_config.json").write_text(json.dumps(config))
            write_files_record(other)         # a model saved with other statistics
    score = lambda out, *extra, src=items, model=model_dir: [   # noqa: E731
        "score", str(model), str(src), str(out), "chunk_items=1", *extra]
    done = root / "scored" / "done.jsonl"
    return [
        Case("score-resume-with-another-model", score(done, model=other),
             before=score(done), says=(str(done), "model_digest"), prepare=make_other),
        Case("score-resume-with-normalize-changed", score(done, "normalize=true"),
             before=score(done), says=(str(done), "normalize")),
        Case("score-resume-with-dtype-changed", score(done, "dtype=bf16"),
             before=score(done), says=(str(done), "dtype")),
        Case("score-unknown-dtype", score(root / "scored" / "x.jsonl", "dtype=bfloat16"),
             says=("dtype", "bfloat16"), absent=(root / "scored" / "x.jsonl",)),
        Case("score-bad-items-raise", score(root / "scored" / "bad.jsonl", src=bad_items),
             says=(f"{bad_items}:2: img_path", "not found")),
        Case("score-bad-items-skip", score(root / "scored" / "skip.jsonl", "--on-error",
                                           "skip", src=bad_items), exit_code=0,
             says=("lines read 4 = written 1 + skipped 3",)),
        Case("score-output-is-the-input",
             score(items, src=items), says=(str(items), "overwrite"), unchanged=(items,)),
        Case("score-output-exists-without-state",
             score(data / "good.jsonl", src=items), says=(str(data / "good.jsonl"), "exists"),
             unchanged=(data / "good.jsonl",)),
    ]


def model_cases(root: Path, data: Path, model_dir: Path) -> list[Case]:
    """Broken reward-model folders, refused before Ray or any loading starts."""
    items = data / "items.jsonl"
    pairs = jsonl(data / "eval_pairs.jsonl", [pair(0), pair(1)])

    makers = {}

    def broken(name, change) -> Path:
        folder = root / "models" / name

        def make():
            if not folder.exists():
                shutil.copytree(model_dir, folder)
                change(folder)
        makers[name] = make
        return folder

    def write(name, data_):
        return lambda folder: (folder / name).write_bytes(data_) if isinstance(data_, bytes) \
            else (folder / name).write_text(data_)

    def edit_config(**changes):
        def change(folder):
            config = json.loads((folder / "reward_config.json").read_text())
            config.update(changes)
            (folder / "reward_config.json").write_text(json.dumps(config))
        return change

    def wrong_shape(folder):
        from safetensors.torch import save_file
        import torch
        save_file({"weight": torch.zeros(1, 7), "bias": torch.zeros(1)},
                  str(folder / "value_head.safetensors"))

    def drop(*names):
        return lambda folder: [(folder / n).unlink() for n in names]

    def pickle_weights(folder):       # a .bin instead of the safetensors: unpickling runs code
        (folder / "model.safetensors").rename(folder / "pytorch_model.bin")

    def nan_tensor(file, key=None):
        def change(folder):
            from safetensors.torch import load_file, save_file
            tensors = load_file(str(folder / file))
            name = key or next(k for k, v in tensors.items() if v.is_floating_point())
            tensors[name] = tensors[name].clone().fill_(float("nan"))
            save_file(tensors, str(folder / file))
            write_files_record(folder)       # saved so: only the NaN is wrong
        return change

    def mixed_save(folder):            # a value head from another save, the record not redone
        from safetensors.torch import load_file, save_file
        head = load_file(str(folder / "value_head.safetensors"))
        save_file({k: v + 1 for k, v in head.items()}, str(folder / "value_head.safetensors"))

    def truncate_weights(folder):
        shard = folder / "model.safetensors"
        shard.write_bytes(shard.read_bytes()[:len(shard.read_bytes()) // 2])
        write_files_record(folder)

    def unknown_type(folder):
        config = json.loads((folder / "config.json").read_text())
        config["model_type"] = "no_such_architecture"
        (folder / "config.json").write_text(json.dumps(config))
        write_files_record(folder)

    def no_tokenizer(folder):
        for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json"):
            (folder / name).unlink(missing_ok=True)
        write_files_record(folder)

    def drop_weights(folder):
        for p in folder.iterdir():
            if p.suffix in (".safetensors", ".bin") and p.name != "value_head.safetensors":
                p.unlink()
    folders = {
        "no_reward_config": (broken("no_reward_config", drop("reward_config.json")),
                             "reward_config.json", "missing"),
        "corrupt_reward_config": (broken("corrupt_reward_config",
                                         write("reward_config.json", "{not json")),
                                  "reward_config.json", "not valid JSON"),
        "extra_key": (broken("extra_key", edit_config(surprise=1)), "reward_config.json",
                      "surprise: unknown key"),
        "wrong_type": (broken("wrong_type", edit_config(reward_std="big")),
                       "reward_config.json", "reward_std: wrong type"),
        "remote_code": (broken("remote_code", edit_config(trust_remote_code=True)),
                        "reward_config.json", "--trust-remote-code"),
        "no_value_head": (broken("no_value_head", drop("value_head.safetensors")),
                          "value_head.safetensors", "missing"),
        "empty_value_head": (broken("empty_value_head", write("value_head.safetensors", b"")),
                             "value_head.safetensors", "not a readable safetensors"),
        "corrupt_value_head": (broken("corrupt_value_head",
                                      write("value_head.safetensors", b"\x08\x00garbage")),
                               "value_head.safetensors", "not a readable safetensors"),
        "wrong_shape_value_head": (broken("wrong_shape_value_head", wrong_shape),
                                   "value_head.safetensors", "expected weight"),
        "no_weights": (broken("no_weights", drop_weights), "", "no backbone weights"),
        "pickle_weights": (broken("pickle_weights", pickle_weights), "pytorch_model.bin",
                           "pickle weights"),
        "no_config_json": (broken("no_config_json", drop("config.json")), "",
                           "no config.json"),
        "no_such_folder": (root / "models" / "does_not_exist", "", "no such model folder"),
        # artifacts checked at load (issue 45): statistics and weights finite, one save
        "nan_mean": (broken("nan_mean", edit_config(reward_mean=float("nan"))),
                     "reward_config.json", "reward_mean: nan is not a finite number"),
        "infinite_std": (broken("infinite_std", edit_config(reward_std=float("inf"))),
                         "reward_config.json", "reward_std: inf is not a finite number"),
        "nan_value_head": (broken("nan_value_head", nan_tensor("value_head.safetensors")),
                           "value_head.safetensors", "NaN or infinite weights"),
        "mixed_save": (broken("mixed_save", mixed_save), "value_head.safetensors",
                       "do not belong together"),
        "hub_name": (Path("some-org/some-model"), "", "no such model folder"),
    }
    cases = []
    for name, (folder, file, problem) in folders.items():
        where = str(folder / file) if file else str(folder)
        out = root / "scored" / f"{name}.jsonl"
        make = makers.get(name)
        cases.append(Case(f"score-model-{name}", ["score", str(folder), str(items), str(out)],
                          says=(where, problem), absent=(out,), prepare=make))
        cases.append(Case(f"eval-model-{name}", ["eval", str(folder), f"t={pairs}"],
                          says=(where, problem), prepare=make))
    # what only loading finds, found by score before Ray starts (check_model_whole), and by
    # eval when it loads (issue 45: a broken folder is one line, not a worker's traceback)
    whole = {
        "truncated_weights": (broken("truncated_weights", truncate_weights),
                              "model.safetensors", "not a readable safetensors",
                              "not a readable safetensors"),
        "unknown_model_type": (broken("unknown_model_type", unknown_type), "config.json",
                               "not an architecture transformers knows",
                               "not an architecture transformers knows"),
        "no_tokenizer": (broken("no_tokenizer", no_tokenizer), "", "no tokenizer",
                         "no tokenizer"),
        "nan_backbone_weight": (broken("nan_backbone_weight", nan_tensor("model.safetensors")),
                                "", "NaN or infinite values", "NaN or infinite values"),
    }
    for name, (folder, file, by_score, by_eval) in whole.items():
        where = str(folder / file) if file else str(folder)
        out = root / "scored" / f"{name}.jsonl"
        cases.append(Case(f"score-model-{name}", ["score", str(folder), str(items), str(out)],
                          says=(str(folder), by_score), absent=(out,), prepare=makers[name]))
        cases.append(Case(f"eval-model-{name}", ["eval", str(folder), f"t={pairs}"],
                          says=(str(folder), by_eval), prepare=makers[name]))
    return cases


def train_cases(root: Path, data: Path, base_dir: Path) -> list[Case]:
    """Training configs whose inputs are missing or bad: refused before a model loads."""
    good = jsonl(data / "train_good.jsonl", [pair(k, id=f"t{k}") for k in range(4)])
    bad = jsonl(data / "train_bad.jsonl", [pair(0), pair(1, chosen=7)])

    def config(name, **changes) -> Path:
        raw = {"model": str(base_dir), "output_dir": str(root / "train" / name),
               "data": {"train": [str(good)]}, "max_steps": 1, "per_device_batch_size": 2}
        for key, value in changes.items():
            node = raw
            *parents, last = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[last] = value
        path = root / "configs" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(raw))
        return path

    (root / "configs").mkdir(exist_ok=True)
    (root / "configs" / "not_yaml.yaml").write_text("model: [unclosed\n")
    missing = data / "missing.jsonl"
    return [
        Case("train-missing-train-file", ["train", str(config("a", **{"data.train":
                                                                      [str(missing)]}))],
             says=("data.train", str(missing), "no such file"),
             absent=(root / "train" / "a",)),
        Case("train-missing-eval-file", ["train", str(config("b", **{"data.eval":
                                                                     {"x": str(missing)}}))],
             says=("data.eval.x", str(missing), "no such file"),
             absent=(root / "train" / "b",)),
        Case("train-bad-record", ["train", str(config("c", **{"data.train": [str(bad)]}))],
             says=(f"{bad}:2: chosen", "expected a string"), absent=(root / "train" / "c",)),
        Case("train-missing-base", ["train", str(config("d", model=str(root / "nobase")))],
             says=(str(root / "nobase"), "no such model folder"),
             absent=(root / "train" / "d",)),
        Case("train-unknown-key", ["train", str(config("e", surprise=1))],
             says=("surprise", "Extra inputs are not permitted")),
        Case("train-bad-yaml", ["train", str(root / "configs" / "not_yaml.yaml")],
             says=(str(root / "configs" / "not_yaml.yaml"), "not valid YAML")),
        Case("train-bad-override", ["train", str(config("f")), "optim.lr"],
             says=("not key=value",)),
        Case("train-two-stage-without-proxy-losses",
             ["train", str(config("g", **{"shortcut.proxy": "cross_fit",
                                          "shortcut.weighting": "sfc",
                                          "shortcut.proxy_losses": str(missing)}))],
             says=("shortcut.proxy_losses", "no such file"), absent=(root / "train" / "g",)),
    ]


# --------------------------------------------------------------------------- issue 32's kinds

def output_cases(root: Path, data: Path, model_dir: Path) -> list[Case]:
    """Kind 1 (an output that is an input) and kind 2 (state that does not match its
    output): refused before anything is opened for writing, inputs unchanged."""
    import os

    items = data / "items.jsonl"          # written by score_cases
    pairs = jsonl(data / "out_pairs.jsonl", [pair(0), pair(1)])
    alias = data / "items_hardlink.jsonl"
    symlink = data / "pairs_symlink.jsonl"

    def links():
        if not alias.exists():
            os.link(items, alias)
        if not symlink.exists():
            symlink.symlink_to(pairs)
    picture = data / "picture.png"
    picture.write_bytes(image_bytes((10, 10, 200)))
    uses_picture = jsonl(data / "uses_picture.jsonl", [pair(0, img_path="picture.png")])
    state_gone, truncated = root / "scored" / "gone.jsonl", root / "scored" / "short.jsonl"
    score = lambda out, *extra: ["score", str(model_dir), str(items), str(out),  # noqa: E731
                                 "chunk_items=1", *extra]
    tests_dir = root / "matrix_out"
    tests_dir.mkdir(exist_ok=True)
    matrix_json = jsonl(tests_dir / "matrix.json", [pair(0)])
    empty = jsonl(data / "empty_eval.jsonl", [])
    folder = data / "a_folder.jsonl"          # an input that is a folder: an OS error
    folder.mkdir(exist_ok=True)
    blocker = data / "a_file.txt"             # an output under a file: another
    blocker.write_text("not a folder\n")
    return [
        Case("validate-input-is-a-folder", ["validate", str(folder)],
             says=(str(folder), "Is a directory")),
        Case("eval-data-is-a-folder", ["eval", str(model_dir), f"t={folder}"],
             says=(str(folder), "Is a directory")),
        Case("eval-out-under-a-file", ["eval", str(model_dir), f"t={pairs}", "--out",
                                       str(blocker / "report.json")],
             says=(str(blocker),), unchanged=(blocker,)),
        Case("matrix-out-under-a-file",
             ["matrix", "--model", f"povid/none={model_dir}", "--test", f"povid={pairs}",
              "--out", str(blocker / "matrix")], says=(str(blocker), "Not a directory")),
        Case("score-errors-file-is-the-input", score(root / "scored" / "e1.jsonl", "--errors",
                                                     str(items)),
             says=(str(items), "overwrite", "--errors"), unchanged=(items,),
             absent=(root / "scored" / "e1.jsonl",)),
        Case("score-errors-file-hard-links-the-input",
             score(root / "scored" / "e2.jsonl", "--errors", str(alias)),
             says=(str(alias), "overwrite"), unchanged=(items,), prepare=links),
        Case("score-errors-file-is-the-output", score(root / "scored" / "e3.jsonl", "--errors",
                                                      str(root / "scored" / "e3.jsonl")),
             says=("given as both OUTPUT and --errors",)),
        Case("eval-empty-file", ["eval", str(model_dir), f"t={empty}"],
             says=(str(empty), "no pairs to evaluate")),
        Case("eval-out-is-the-data", ["eval", str(model_dir), f"t={pairs}", "--out",
                                      str(pairs)],
             says=(str(pairs), "overwrite", "--out"), unchanged=(pairs,)),
        Case("eval-out-is-a-symlink-to-the-data",
             ["eval", str(model_dir), f"t={pairs}", "--out", str(symlink)],
             says=("overwrite",), unchanged=(pairs,), prepare=links),
        Case("matrix-out-overwrites-a-test-file",
             ["matrix", "--model", f"povid/none={model_dir}", "--test", f"povid={matrix_json}",
              "--out", str(tests_dir)], says=(str(matrix_json), "overwrite"),
             unchanged=(matrix_json,)),
        Case("convert-out-is-an-image-it-reads",
             convert_args(uses_picture, picture), says=(str(picture), "overwrite"),
             unchanged=(picture, uses_picture)),
        Case("convert-out-hard-links-the-source",
             convert_args(items, alias, "pairs"), says=("overwrite",), unchanged=(items,),
             prepare=links),
        Case("score-state-without-its-output", score(state_gone), before=score(state_gone),
             between=lambda: state_gone.unlink(),
             says=(f"{state_gone}.state.json", "is missing", "does not match its output"),
             absent=(state_gone,)),
        Case("score-state-longer-than-its-output", score(truncated), before=score(truncated),
             between=lambda: truncated.write_bytes(truncated.read_bytes()[:5]),
             says=("has 5", "does not match its output")),
    ]


def strict_json_cases(root: Path, data: Path) -> list[Case]:
    """Kinds 3 and 8 in records: a key given twice, nesting past the recursion limit, an
    integer past the digit limit, a lone surrogate; refused with file:line, or counted."""
    good = json.dumps(pair(1))
    twice = good[:-1] + ', "chosen": "It is blue."}'          # chosen given twice
    rows = {
        "duplicate_key": (twice, "chosen", "given twice"),
        "nested_too_deep": ('{"id": "p1", "x": ' + "[" * 100_000 + "]" * 100_000 + "}",
                            "<line>", "nested too deeply"),
        "huge_integer": ('{"id": "p1", "n": ' + "9" * 5000 + "}", "<line>",
                         "number that cannot be read"),
        "lone_surrogate": (good.replace("It is red.", "It is \\ud800 red."), "chosen",
                           "surrogate"),
    }
    cases = []
    for name, (row, fld, problem) in rows.items():
        src = jsonl(data / f"strict_{name}.jsonl", [pair(0), row, pair(2)])
        out = root / "out" / f"strict_{name}" / "pairs.jsonl"
        cases.append(Case(f"pairs-{name}-raise", convert_args(src, out),
                          says=(f"{src}:2: {fld}: ", problem), absent=(out, out.parent),
                          unchanged=(src,)))
        skip = root / "out" / f"strict_{name}_skip" / "pairs.jsonl"
        cases.append(Case(f"pairs-{name}-skip", convert_args(src, skip, "pairs", "--on-error",
                                                             "skip"),
                          exit_code=0, says=("skipped 1",),
                          ledger=skip.with_name("pairs.manifest.json")))
        cases.append(Case(f"validate-{name}", ["validate", str(src), "--images", "none"],
                          exit_code=1, says=(f"{src}:2: {fld}",)))
    povid = data / "povid_twice.json"
    povid.write_text('[{"id": "a", "image": "img.png", "conversations": [], "id": "b"}]')
    out = root / "out" / "povid_twice" / "pairs.jsonl"
    cases.append(Case("povid-duplicate-key-skipped",
                      convert_args(povid, out, "povid", "--on-error", "skip",
                                   "--image-root", str(data)),
                      exit_code=0, says=("skipped 1",), ledger=manifest_of(out)))
    deep = data / "povid_deep.json"
    deep.write_text("[" + "[" * 100_000 + "]" * 100_000 + "]")
    out = root / "out" / "povid_deep" / "pairs.jsonl"
    cases.append(Case("povid-nested-too-deep", convert_args(deep, out, "povid",
                                                            "--on-error", "skip"),
                      says=(f"{deep}:1", "nested too deeply"), absent=(out.parent,)))
    return cases


def manifest_of(out: Path) -> Path:
    return out.with_name(out.stem + ".manifest.json")


def config_cases(root: Path, data: Path, base_dir: Path) -> list[Case]:
    """Kinds 3, 4, 5, 6 and 8 in configs and runs: duplicate keys, aliases, non-finite and
    out-of-range numbers, NaN losses, resume under another config, a stage's missing file."""
    good = jsonl(data / "cfg_train.jsonl", [pair(k, id=f"c{k}") for k in range(4)])
    configs = root / "configs"
    configs.mkdir(exist_ok=True)

    def config(name, extra="", **changes) -> Path:
        raw = {"model": str(base_dir), "output_dir": str(root / "train" / name),
               "data": {"train": [str(good)]}, "max_steps": 1, "per_device_batch_size": 2,
               "calibration_pairs": 0}
        raw.update(changes)
        path = configs / f"{name}.yaml"
        path.write_text(yaml.safe_dump(raw) + extra)
        return path

    twice = config("twice", extra="optim:\n  lr: 0.5\n", optim={"lr": 0.001})
    bomb_yaml = configs / "alias_bomb.yaml"
    bomb_yaml.write_text("a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(9)))
    losses = root / "losses"
    losses.mkdir(exist_ok=True)
    ids = [f"c{k}" for k in range(4)]
    (losses / "nan.json").write_text(json.dumps({"losses": {i: float("nan") for i in ids}}))
    (losses / "negative.json").write_text(json.dumps({"losses": {i: -50.0 for i in ids}}))
    cross_fit = {"proxy": "cross_fit", "weighting": "sfc"}
    resumed = config("resumed", save_steps=1)
    params = configs / "stage_params.yaml"
    envs = root / "stage_envs"
    (envs / "povid").mkdir(parents=True, exist_ok=True)
    shutil.copy(good, envs / "povid" / "train.jsonl")
    (envs / "povid" / "img.png").write_bytes(image_bytes())
    params.write_text(yaml.safe_dump({
        "builtin": ["povid"], "environments": ["povid"], "variants": ["none"],
        "train": {"max_steps": 1, "per_device_batch_size": 2},
        "paths": {"base": str(base_dir), "envs": str(envs), "runs": str(root / "stage_runs")},
        "tracking": {"enabled": False}}))
    dup_params = configs / "dup_params.yaml"
    dup_params.write_text("variants: [none]\ntrain: {epochs: 1}\ntrain: {epochs: 4}\n")
    return [
        Case("train-config-block-given-twice", ["train", str(twice)],
             says=(f"{twice}:", "'optim' given twice")),
        Case("params-train-given-twice", ["stage", "evaluate", "--params", str(dup_params)],
             says=(f"{dup_params}:3", "'train' given twice")),
        Case("train-config-alias-bomb", ["train", str(bomb_yaml)],
             says=(f"{bomb_yaml}:2", "aliases")),
        Case("train-lr-infinite", ["train", str(config("inf_lr", optim={"lr": float("inf")}))],
             says=("optim.lr", "finite"), absent=(root / "train" / "inf_lr",)),
        Case("train-weight-decay-infinite",
             ["train", str(config("inf_wd", optim={"weight_decay": float("inf")}))],
             says=("optim.weight_decay", "finite")),
        Case("train-sfc-eps-infinite",
             ["train", str(config("inf_eps", shortcut={"eps": float("inf")}))],
             says=("shortcut.eps", "finite")),
        Case("train-proxy-losses-nan",
             ["train", str(config("nan_losses", shortcut={
                 **cross_fit, "proxy_losses": str(losses / "nan.json")}))],
             says=(str(losses / "nan.json"), "not a finite loss"),
             absent=(root / "train" / "nan_losses",)),
        Case("train-proxy-losses-negative",
             ["train", str(config("negative_losses", shortcut={
                 **cross_fit, "proxy_losses": str(losses / "negative.json")}))],
             says=(str(losses / "negative.json"), "-50.0", "not a finite loss")),
        Case("train-loss-becomes-nan", ["train", str(config("exploding", max_steps=3,
                                                            optim={"lr": 1e30}))],
             says=("the loss became", "at step", "nothing is saved as final"),
             absent=(root / "train" / "exploding" / "final",)),
        Case("train-resume-under-another-config",
             ["train", str(resumed), "seed=7", "optim.lr=0.5"], before=["train", str(resumed)],
             says=(f"{root / 'train' / 'resumed'}", "checkpoint-1", "seed: 0 -> 7",
                   "optim.lr", "--no-resume")),
        Case("stage-train-missing-eval-file",
             ["stage", "train", "--env", "povid", "--variant", "none", "--params", str(params)],
             says=("data.eval.povid", "no such file")),
    ]



# --------------------------------------------------------------------------- issue 45's kinds

def system_cases(root: Path, data: Path, model_dir: Path, base_dir: Path) -> list[Case]:
    """What a run reads is pinned, and what it needs is checked before anything waits: a
    resume on changed pairs, an output folder holding its own inputs, a file that is not
    the output a command would write, resources a cluster does not have, a cluster that is
    not there. (Full disks, signals, locks and services: test_hardening.py.)"""
    items = data / "items.jsonl"          # written by score_cases
    train_file = data / "pinned_train.jsonl"
    jsonl(train_file, [pair(k, id=f"p{k}") for k in range(4)])
    configs = root / "configs"
    configs.mkdir(exist_ok=True)

    def config(name, **changes) -> Path:
        raw = {"model": str(base_dir), "output_dir": str(root / "train" / name),
               "data": {"train": [str(train_file)]}, "max_steps": 2, "save_steps": 1,
               "per_device_batch_size": 2, "calibration_pairs": 0, **changes}
        path = configs / f"{name}.yaml"
        path.write_text(yaml.safe_dump(raw))
        return path

    def change_every_pair():
        jsonl(train_file, [pair(k, id=f"p{k}", chosen=f"Now answer {k}.") for k in range(4)])

    ft_root = root / "finetune"
    ft_base = ft_root / "start"

    def copy_base():
        if not ft_base.exists():
            shutil.copytree(base_dir, ft_base)
    params = root / "not_dvc" / "params.yaml"
    params.parent.mkdir(parents=True, exist_ok=True)
    params.write_text("variants: [none]\n")
    errors = root / "scored" / "mine.errors.jsonl"
    errors.parent.mkdir(parents=True, exist_ok=True)
    errors.write_text("a file of mine\n")
    score = lambda out, *extra: ["score", str(model_dir), str(items), str(out), *extra]  # noqa
    return [
        Case("train-resume-on-changed-pairs", ["train", str(config("pinned"))],
             before=["train", str(config("pinned")), "max_steps=1"],
             between=change_every_pair,
             says=("checkpoint-1", "other training pairs", "--no-resume")),
        Case("train-output-holds-its-model",
             ["train", str(config("holds", model=str(ft_base), output_dir=str(ft_root)))],
             prepare=copy_base, says=(str(ft_root), "holds the input", str(ft_base)),
             unchanged=(ft_base / "config.json",)),
        Case("train-output-inside-its-model",
             ["train", str(config("inside", output_dir=str(base_dir / "run")))],
             says=(str(base_dir / "run"), "lies in the input"), absent=(base_dir / "run",)),
        Case("dvc-yaml-over-params", ["dvc-yaml", "--path", str(params)],
             says=(str(params), "not a dvc.yaml mmrm rendered"), unchanged=(params,)),
        Case("score-errors-file-exists", score(root / "scored" / "mine.jsonl", "--errors",
                                               str(errors)),
             says=(str(errors), "--errors", "exists"), unchanged=(errors,),
             absent=(root / "scored" / "mine.jsonl",)),
        Case("score-more-workers-than-cpus", score(root / "scored" / "w.jsonl", "workers=1000"),
             says=("1000 workers", "CPUs", "the Ray cluster has"),
             absent=(root / "scored" / "w.jsonl",)),
        Case("score-gpu-workers-without-gpus", score(root / "scored" / "g.jsonl",
                                                     "gpus_per_worker=1"),
             says=("need 1 GPUs", "the Ray cluster has 0"),
             absent=(root / "scored" / "g.jsonl",)),
        Case("score-more-threads-than-cpus", score(root / "scored" / "t.jsonl",
                                                   "threads_per_worker=64"),
             says=("x 64 thread(s)", "CPUs"), absent=(root / "scored" / "t.jsonl",)),
        Case("score-cluster-not-there", score(root / "scored" / "a.jsonl",
                                              "address=127.0.0.1:1"),
             says=("address=127.0.0.1:1", "no Ray cluster answers"),
             absent=(root / "scored" / "a.jsonl",)),
    ]


if __name__ == "__main__":
    for case in build(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])):
        print(f"{case.name}: mmrm {' '.join(case.args)}")
