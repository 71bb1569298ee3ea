"""The built-in benchmark: deterministic, in the released formats, with the stated cue rates."""

import hashlib
import json
import math

import pytest

from mmrm.synthetic.benchmark import convert_benchmark
from mmrm.synthetic.environments import (CUE_TEXT, ENVIRONMENTS, BenchmarkConfig, SplitConfig,
                                         write_benchmark)
from mmrm.synthetic.scenes import COLOURS, SHAPES, SIZES



def small_config(seed=0, size=240, cue_rate=0.85, test_rate=0.85):
    return BenchmarkConfig(seed=seed, splits=[SplitConfig(name="train", size=size,
                                                          cue_rate=cue_rate),
                                              SplitConfig(name="test", size=size // 2,
                                                          cue_rate=test_rate)])


def tree_digest(folder):
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_same_seed_gives_byte_identical_outputs(tmp_path):
    for name in ("a", "b"):
        written = write_benchmark(tmp_path / name / "raw", small_config(seed=3, size=60))
        convert_benchmark(tmp_path / name, written)
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    other = write_benchmark(tmp_path / "c" / "raw", small_config(seed=4, size=60))
    assert tree_digest(tmp_path / "c" / "raw") != tree_digest(tmp_path / "a" / "raw")
    assert len(other) == 6


def test_every_environment_is_read_by_its_real_converter(tmp_path):
    written = write_benchmark(tmp_path / "raw", small_config(size=60))
    assert {(w.environment, w.raw.format) for w in written} == {
        ("povid", "povid"), ("rlhfv", "rlhfv"), ("vlfeedback", "vlfeedback")}
    assert (tmp_path / "raw" / "povid" / "train" / "POVID_preference_data_for_VLLMs.json").exists()
    assert (tmp_path / "raw" / "rlhfv" / "train" / "RLHF-V-Dataset.parquet").exists()
    assert (tmp_path / "raw" / "vlfeedback" / "train" / "merged_images").is_dir()
    outputs = convert_benchmark(tmp_path, written)
    for (env, split), path in outputs.items():
        manifest = json.loads(path.with_name(f"{split}.manifest.json").read_text())
        assert manifest["records"]["skipped"] == 0
        pairs = read_pairs(path)
        assert len(pairs) == (60 if split == "train" else 30)
        # the image decides: chosen and rejected differ in at least one scene attribute word
        vocab = set(COLOURS) | set(SHAPES) | set(SIZES)
        for p in pairs:
            assert scene_words(p["chosen"], vocab) != scene_words(p["rejected"], vocab), p


