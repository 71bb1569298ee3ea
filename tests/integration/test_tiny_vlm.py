"""The tiny base: an ordinary HF model directory, built deterministically."""

import json

import pytest
import torch
from safetensors.torch import load_file

from mmrm.synthetic.tiny_vlm import TinyVLMConfig, grounding_accuracy, prefetched, pretrain


QUICK = dict(hidden_size=32, vision_layers=1, text_layers=1, heads=2, image_size=32,
             align_steps=2, tune_steps=2, batch_size=4, eval_scenes=4)


def test_pretrained_base_loads_through_the_auto_classes(tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    report = pretrain(tmp_path / "base", TinyVLMConfig(**QUICK), log=lambda s: None)
    assert report["grounding"]["questions"] == 4 * 3 * 2
    assert 0 <= report["grounding"]["overall"] <= 1
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "base")
    processor = AutoProcessor.from_pretrained(tmp_path / "base")
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert type(processor).__name__ == "LlavaProcessor"
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q?"}]}],
        tokenize=False, add_generation_prompt=True)
    assert text == "<|user|><image>Q?<|end|><|assistant|>"
    # the saved report is the one returned; the evaluation is reproducible from the files
    saved = json.loads((tmp_path / "base" / "pretrain_report.json").read_text())
    assert saved["grounding"] == report["grounding"]
    again = grounding_accuracy(model.eval(), processor, TinyVLMConfig(**QUICK))
    assert again == report["grounding"]


def test_same_seed_same_weights(tmp_path):
    for name in ("a", "b", "c"):
        seed = 1 if name == "c" else 0
        pretrain(tmp_path / name, TinyVLMConfig(seed=seed, **QUICK), log=lambda s: None)
    a, b, c = (load_file(str(tmp_path / n / "model.safetensors")) for n in ("a", "b", "c"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == \
        (tmp_path / "b" / "tokenizer.json").read_bytes()


@pytest.mark.parametrize("visual", ["V0", "V2"])
def test_batches_made_ahead_give_the_same_base(tmp_path, visual):
    config = TinyVLMConfig(visual=visual, **{**QUICK, "align_steps": 3, "tune_steps": 4})
    for prefetch in (False, True):
        pretrain(tmp_path / str(prefetch), config, log=lambda s: None, prefetch=prefetch)
    ahead, inline = (load_file(str(tmp_path / str(p) / "model.safetensors"))
                     for p in (True, False))
    assert ahead.keys() == inline.keys()
    assert all(torch.equal(ahead[k], inline[k]) for k in ahead)


def test_a_failure_while_making_batches_ahead_reaches_the_training_loop():
    def batches():
        yield 1
        yield 2
        raise ValueError("scene 3: no such colour")

    made = []
    with pytest.raises(ValueError, match="scene 3"):
        for item in prefetched(batches()):
            made.append(item)
    assert made == [1, 2]


def test_a_training_loop_that_stops_early_stops_the_thread_making_batches():
    import threading

    def batches():
        yield from range(1000)

    made = prefetched(batches(), depth=2)
    assert next(made) == 0
    made.close()                   # what an error in the loop's step does to the generator
    assert not [t for t in threading.enumerate() if t.name == "pretrain-batches"]


@pytest.mark.parametrize("graded", [False, True])
def test_matching_targets_count_the_attributes_the_caption_gets_right(tmp_path, graded):
    import random

    from mmrm.synthetic.scenes import ATTRIBUTES
    from mmrm.synthetic.tiny_vlm import build_processor, build_tokenizer, itm_batch, \
        vocabulary_corpus

    processor = build_processor(build_tokenizer(vocabulary_corpus()), TinyVLMConfig(**QUICK))
    batch, match, words = itm_batch(processor, random.Random(0), 64, 32, graded=graded)
    texts = processor.tokenizer.batch_decode(batch["input_ids"], skip_special_tokens=True)
    seen = set()
    for text, target, labels in zip(texts, match.tolist(), words):
        present = labels[labels >= 0].tolist()      # one label per attribute word
        assert len(present) == len(ATTRIBUTES), text
        assert target == pytest.approx(sum(present) / 3 if graded else float(all(present)))
        seen.add(round(target * 3))
    assert seen == ({0, 1, 2, 3} if graded else {0, 3})
