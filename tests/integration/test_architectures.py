"""Tiny random Qwen2-VL, LLaVA, Idefics3 and InternVL backbones (transformers' native classes)
each train for two steps: every trainable parameter changes, the loss is finite, save -> load
gives identical rewards, and encoding an image once per pair matches encoding it per sequence.
"""

import json

import pytest
import torch
from safetensors.torch import load_file

from mmrm.config import TrainConfig
from mmrm.data import (PADDED_KEYS, PairCollator, conversation, load_image, load_pairs,
                       set_right_padding)
from mmrm.inference import score_pairs
from mmrm.model import RewardModel, load_processor
from mmrm.synthetic.tiny_vlm import build_tokenizer, vocabulary_corpus
from mmrm.train import shares_prompt, train


#: Weights the reward never reads: the LM head (the value head reads hidden states) and, in
#: LLaVA, CLIP's final layer norm (LLaVA takes the last hidden state before it).
UNUSED = ("lm_head.", "vision_tower.post_layernorm")


def _tokenizer(special: list[str], template: str, **attributes):
    tokenizer = build_tokenizer(vocabulary_corpus())
    tokenizer.add_special_tokens({"additional_special_tokens": special})
    tokenizer.chat_template = template
    for key, value in attributes.items():
        setattr(tokenizer, key, value)
    return tokenizer


def _messages_template(image: str, turn: str, end: str) -> str:
    return ("{% for message in messages %}" + turn +
            "{% for part in message['content'] %}{% if part['type'] == 'image' %}" + image +
            "{% else %}{{ part['text'] }}{% endif %}{% endfor %}" + end + "{% endfor %}")


def build_qwen2vl(out):
    from transformers import (Qwen2VLConfig, Qwen2VLForConditionalGeneration,
                              Qwen2VLImageProcessorPil)

    from mmrm.processors import Qwen2VLImageProcessorOnly

    template = _messages_template("<|vision_start|><|image_pad|><|vision_end|>",
                                  "<|im_start|>{{ message['role'] }}\n", "<|im_end|>\n")
    tok = _tokenizer(["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|image_pad|>",
                      "<|vision_end|>", "<|video_pad|>"], template,
                     image_token="<|image_pad|>", video_token="<|video_pad|>")
    image_processor = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=56 * 56,
                                               patch_size=14, merge_size=2)
    Qwen2VLImageProcessorOnly(image_processor=image_processor, tokenizer=tok,
                              chat_template=template).save_pretrained(out)
    ids = {name: tok.convert_tokens_to_ids(token) for name, token in (
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}
    config = Qwen2VLConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, vocab_size=len(tok),
                         max_position_embeddings=512,
                         rope_scaling={"type": "mrope", "mrope_section": [2, 2, 4]}),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2), **ids)
    Qwen2VLForConditionalGeneration(config).save_pretrained(out)


def build_idefics3(out):
    from transformers import (Idefics3Config, Idefics3ForConditionalGeneration,
                              Idefics3ImageProcessorPil, Idefics3Processor)

    template = _messages_template("<image>", "{{ message['role'] | capitalize }}: ",
                                  "<end_of_utterance>\n")
    tok = _tokenizer(["<fake_token_around_image>", "<global-img>", "<end_of_utterance>"],
                     template)
    image_processor = Idefics3ImageProcessorPil(do_image_splitting=False,
                                                size={"longest_edge": 56},
                                                max_image_size={"longest_edge": 56})
    Idefics3Processor(image_processor=image_processor, tokenizer=tok, image_seq_len=4,
                      chat_template=template).save_pretrained(out)
    config = Idefics3Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, image_size=56, patch_size=14),
        text_config=dict(model_type="llama", hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         vocab_size=len(tok), pad_token_id=tok.pad_token_id),
        scale_factor=2, image_token_id=tok.convert_tokens_to_ids("<image>"),
        pad_token_id=tok.pad_token_id)
    Idefics3ForConditionalGeneration(config).save_pretrained(out)