def read_pairs(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def scene_words(text, vocab):
    return {w.strip(".,!").lower() for w in text.split()} & vocab


def cue_agreement(pairs, env):
    if env == "vlfeedback":   # verbosity: the preferred answer is the longer one
        return sum(len(p["chosen"]) > len(p["rejected"]) for p in pairs) / len(pairs)
    marker = CUE_TEXT["sure" if env == "povid" else "hedge"].strip().lower()
    return sum(marker in p["chosen"].lower() for p in pairs) / len(pairs)


@pytest.mark.parametrize("rate", [0.85, 0.5, 0.15])
def test_cue_rates_hold_within_sampling_error(tmp_path, rate):
    written = write_benchmark(tmp_path / "raw", small_config(size=1200, cue_rate=rate,
                                                             test_rate=1 - rate))
    outputs = convert_benchmark(tmp_path, written)
    for env in ENVIRONMENTS:
        for split, target in (("train", rate), ("test", 1 - rate)):
            pairs = read_pairs(outputs[(env, split)])
            observed = cue_agreement(pairs, env)
            # VLFeedback's 6 pairs per item are correlated: allow a wider band there
            sigma = math.sqrt(target * (1 - target) / len(pairs)) * (3 if env == "vlfeedback"
                                                                      else 1)
            assert abs(observed - target) < 4 * sigma + 0.01, (env, split, observed, target)


def test_foreign_cues_are_uninformative(tmp_path):
    outputs = convert_benchmark(tmp_path, write_benchmark(tmp_path / "raw",
                                                          small_config(size=1200)))
    povid = read_pairs(outputs[("povid", "train")])
    hedge = sum("looking closely" in p["chosen"].lower() for p in povid) / len(povid)
    assert abs(hedge - 0.5) < 0.06


def test_unknown_environment_is_refused():
    with pytest.raises(ValueError, match="unknown environments"):
        BenchmarkConfig(environments=["povid", "nope"])


def test_the_tiny_base_vocabulary_covers_every_benchmark_text():
    import random

    from mmrm.synthetic.environments import povid_items, rlhfv_items, vlfeedback_items
    from mmrm.synthetic.tiny_vlm import build_tokenizer, vocabulary_corpus

    tokenizer = build_tokenizer(vocabulary_corpus())
    rng = random.Random(0)
    split = SplitConfig(name="x", size=60, cue_rate=0.5)
    texts = [t for make in (povid_items, rlhfv_items)
             for it in make(split, rng, 0) for t in (it.prompt, it.chosen, it.rejected)]
    texts += [t for it in vlfeedback_items(split, rng, 0) for t in (it.prompt, *it.responses)]
    assert all(tokenizer.unk_token not in tokenizer.tokenize(t) for t in texts)


def test_prefix_cues_do_not_change_token_counts():
    from mmrm.synthetic.environments import with_cues
    from mmrm.synthetic.tiny_vlm import build_tokenizer, vocabulary_corpus

    tokenizer = build_tokenizer(vocabulary_corpus())
    counts = {len(tokenizer.tokenize(with_cues("The image shows a red circle.", cues)))
              for cues in (set(), {"sure"}, {"hedge"}, {"sure", "hedge"})}
    assert len(counts) == 1


@pytest.mark.parametrize("rate", [1.0, 0.0])
def test_own_cue_side_is_read_back_from_the_texts(tmp_path, rate):
    """At cue rate 1 the own cue is on every preferred answer, at 0 on none: the reader
    must say so for every pair of every environment (foreign cues at random around it)."""
    from mmrm.synthetic.environments import own_cue_on_chosen

    outputs = convert_benchmark(tmp_path, write_benchmark(
        tmp_path / "raw", small_config(size=120, cue_rate=rate, test_rate=rate)))
    for env in ENVIRONMENTS:
        pairs = read_pairs(outputs[(env, "train")])
        sides = {own_cue_on_chosen(env, p["chosen"], p["rejected"]) for p in pairs}
        assert sides == {rate == 1.0}, env


def test_frames_change_the_answer_sentence_and_nothing_else(tmp_path):
    """Same seed and splits in other frames: pair for pair the same scenes, errors and cues;
    only the sentence around the description differs."""
    frames = {"povid": "This picture shows {}.", "rlhfv": "This is {}.",
              "vlfeedback": "In this picture there is {}."}
    shipped = {"povid": "the image shows", "rlhfv": "it is", "vlfeedback": "there is"}
    plain = convert_benchmark(tmp_path / "a", write_benchmark(tmp_path / "a" / "raw",
                                                              small_config(size=60)))
    config = small_config(size=60).model_copy(update={"frames": frames})
    framed = convert_benchmark(tmp_path / "b", write_benchmark(tmp_path / "b" / "raw", config))
    for (env, split), path in plain.items():
        before = read_pairs(path)
        after = read_pairs(framed[(env, split)])
        assert len(after) == len(before) > 0
        words = frames[env][:-4].lower()
        for b, a in zip(before, after, strict=True):
            for key in ("chosen", "rejected"):
                assert words in a[key] and a[key] != b[key]
                assert a[key].replace(words, shipped[env]) == b[key]
            assert a["prompt"] == b["prompt"]


@pytest.mark.parametrize("frames, problem", [({"povid": "No slot."}, "povid: the frame"),
                                              ({"povid": "{} and {}."}, "povid: the frame"),
                                              ({"povid": "A {x}."}, "povid: the frame"),
                                              ({"nope": "A {}."}, "nope: unknown environment")])
def test_bad_frames_are_refused(frames, problem):
    with pytest.raises(ValueError, match=problem):
        BenchmarkConfig(frames=frames)


def test_pairs_with_unknown_words_are_named():
    from mmrm.data import pairs_with_unknown_tokens, unknown_tokens_note
    from mmrm.formats import PairRecord
    from mmrm.synthetic.tiny_vlm import build_tokenizer, vocabulary_corpus

    tokenizer = build_tokenizer(vocabulary_corpus())

    def pair(n, chosen, prompt="Describe this image in detail."):
        return PairRecord(id=str(n), prompt=prompt, img_path="a.png", chosen=chosen,
                          rejected="There is a red circle.")

    pairs = [pair(0, "There is a blue square."), pair(1, "There is a zebra."),
             pair(2, "There is a blue square.", prompt="Describe this painting."),
             pair(3, "It is a small red circle.")]
    unknown = pairs_with_unknown_tokens(tokenizer, pairs, chunk=5)   # chunks cross pairs
    assert unknown == ["1", "2"]
    assert unknown_tokens_note("f.jsonl", len(pairs), len(unknown), unknown[0]) == (
        "warning: f.jsonl: 2 of 4 pairs hold words the tokenizer does not know (read as its "
        "unknown token; first: pair 1)")
    assert unknown_tokens_note("f.jsonl", len(pairs), 0) == ""
    tokenizer.unk_token = None          # a tokenizer without an unknown token loses nothing
    assert pairs_with_unknown_tokens(tokenizer, pairs) == []


def decided_sides(env, rate, size, seed=0):
    """Per pair of ``env`` at foreign-cue rate ``rate``: for each cue, +1 where it sits on the
    preferred side, -1 on the rejected side, 0 where it does not decide the pair; and each
    pair's own-cue strengths (VLFeedback-like items become their six pairs)."""
    import random

    from mmrm.synthetic.environments import _ITEMS, CUES, cue_strength

    split = SplitConfig(name="train", size=size, cue_rate=0.95, foreign_cue_rate=rate)
    items = _ITEMS[env](split, random.Random(f"{seed}/{env}"), 0)
    pairs = []
    for item in items:
        if env != "vlfeedback":
            pairs.append((item.chosen, item.rejected))
            continue
        scored = sorted(zip(item.ratings, item.responses),
                        key=lambda x: -int(x[0]["Helpfulness"]))
        pairs += [(scored[i][1], scored[j][1]) for i in range(4) for j in range(i + 1, 4)]
    sides = [{c: (cue_strength(c, a) > cue_strength(c, b)) - (cue_strength(c, a) <
                                                               cue_strength(c, b))
              for c in CUES} for a, b in pairs]
    return sides


@pytest.mark.parametrize("env", ENVIRONMENTS)
@pytest.mark.parametrize("rate", [0.5, 0.2, 0.8])
def test_foreign_cues_sit_on_the_preferred_side_at_their_rate(env, rate):
    from mmrm.synthetic.environments import ENVIRONMENT_CUE

    sides = decided_sides(env, rate, 3000)
    for cue in set(ENVIRONMENT_CUE.values()) - {ENVIRONMENT_CUE[env]}:
        decided = [s[cue] for s in sides if s[cue]]
        share = sum(d > 0 for d in decided) / len(decided)
        sigma = math.sqrt(rate * (1 - rate) / len(decided))
        assert abs(share - rate) < 4 * sigma, (cue, share, len(decided))


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_the_foreign_rate_leaves_everything_else_as_it_was(env):
    """Same seed: identical pairs but for the foreign cues (the own cue's side, pair by pair,
    included), and at the same rate identical outright (deterministic by seed)."""
    from mmrm.synthetic.environments import ENVIRONMENT_CUE

    own = ENVIRONMENT_CUE[env]
    random_ = decided_sides(env, 0.5, 300)
    reversed_ = decided_sides(env, 0.2, 300)
    assert [s[own] for s in random_] == [s[own] for s in reversed_]
    assert random_ != reversed_
    assert decided_sides(env, 0.2, 300) == reversed_
    assert decided_sides(env, 0.2, 300, seed=1) != reversed_


def test_foreign_cue_holders_by_hand():
    from mmrm.synthetic.environments import foreign_cue_holders

    draws = [[0.1, 0.9], [0.7, 0.2], [0.3, 0.6], [0.8, 0.1]]
    # at 0.5: plain coin flips (u < 0.5) per completion and cue
    assert foreign_cue_holders(draws, 0.5) == [{0, 2}, {1, 3}]
    # at 0.2: a = 1.8 / 3.4 = 0.529; cue 0's first draw 0.1 < a: the two worst hold it;
    # cue 1's 0.9 >= a: coins, the first rescaled to (0.9 - a) / (1 - a) = 0.79 (tails)
    assert foreign_cue_holders(draws, 0.2) == [{2, 3}, {1, 3}]
    assert foreign_cue_holders(draws, 0.8)[0] == {0, 1}
    assert foreign_cue_holders(draws, 1.0) == [{0, 1}, {0, 1}]
