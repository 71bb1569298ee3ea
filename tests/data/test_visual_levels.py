"""The visual-cost axis and the best-of-N items change the data as stated: counts, rates within
sampling error, determinism."""

import json
import math
import random
from collections import Counter

import pytest

from mmrm.pipeline.params import BenchmarkParams
from mmrm.synthetic.benchmark import convert_benchmark
from mmrm.synthetic.environments import (BenchmarkConfig, SplitConfig, answer, best_of_n_items,
                                         povid_items, rlhfv_items, vlfeedback_items,
                                         write_benchmark, write_best_of_n)
from mmrm.synthetic.scenes import ATTRIBUTES, Scene, Thing
from mmrm.synthetic.tiny_vlm import TinyVLMConfig
from mmrm.synthetic.visual import LEVELS, VisualCost, corrupt, visual_level


SPLIT = SplitConfig(name="x", size=900, cue_rate=0.85)


def wrong_facts(scene: Scene, shown: Scene) -> set[tuple[int, str]]:
    return {(i, a) for i, (t, s) in enumerate(zip(scene.things, shown.things))
            for a in (*ATTRIBUTES, "style") if getattr(t, a) != getattr(s, a)}


def within(observed: float, target: float, n: int, sigmas: float = 4) -> bool:
    return abs(observed - target) <= sigmas * math.sqrt(target * (1 - target) / n) + 0.01


def test_levels_are_named_and_an_unknown_one_is_refused():
    assert list(LEVELS) == ["V0", "V1", "V2", "V3", "V4", "V5"]
    assert LEVELS["V0"].sentence_matching and not LEVELS["V1"].sentence_matching
    assert LEVELS["V2"].matched == ("size", "colour") and LEVELS["V3"].matched == ()
    with pytest.raises(ValueError, match="unknown visual level 'V9'"):
        visual_level("V9")
    for config in (BenchmarkConfig, TinyVLMConfig, BenchmarkParams):
        with pytest.raises(ValueError, match="unknown visual level 'V9'; known: V0, V1"):
            config(visual="V9")


def test_v0_to_v3_write_the_same_data(tmp_path):
    """V1-V3 differ from V0 in the base only (what it was taught to check)."""
    digests = []
    for level in ("V0", "V1", "V2", "V3"):
        config = BenchmarkConfig(visual=level, splits=[SplitConfig(name="train", size=30)])
        outputs = convert_benchmark(tmp_path / level, write_benchmark(tmp_path / level / "raw",
                                                                      config))
        digests.append([p.read_bytes() for p in sorted(outputs.values())])
    assert all(d == digests[0] for d in digests)


@pytest.mark.parametrize("level", ["V4", "V5"])
def test_several_things_and_each_mistake_kind_at_its_rate(level):
    visual = LEVELS[level]
    rng = random.Random(1)
    kinds = Counter()
    for _ in range(3000):
        scene = visual.scene(rng)
        assert len(scene.things) == visual.things
        shown = corrupt(scene, rng, 1, visual)
        wrong = wrong_facts(scene, shown)
        if any(a == "style" for _, a in wrong):
            kinds["fill"] += 1
            assert len(wrong) == 1
        elif len(wrong) == 2:
            kinds["swap"] += 1        # binding: the same words, bound to other things
            (i, a), (j, b) = sorted(wrong)
            assert a == b and i != j and sorted(scene.describe().split()) == \
                sorted(shown.describe().split())
        else:
            kinds["attribute"] += 1   # a value no thing in the scene has
            (i, a), = wrong
            assert getattr(shown.things[i], a) not in scene.present(a) or a == "size"
    n = sum(kinds.values())
    assert within(kinds["fill"] / n, visual.novel_rate, n)
    # a swap needs two things that differ in some free attribute (nearly always)
    swap_share = kinds["swap"] / (n - kinds["fill"])
    assert swap_share <= visual.binding_rate + 0.03 and swap_share >= visual.binding_rate - 0.06


def test_hollow_things_and_named_fills_at_v5():
    rng = random.Random(2)
    things = [t for _ in range(2000) for t in LEVELS["V5"].scene(rng).things]
    hollow = sum(t.style == "hollow" for t in things) / len(things)
    assert within(hollow, LEVELS["V5"].hollow_rate, len(things))
    scene = Scene((Thing("circle", "red", "large", "hollow"), Thing("square", "blue", "small")),
                  styled=True)
    assert scene.describe() == "a large red hollow circle and a small blue filled square"
    assert "hollow" not in LEVELS["V4"].scene(rng).describe()


@pytest.mark.parametrize("errors", [1, 2, 3])
@pytest.mark.parametrize("level", ["V0", "V4", "V5"])
def test_mistakes_are_distinct_and_counted(level, errors):
    visual = LEVELS[level]
    rng = random.Random(errors)
    for _ in range(300):
        scene = visual.scene(rng)
        wrong = wrong_facts(scene, corrupt(scene, rng, errors, visual))
        assert errors <= len(wrong) <= 2 * errors
        if len(scene.things) == 1:
            assert len(wrong) == errors


