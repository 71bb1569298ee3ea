"""The shortcut sweep's cue-balanced accuracy, computed by hand on a small case."""

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

SWEEP = Path(__file__).resolve().parents[2] / "benchmarks" / "shortcut_sweep.py"


def load_sweep():
    spec = importlib.util.spec_from_file_location("shortcut_sweep", SWEEP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cue_balanced_averages_cue_right_pairs_and_anti_cue_by_hand():
    sweep = load_sweep()
    # 5 test pairs: the own cue on the preferred side of pairs 0, 1, 3 (right 2 of 3: the
    # RM gets pair 1 wrong); pairs 2 and 4 (cue on the rejected side) must not count
    result = {"own_test": {"0.95": {"chosen": [1.0, 0.0, 0.0, 2.0, 0.0],
                                    "rejected": [0.0, 1.0, 5.0, 1.0, 5.0]}},
              "anticue": 0.25}
    sides = (True, True, False, True, False)
    assert sweep.cue_balanced(result, sides, 0.95) == pytest.approx(0.5 * (2 / 3 + 0.25))
    # a tie counts one half, as in pairwise accuracy
    result["own_test"]["0.95"]["rejected"][1] = 0.0
    assert sweep.cue_balanced(result, sides, 0.95) == pytest.approx(0.5 * (2.5 / 3 + 0.25))
    with pytest.raises(ValueError, match="5 rewards for 4 test pairs"):
        sweep.cue_balanced(result, sides[:4], 0.95)
