"""Every hostile input of the corpus (tests/data/hostile_corpus.py) through the real command:
the exit code, a message that names the file (and line or row) and the field, no traceback,
nothing half-written left behind, sources untouched, and read = written + skipped."""

import json
import tempfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hostile_corpus import build
from mmrm.cli import app


#: The case names, listed without a model (broken model copies are made when a case runs).
NAMES = [c.name for c in build(Path(tempfile.mkdtemp(prefix="mmrm-corpus-names-")),
                               Path("/nonexistent-model"), Path("/nonexistent-base"))]


@pytest.fixture(scope="module")
def corpus(trained_runs, tiny_vlm_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    return {c.name: c for c in build(root, trained_runs["none"] / "final", tiny_vlm_dir)}


def invoke(args):
    return CliRunner().invoke(app, args, env={"COLUMNS": "300"})


@pytest.mark.parametrize("name", NAMES)
def test_hostile_input_is_refused_or_counted_cleanly(corpus, name):
    case = corpus[name]
    if case.prepare is not None:
        case.prepare()
    if case.before is not None:
        first = invoke(case.before)
        assert first.exit_code == 0, first.output
    if case.between is not None:
        case.between()
    sources = {path: path.read_bytes() for path in case.unchanged}
    result = invoke(case.args)
    message = " ".join(result.output.split())      # line wraps do not split a file name
    assert result.exit_code == case.exit_code, result.output[-3000:]
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        repr(result.exception)
    assert "Traceback" not in result.output
    for text in case.says:
        assert " ".join(text.split()) in message, (text, result.output[-2000:])
    for path in case.absent:
        assert not Path(path).exists(), path
        assert not list(Path(path).parent.glob("." + Path(path).name + ".mmrm-tmp*"))
    for path, data in sources.items():
        assert path.read_bytes() == data, f"{path} was changed"
    if case.ledger is not None:
        records = json.loads(case.ledger.read_text())["records"]
        assert records["read"] == records["written"] + records["skipped"]
    if case.check is not None:
        case.check()


def test_the_corpus_covers_every_kind_of_input():
    kinds = {n.split("-")[0] for n in NAMES}
    assert kinds >= {"pairs", "multi", "validate", "convert", "rlhfv", "povid", "vlfeedback",
                     "images", "score", "eval", "train", "matrix", "params", "stage"}
    assert len(NAMES) >= 130