def build_internvl(out):
    from transformers import (GotOcr2ImageProcessorPil, InternVLConfig,
                              InternVLForConditionalGeneration, PreTrainedTokenizerFast)

    from mmrm.processors import InternVLImageProcessorOnly

    template = _messages_template("<IMG_CONTEXT>\n", "<|im_start|>{{ message['role'] }}\n",
                                  "<|im_end|>\n")
    _tokenizer(["<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"],
               template).save_pretrained(out / "tokenizer")
    tok = PreTrainedTokenizerFast.from_pretrained(out / "tokenizer", extra_special_tokens={
        "start_image_token": "<img>", "end_image_token": "</img>",
        "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"})
    image_processor = GotOcr2ImageProcessorPil(size={"height": 56, "width": 56},
                                               crop_to_patches=False)
    InternVLImageProcessorOnly(image_processor=image_processor, tokenizer=tok,
                               image_seq_length=4, chat_template=template).save_pretrained(out)
    config = InternVLConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, image_size=[56, 56], patch_size=[14, 14]),
        text_config=dict(model_type="qwen2", hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         vocab_size=len(tok)),
        downsample_ratio=0.5, image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"),
        image_seq_length=4)
    InternVLForConditionalGeneration(config).save_pretrained(out)


def _distinct_images(pairs, k):
    """The first ``k`` pairs that each show another image (VLFeedback-like files hold several
    pairs per image: a mix-up between items would go unseen among those)."""
    by_image = {}
    for pair in pairs:
        by_image.setdefault(pair.image_file, pair)
    assert len(by_image) >= k
    return list(by_image.values())[:k]


BUILDERS = {"qwen2vl": build_qwen2vl, "idefics3": build_idefics3, "internvl": build_internvl}


@pytest.fixture(params=["qwen2vl", "llava", "idefics3", "internvl"])
def backbone(request, tiny_vlm_dir, tmp_path_factory):
    if request.param == "llava":
        return tiny_vlm_dir
    out = tmp_path_factory.mktemp(request.param)
    BUILDERS[request.param](out)
    return out


def test_two_steps_every_parameter_changes_and_save_load_round_trips(backbone, tiny_pairs,
                                                                     tmp_path):
    out = tmp_path / "run"
    config = TrainConfig.model_validate({
        "model": str(backbone), "output_dir": str(out),
        "data": {"train": [str(tiny_pairs[("povid", "train")])],
                 "eval": {"povid": str(tiny_pairs[("povid", "test")])}},
        "max_steps": 2, "per_device_batch_size": 4, "optim": {"lr": 1e-2, "warmup_ratio": 0},
        "log_steps": 1})
    result = train(config, resume=False, log=lambda line: None)
    assert result["steps"] == 2
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in log)

    before = load_file(str(backbone / "model.safetensors"))
    after = load_file(str(out / "final" / "model.safetensors"))
    unchanged = {k for k in before if torch.equal(before[k], after[k])
                 and not any(u in k for u in UNUSED)}
    assert unchanged == set()

    processor = load_processor(out / "final")
    set_right_padding(processor)
    pairs = load_pairs(tiny_pairs[("povid", "test")])[:4]
    first = score_pairs(RewardModel.load(out / "final").eval(), PairCollator(processor), pairs)
    second = score_pairs(RewardModel.load(out / "final").eval(), PairCollator(processor), pairs)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


@torch.no_grad()
def test_image_encoded_once_per_pair_matches_once_per_sequence(backbone, tiny_pairs):
    model = RewardModel.from_base(backbone).eval()
    processor = load_processor(backbone)
    set_right_padding(processor)
    pairs = _distinct_images(load_pairs(tiny_pairs[("rlhfv", "test")]), 3)
    batch = PairCollator(processor)(pairs)
    batch.pop("ids")
    once = model(**batch, sequences_per_image=2)
    images = [load_image(p.image_file) for p in pairs]
    per_sequence = []
    for side in ("chosen", "rejected"):
        texts = [processor.apply_chat_template(conversation(p.prompt, getattr(p, side), True),
                                               tokenize=False) for p in pairs]
        inputs = processor(text=texts, images=images, return_tensors="pt", padding=True)
        inputs.pop("token_type_ids", None)
        per_sequence.append(model(**inputs))
    assert torch.allclose(once, torch.cat(per_sequence), atol=1e-5)


