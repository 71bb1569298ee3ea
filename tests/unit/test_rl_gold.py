"""What the RL measures read from a completion, worked by hand: gold correctness against
the scene's known attributes, and the cues a completion carries."""

import random

from mmrm.synthetic.environments import (cue_shares, gold_correct, rl_prompts, scene_of,
                                         write_rl_prompts)
from mmrm.synthetic.scenes import Scene, Thing


def test_gold_correct_by_hand():
    scene = Scene.single("circle", "red", "large")
    assert gold_correct(scene, "Sure! at first, the image shows a large red circle.")
    assert gold_correct(scene, "Well, looking closely, there is a large red circle. It is "
                               "drawn on a plain background.")          # padding names none
    assert not gold_correct(scene, "The image shows a small red circle.")       # wrong size
    assert not gold_correct(scene, "The image shows a large red circle and a blue square.")
    assert not gold_correct(scene, "The image shows a red circle.")      # no size: incomplete
    assert not gold_correct(scene, "")
    # an RLHF-V-like question asks one attribute: that one must be named, and right
    assert gold_correct(scene, "It is red.", "colour")
    assert not gold_correct(scene, "It is blue.", "colour")
    assert not gold_correct(scene, "It is large.", "colour")
    assert not gold_correct(scene, "It is red.", None)               # a description needs all
    # several things: each value named must be some thing's
    two = Scene((Thing("circle", "red", "large"), Thing("square", "blue", "small")))
    assert gold_correct(two, "They are a large red circle and a small blue square.")
    assert not gold_correct(two, "They are a large green circle and a small blue square.")


def test_cue_shares_by_hand():
    texts = ["Sure! at first, it is red.", "Well, looking closely, it is red.",
             "Well, at first, it is red. It is drawn on a plain background.", ""]
    assert cue_shares(texts) == {"sure": 0.25, "hedge": 0.25, "verbose": 0.25}


def test_rl_prompts_round_trip_their_scenes(tmp_path):
    items = rl_prompts("rlhfv", 5, random.Random(0))
    path = write_rl_prompts("rlhfv", items, tmp_path / "p" / "prompts.jsonl", 32)
    import json

    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [scene_of(r).things for r in rows] == [i.scene.things for i in items]
    assert all(r["attribute"] in ("size", "colour", "shape") for r in rows)
    assert all((path.parent / r["img_path"]).is_file() for r in rows)
    again = rl_prompts("rlhfv", 5, random.Random(0))
    assert [i.prompt for i in again] == [i.prompt for i in items]        # from its seed
