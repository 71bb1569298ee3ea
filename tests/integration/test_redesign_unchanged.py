"""The redesign of issue 17 changed the house, not what it computes: the seed-0
cross-distribution matrix of two short runs and a ``score_file`` output are bit-identical
with the code of the commit before it (taken from git history) and with today's."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
#: The last commit before the redesign.
BEFORE = "8b40dc3"
DRIVER = Path(__file__).parent / "redesign" / "run_tiny.py"
#: Drops the editable install's import hook, so that PYTHONPATH decides which mmrm imports.
SITECUSTOMIZE = """import sys
sys.meta_path[:] = [f for f in sys.meta_path
                    if not type(f).__module__.startswith("__editable__")]
"""


def run_with(tree: Path, work: Path, site: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{site}:{tree}", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(DRIVER), str(work)], cwd=work.parent, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def test_matrix_and_scores_are_bit_identical_to_the_code_before_the_redesign(tmp_path):
    have = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{BEFORE}^{{commit}}"],
                          capture_output=True)
    if have.returncode != 0:
        pytest.skip(f"commit {BEFORE} is not in this checkout's history")
    before = tmp_path / "before"
    before.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", BEFORE, "mmrm"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(before)], input=archive, check=True)
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    old = run_with(before, tmp_path / "old", site)
    new = run_with(ROOT, tmp_path / "new", site)
    assert set(old["matrix"]) == {"povid/none", "povid/sfc_joint"}
    assert len(old["scores"]) == 6 and all(len(s) == 3 for s in old["scores"])
    assert new == old