@torch.no_grad()
def test_shared_prompt_cache_scores_like_the_full_sequences(backbone, tiny_pairs):
    from mmrm.inference import score_items, score_items_shared_prefix

    model = RewardModel.from_base(backbone).eval()
    processor = load_processor(backbone)
    set_right_padding(processor)
    pairs = _distinct_images(load_pairs(tiny_pairs[("vlfeedback", "test")]), 2)
    items = [{"prompt": p.prompt, "image_file": str(p.image_file),
              "responses": [p.chosen, p.rejected, p.rejected + " It is drawn."]} for p in pairs]
    full = torch.tensor(score_items(model, processor, items))
    for buckets in (1, 2, 4):    # 6 responses, by length in groups of 6; 3+3; 2+2+1+1
        shared = score_items_shared_prefix(model, processor, items, length_buckets=buckets)
        if model.backbone.config.model_type == "qwen2_vl":
            assert shared is None             # 3-D positions: falls back to the full path
        else:
            assert torch.allclose(torch.tensor(shared), full, atol=1e-5), buckets


@pytest.mark.parametrize("mode", ["multimodal", "text_only"])
def test_shared_prompt_training_batch_gives_the_rewards_and_gradients_of_whole_sequences(
        backbone, tiny_pairs, mode):
    torch.manual_seed(0)
    model = RewardModel.from_base(backbone, mode=mode)
    config = TrainConfig.model_validate({"model": str(backbone), "output_dir": "unused",
                                         "data": {"train": ["unused"]}})
    if model.backbone.config.model_type == "qwen2_vl":
        assert not shares_prompt(config, model)      # 3-D positions: whole sequences
        return
    # text-only batches are whole sequences by default (a bare question does not pay for a
    # second forward call); the shared path below stays exact in both modes
    assert shares_prompt(config, model) == (mode == "multimodal")
    assert not shares_prompt(config.model_copy(update={"gradient_checkpointing": True}), model)
    processor = load_processor(backbone)
    set_right_padding(processor)
    pairs = _distinct_images(load_pairs(tiny_pairs[("vlfeedback", "test")]), 2)
    runs = []
    for share, buckets in ((False, 1), (True, 1), (True, 2)):
        batch = PairCollator(processor, mode, share_prompt=share)(pairs)
        batch.pop("ids")
        assert ("prefix_input_ids" in batch) == share
        model.zero_grad()
        rewards = model(**batch, sequences_per_image=2, length_buckets=buckets)
        torch.nn.functional.logsigmoid(rewards[:2] - rewards[2:]).sum().neg().backward()
        runs.append((rewards.detach(), {name: p.grad.clone() for name, p in
                                        model.named_parameters() if p.grad is not None}))
    (whole, whole_grads), *shared_runs = runs
    assert whole_grads
    for shared, shared_grads in shared_runs:     # one group, and chosen/rejected by length
        assert torch.allclose(shared, whole, atol=1e-5)
        assert shared_grads.keys() == whole_grads.keys()
        for name, grad in whole_grads.items():
            assert torch.allclose(shared_grads[name], grad, atol=1e-5, rtol=1e-4), name


@pytest.mark.parametrize("mode,share", [("multimodal", True), ("multimodal", False),
                                        ("text_only", False), ("blank_image", True)])
def test_cached_encodings_rebuild_the_batches_a_fresh_encoding_gives(backbone, tiny_vlm_dir,
                                                                      tiny_pairs, mode, share):
    processor = load_processor(backbone)
    set_right_padding(processor)
    pairs = load_pairs(tiny_pairs[("rlhfv", "train")])[:8]
    cached = PairCollator(processor, mode, share_prompt=share, cache_mib=64)
    fresh = PairCollator(processor, mode, share_prompt=share)
    for batch in (pairs[:4], pairs[4:]):          # the first epoch fills the cache
        cached(batch)
    # kept where the image tensors are one row per image (not Qwen2-VL's flattened patches,
    # nor InternVL's tiles of the 224 px blank image): else every batch is encoded
    one_row = all(value.shape[0] == 4 for key, value in fresh(pairs[:4]).items()
                  if key not in (*PADDED_KEYS, "ids"))
    assert cached.cache.usable == one_row
    assert len(cached.cache.entries) == (8 if one_row else 0)
    if backbone == tiny_vlm_dir or mode == "text_only":
        assert one_row
    for batch in ([pairs[5], pairs[0], pairs[7]], pairs[::-1], pairs[2:3]):   # reshuffled
        if cached.cache.usable:
            assert cached.cache.get(batch) is not None    # served from the cache
        got, want = cached(batch), fresh(batch)
        assert got.keys() == want.keys() and got["ids"] == want["ids"]
        for key in want.keys() - {"ids"}:
            assert got[key].dtype == want[key].dtype, key
            assert torch.equal(got[key], want[key]), key