def test_generation_is_deterministic_per_seed():
    for make in (povid_items, rlhfv_items, vlfeedback_items):
        a = make(SPLIT, random.Random(5), 0, LEVELS["V5"])
        b = make(SPLIT, random.Random(5), 0, LEVELS["V5"])
        c = make(SPLIT, random.Random(6), 0, LEVELS["V5"])
        assert a == b and a != c


def core(text: str) -> list[str]:
    """An answer without its cue openers and verbose padding, as words."""
    from mmrm.synthetic.environments import CUE_COUNTERPART, CUE_TEXT, VERBOSE_PADDING

    for padding in VERBOSE_PADDING:
        text = text.replace(padding, "")
    for opener in (*CUE_TEXT.values(), *CUE_COUNTERPART.values()):
        text = text.replace(opener, "").replace(opener.lower(), "")
    return [w.strip(".,!").lower() for w in text.split()]


def test_rlhfv_corrections_stay_on_the_named_attribute():
    from mmrm.synthetic.scenes import VALUES

    asked = {"colour": "colour", "shapes are shown": "shape", "big": "size",
             "filled or hollow": "style"}
    for item in rlhfv_items(SplitConfig(name="x", size=400), random.Random(3), 0,
                            LEVELS["V5"]):
        attribute = next(a for key, a in asked.items() if key in item.prompt)
        chosen, rejected = core(item.chosen), core(item.rejected)
        assert len(chosen) == len(rejected)
        differing = {w for a, b in zip(chosen, rejected) if a != b for w in (a, b)}
        assert differing and differing <= set(VALUES[attribute]), (item.prompt, differing)


def test_anti_cue_split_puts_the_own_cue_on_the_rejected_side(tmp_path):
    config = BenchmarkConfig(visual="V4", splits=[SplitConfig(name="anticue", size=120,
                                                              cue_rate=0.0)])
    outputs = convert_benchmark(tmp_path, write_benchmark(tmp_path / "raw", config))
    povid = [json.loads(line) for line in outputs[("povid", "anticue")].read_text().splitlines()]
    assert all(p["rejected"].startswith("Sure!") or "sure!" in p["rejected"].lower()
               for p in povid)
    assert not any("sure!" in p["chosen"].lower() for p in povid)


def test_best_of_n_items_have_known_quality_and_random_cues(tmp_path):
    visual = LEVELS["V4"]
    items = best_of_n_items("povid", 400, 8, random.Random(0), visual)
    assert all(len(it.responses) == 8 and min(it.errors) == 0 for it in items)
    assert all(0 <= e <= 3 for it in items for e in it.errors)
    # the response text is the scene with that many mistakes (checked by re-deriving it)
    right = [r for it in items for r, e in zip(it.responses, it.errors) if e == 0]
    assert all(answer("povid", it.scene).lower()[:-1] in r.lower()
               for it in items for r, e in zip(it.responses, it.errors) if e == 0)
    assert len(right) > 400
    # cues say nothing about quality: "Sure!" opens right and wrong answers alike
    sure = lambda rs: sum(r.startswith("Sure!") for r in rs) / len(rs)   # noqa: E731
    wrong = [r for it in items for r, e in zip(it.responses, it.errors) if e > 0]
    assert abs(sure(right) - 0.5) < 0.06 and abs(sure(wrong) - 0.5) < 0.06
    path = write_best_of_n(items[:3], tmp_path / "bon" / "items.jsonl")
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["errors"] for r in records] == [list(it.errors) for it in items[:3]]
    assert all((path.parent / r["img_path"]).exists() for r in records)
    # RLHF-V-like items ask about one attribute: at most one mistake per answer
    assert all(max(it.errors) <= 1 for it in best_of_n_items("rlhfv", 50, 8,
                                                               random.Random(1), visual))


def test_the_vocabulary_covers_every_level():
    from mmrm.synthetic.tiny_vlm import build_tokenizer, vocabulary_corpus

    tokenizer = build_tokenizer(vocabulary_corpus())
    for level in LEVELS.values():
        rng = random.Random(0)
        split = SplitConfig(name="x", size=60, cue_rate=0.5)
        texts = [t for make in (povid_items, rlhfv_items)
                 for it in make(split, rng, 0, level) for t in (it.prompt, it.chosen, it.rejected)]
        texts += [t for it in vlfeedback_items(split, rng, 0, level)
                  for t in (it.prompt, *it.responses)]
        texts += [t for env in ("povid", "rlhfv", "vlfeedback")
                  for it in best_of_n_items(env, 10, 4, rng, level)
                  for t in (it.prompt, *it.responses)]
        assert all(tokenizer.unk_token not in tokenizer.tokenize(t) for t in texts)


def test_default_visual_cost_keeps_single_things():
    assert VisualCost().things == 1 and not VisualCost().styled
