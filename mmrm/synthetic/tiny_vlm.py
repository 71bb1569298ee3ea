"""A tiny LLaVA-architecture VLM, built and pre-trained locally so that it already *sees*.

The result is an ordinary Hugging Face model directory (``config.json``, safetensors weights,
a ``tokenizers`` tokenizer trained here with a chat template, a ``LlavaProcessor``) that loads
with ``AutoModelForImageTextToText`` / ``AutoProcessor``, the same path as real VLMs.

Pre-training has two stages, as LLaVA's:

1. **Alignment** (vision tower and projector trained, language model frozen): every image
   token is regressed onto the sum of the word embeddings of the scene's attributes
   (``large`` + ``red`` + ``circle``), which puts the image into the words' own space.
2. **Instruction tuning** (all weights): next-token loss on the answers of captioning,
   attribute and yes/no questions about random scenes; the alignment loss as an auxiliary
   term; and image-text matching with hard negatives (captions with one to three wrong
   attributes) at two grains, through linear probes that are discarded afterwards: the
   sentence's last token says how much of the caption matches (BLIP's ITM, graded: the
   fraction of right attributes), and each attribute word says whether the image has it
   (phrase grounding).

Why all this for a toy: measured here, caption and question training alone teach a tiny
model to *name* a colour but not to *bind* image to text (yes/no questions stay at chance
for thousands of steps, or bind for some seeds and not others); with the word-level
matching signal and attention initialised as a similarity match (``attention_prior``:
``k_proj = q_proj``, with a large RoPE base so that position does not scramble it), yes/no
accuracy passes 0.9 within ~1,500 steps. Grading the sentence-level match (0-3 wrong
attributes instead of right-or-one-wrong) took held-out grounding from 0.953 (shape 0.858) to
1.000 (seeds 0 and 1), and a reward model trained on uninformative-cue data from 0.883 to
0.94-0.95 on the VLFeedback-like test pairs, half of which compare two wrong answers.

:func:`grounding_accuracy` measures, on held-out scenes, how often the model answers yes/no
attribute questions correctly, which is what the reward environments rely on.
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
from queue import Full, Queue
from pathlib import Path

import torch
from pydantic import Field
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from mmrm.config import Strict
from mmrm.data import conversation
from mmrm.outputs import write_atomic
from mmrm.synthetic.environments import (ANSWER_FRAMES, CUE_COUNTERPART, CUE_TEXT,
                                         POVID_PROMPTS, RLHFV_FRAME_SEVERAL, RLHFV_PROMPTS,
                                         RLHFV_PROMPTS_SEVERAL, VERBOSE_PADDING, VLF_PROMPTS)
from mmrm.synthetic.scenes import ATTRIBUTES, STYLES, VALUES, Scene, draw
from mmrm.synthetic.visual import LEVELS, LevelName, VisualCost, corrupt, visual_level

SPECIAL_TOKENS = ["<pad>", "<unk>", "<s>", "</s>", "<image>", "<|user|>", "<|assistant|>",
                  "<|end|>"]

#: Chat template of the tiny base: user turn (image, then text), assistant turn, each closed
#: by <|end|>. Content may be a string or a list of {"type": "image"|"text"} parts.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>{% else %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}")

QUESTION = {"colour": "Is the shape {value}?", "shape": "Is it a {value}?",
            "size": "Is the shape {value}?"}
#: Yes/no questions about a scene of several things: does some thing have the value?
QUESTION_ANY = {"colour": "Is any shape {value}?", "shape": "Is there a {value}?",
                "size": "Is any shape {value}?"}
#: Sentence frames of the image-text matching captions (deliberately not the benchmark's own).
ITM_FRAMES = ("{}.", "I see {}.", "This picture shows {}.", "A picture of {}.")
ATTRIBUTE_QUESTION = {"colour": "What colour is the shape?", "shape": "Which shape is shown?",
                      "size": "How big is the shape?"}
#: The same about several things; answered left to right (``red and blue``).
ATTRIBUTE_QUESTION_SEVERAL = {"colour": "What colours are the shapes?",
                              "shape": "Which shapes are shown?",
                              "size": "How big are the shapes?"}


class TinyVLMConfig(Strict):
    """Size and pre-training schedule of the tiny base."""

    seed: int = Field(0, description="Seed of weights and of the pre-training scenes.")
    visual: LevelName = Field("V0", description=f"Visual-cost level ({', '.join(LEVELS)}): "
                              "the scenes pre-training shows and whether it includes "
                              "sentence-level matching (mmrm.synthetic.visual).")
    image_size: int = Field(56, description="Input resolution (pixels, square).")
    patch_size: int = Field(8, description="Vision patch size: (56/8)^2 = 49 image tokens.")
    hidden_size: int = Field(64, description="Width of vision tower and language model.")
    vision_layers: int = Field(2, ge=1)
    text_layers: int = Field(2, ge=1)
    heads: int = Field(2, ge=1)
    align_steps: int = Field(600, ge=0, description="Stage 1 steps (LM frozen).")
    tune_steps: int = Field(2000, ge=0, description="Stage 2 steps (all weights).")
    batch_size: int = Field(32, ge=1)
    lr: float = Field(3e-3, gt=0)
    align_weight: float = Field(1.0, ge=0, description="Alignment loss weight in stage 2.")
    itm_weight: float = Field(1.0, ge=0, description="Image-text matching loss weight in "
                                                     "stage 2 (0 turns it off).")
    eval_scenes: int = Field(300, ge=1, description="Held-out scenes for grounding accuracy.")
    rope_theta: float = Field(1e6, gt=0, description="RoPE base of the language model.")
    attention_prior: bool = Field(True, description="Initialise each LM attention layer "
                                                     "with k_proj = q_proj, so that attention "
                                                     "starts as a similarity match.")
    eval_every: int = Field(0, ge=0, description="Log grounding accuracy every N stage-2 "
                                                 "steps (0: only at the end).")
    itm_graded: bool = Field(True, description="Sentence-level matching is graded: negatives "
                                               "get 1-3 wrong attributes and the probe "
                                               "predicts the fraction of right ones (else: "
                                               "one wrong attribute, match or not).")

    @property
    def level(self) -> VisualCost:
        return visual_level(self.visual)


# ------------------------------------------------------------------------------ tokenizer

def vocabulary_corpus() -> list[str]:
    """Every sentence shape the built-in data and the pre-training tasks use."""
    texts = list(POVID_PROMPTS) + list(RLHFV_PROMPTS.values()) + list(VLF_PROMPTS)
    openers = list(CUE_TEXT.values()) + list(CUE_COUNTERPART.values())
    texts += openers + [t.lower() for t in openers] + list(VERBOSE_PADDING) + ["yes", "no"]
    texts += list(ATTRIBUTE_QUESTION.values()) + ["Describe the image."]
    for attribute in ATTRIBUTES:
        for value in VALUES[attribute]:
            texts.append(QUESTION[attribute].format(value=value))
    for size in VALUES["size"]:
        for colour in VALUES["colour"]:
            for shape in VALUES["shape"]:
                for frame in ("The image shows a {}.", "It is a {}.", "There is a {}.",
                              "looking closely, there is a {}.", "a {}", *ITM_FRAMES):
                    texts.append(frame.format(f"{size} {colour} {shape}"))
    # scenes of several things (V2, V3): lists, fills, the questions about them
    texts += list(RLHFV_PROMPTS_SEVERAL.values()) + list(ATTRIBUTE_QUESTION_SEVERAL.values())
    texts += list(ANSWER_FRAMES.values()) + [RLHFV_FRAME_SEVERAL, RLHFV_PROMPTS["style"]]
    texts += [t[0].lower() + t[1:] for t in (*ANSWER_FRAMES.values(), RLHFV_FRAME_SEVERAL)]
    texts += [QUESTION_ANY[a].format(value=v) for a in ATTRIBUTES for v in VALUES[a]]
    texts += [f"a large red {style} circle, a small blue square and a green triangle"
              for style in STYLES]
    return texts


def build_tokenizer(corpus: list[str]):
    """A word-level tokenizer trained on ``corpus`` (each word and punctuation mark a token)."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                       pre_tokenizers.Punctuation()])
    tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    tokenizer.train_from_iterator(corpus, trainers.WordLevelTrainer(
        special_tokens=SPECIAL_TOKENS, min_frequency=1))
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>",
                                   unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   extra_special_tokens={"image_token": "<image>"})
    fast.chat_template = CHAT_TEMPLATE
    return fast


# ------------------------------------------------------------------------- model + processor

def build_processor(tokenizer, config: TinyVLMConfig):
    from transformers import LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": config.image_size},
        crop_size={"height": config.image_size, "width": config.image_size})
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer,
                          patch_size=config.patch_size, vision_feature_select_strategy="default",
                          num_additional_image_tokens=1, chat_template=CHAT_TEMPLATE)


def build_model(tokenizer, config: TinyVLMConfig):
    from transformers import (CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration)

    torch.manual_seed(config.seed)
    vision = CLIPVisionConfig(hidden_size=config.hidden_size,
                              intermediate_size=4 * config.hidden_size,
                              num_hidden_layers=config.vision_layers,
                              num_attention_heads=config.heads, image_size=config.image_size,
                              patch_size=config.patch_size)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=config.hidden_size,
                       intermediate_size=4 * config.hidden_size,
                       num_hidden_layers=config.text_layers, num_attention_heads=config.heads,
                       num_key_value_heads=config.heads, max_position_embeddings=512,
                       pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True,
                       rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta})
    llava = LlavaConfig(vision_config=vision, text_config=text,
                        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                        vision_feature_select_strategy="default", vision_feature_layer=-1,
                        projector_hidden_act="gelu", tie_word_embeddings=True)
    model = LlavaForConditionalGeneration(llava)
    if config.attention_prior:
        # q.k = (Wx).(Wy): a token attends to tokens that look like it, e.g. the word "red"
        # to image tokens aligned with the embedding of "red". Training moves on from here.
        with torch.no_grad():
            for layer in model.model.language_model.layers:
                layer.self_attn.k_proj.weight.copy_(layer.self_attn.q_proj.weight)
    return model


# ------------------------------------------------------------------------ pre-training data

def pretrain_scene(rng: random.Random, level: VisualCost, single: bool = False) -> Scene:
    """A pre-training scene of ``level``: one thing, or (for levels of several things) half
    of the time the level's own scene. Fills are drawn as the level draws them but never
    named: the base sees hollow things without hearing the word."""
    if level.things == 1 or single or rng.random() < 0.5:
        return Scene.random(rng, 1, level.hollow_rate)
    return Scene.random(rng, level.things, level.hollow_rate)


def task(scene: Scene, rng: random.Random, matched: tuple[str, ...] = ATTRIBUTES
         ) -> tuple[str, str]:
    """One (question, answer) about a scene: a caption, an attribute, or a yes/no check.

    About several things, the attribute answer lists their values left to right
    (``red and blue``) and the yes/no check asks whether *some* thing has a value. Yes/no
    checks are asked only about ``matched`` attributes; about the others the question asks
    to name the value instead.
    """
    kind = rng.random()
    if kind < 0.25:
        return "Describe the image.", scene.describe()
    attribute = rng.choice(ATTRIBUTES)
    if attribute not in matched:
        kind = min(kind, 0.49)      # name it, never check it
    if len(scene.things) > 1:
        if kind < 0.5:
            return ATTRIBUTE_QUESTION_SEVERAL[attribute], " and ".join(
                getattr(t, attribute) for t in scene.things)
        present = scene.present(attribute)
        absent = [v for v in VALUES[attribute] if v not in present]
        truth = rng.random() < 0.5 or not absent
        value = rng.choice(sorted(present)) if truth else rng.choice(absent)
        return QUESTION_ANY[attribute].format(value=value), "yes" if truth else "no"
    thing = scene.thing
    if kind < 0.5:
        return ATTRIBUTE_QUESTION[attribute], getattr(thing, attribute)
    truth = rng.random() < 0.5
    value = getattr(thing, attribute) if truth else \
        rng.choice([v for v in VALUES[attribute] if v != getattr(thing, attribute)])
    return QUESTION[attribute].format(value=value), "yes" if truth else "no"


def make_batch(processor, scenes: list[Scene], qa: list[tuple[str, str]], image_size: int):
    """Processor inputs plus ``labels`` on the answer tokens (and closing <|end|>) only."""
    tokenizer = processor.tokenizer
    texts = [processor.apply_chat_template(conversation(q, a, True), tokenize=False)
             for q, a in qa]
    batch = processor(text=texts, images=[draw(s, image_size) for s in scenes],
                      return_tensors="pt", padding=True)
    assistant = tokenizer.convert_tokens_to_ids("<|assistant|>")
    labels = batch["input_ids"].clone()
    after_assistant = (labels == assistant).long().cumsum(-1) > 0
    labels[~after_assistant | (labels == assistant) | (batch["attention_mask"] == 0)] = -100
    batch["labels"] = labels
    return batch


def attribute_targets(model, tokenizer, scenes: list[Scene],
                      attributes: tuple[str, ...] = ATTRIBUTES) -> torch.Tensor:
    """Sum of the word embeddings of each single-thing scene's ``attributes``: (singles,
    hidden), detached (scenes of several things have no one target per image token).
    Aligning image tokens with a word's embedding is itself a way to check that word, so a
    level that does not teach the base to check an attribute leaves it out."""
    ids = torch.tensor([[tokenizer.convert_tokens_to_ids(getattr(s.thing, a))
                         for a in attributes] for s in scenes if len(s.things) == 1])
    return model.get_input_embeddings()(ids).sum(1).detach()


def itm_batch(processor, rng: random.Random, batch_size: int, image_size: int,
              graded: bool = False, level: VisualCost | None = None):
    """Image-text matching examples in the chat format: a caption, right or with wrong
    attributes (hard negatives); ``match`` is 1 for the right ones. ``graded``: negatives
    have 1-3 wrong attributes and ``match`` is the fraction of right attributes (single
    things; several things count their wrong facts out of all). Wrong values are ones no
    thing has, so each attribute word's label is well defined (binding is never taught)."""
    level = level or VisualCost()
    scenes = [pretrain_scene(rng, level) for _ in range(batch_size)]
    captions, match = [], []
    for scene in scenes:
        right = rng.random() < 0.5
        plain = VisualCost(things=len(scene.things))     # attribute errors only
        if graded:
            wrong = 0 if right else rng.randint(1, len(ATTRIBUTES))
            shown = corrupt(scene, rng, wrong, plain)
            right = 1 - wrong / (len(ATTRIBUTES) * len(scene.things))
        else:
            shown = scene if right else corrupt(scene, rng, 1, plain)
        text = rng.choice(ITM_FRAMES).format(shown.describe())
        captions.append(processor.apply_chat_template(
            conversation("Describe the image.", text[0].upper() + text[1:], True),
            tokenize=False))
        match.append(float(right))
    batch = processor(text=captions, images=[draw(s, image_size) for s in scenes],
                      return_tensors="pt", padding=True)
    return batch, torch.tensor(match), word_grounding_labels(processor.tokenizer, batch,
                                                             scenes, level.matched)


def word_grounding_labels(tokenizer, batch, scenes: list[Scene],
                          matched: tuple[str, ...] = ATTRIBUTES) -> torch.Tensor:
    """Per token: 1 if it names a value of a ``matched`` attribute that some thing has, 0 if
    one no thing has, -1 else."""
    labels = torch.full_like(batch["input_ids"], -1)
    for attribute in matched:
        for value in VALUES[attribute]:
            token = tokenizer.convert_tokens_to_ids(value)
            present = torch.tensor([value in s.present(attribute) for s in scenes])
            at = batch["input_ids"] == token
            labels[at] = present[:, None].expand_as(at)[at].long()
    return labels


def itm_loss(model, probes: torch.nn.Linear, batch, match: torch.Tensor,
             word_labels: torch.Tensor, sentence: bool = True) -> torch.Tensor:
    """Image-text matching at two grains, with linear probes discarded after pre-training.

    * sentence (BLIP-style ITM, only with ``sentence``): the last real token's state says
      whether the caption agrees with the image;
    * word (phrase grounding): each attribute word's state says whether the image has that
      attribute (``word_labels``: 1 present, 0 absent, -1 not an attribute word). This dense
      signal is what teaches a word to look at the image.
    """
    hidden = model.model(**batch).last_hidden_state
    logits = probes(hidden)                                    # (batch, length, 2)
    loss = torch.zeros((), device=hidden.device)
    if sentence:
        last = batch["attention_mask"].sum(-1) - 1
        sentence_logits = logits[torch.arange(len(last)), last, 0]
        loss = loss + torch.nn.functional.binary_cross_entropy_with_logits(sentence_logits,
                                                                           match)
    words = word_labels >= 0
    if words.any():
        loss = loss + torch.nn.functional.binary_cross_entropy_with_logits(
            logits[..., 1][words], word_labels[words].float())
    return loss


def alignment_loss(model, pixel_values, targets) -> torch.Tensor:
    """Scale-free MSE of every image token onto its scene's attribute-embedding sum."""
    features = model.model.get_image_features(pixel_values=pixel_values, return_dict=True)
    tokens = torch.stack(list(features.pooler_output))            # (batch, tokens, hidden)
    target = targets[:, None, :].expand_as(tokens)
    return ((tokens - target) ** 2).mean() / (target ** 2).mean()


# ------------------------------------------------------------------------------- training

def pretrain(folder: Path, config: TinyVLMConfig | None = None, log=print,
             prefetch: bool = True) -> dict:
    """Build, pre-train and save the tiny base to ``folder``; returns the report it writes.

    ``prefetch`` makes each step's batches in a background thread while the model trains
    (:func:`prefetched`); the base is the same either way."""
    config = config or TinyVLMConfig()
    folder = Path(folder)
    tokenizer = build_tokenizer(vocabulary_corpus())
    processor = build_processor(tokenizer, config)
    model = build_model(tokenizer, config)
    rng = random.Random(f"pretrain/{config.seed}")
    report = {"config": config.model_dump()}
    start = time.perf_counter()

    # Stage 1: the language model (and its embeddings) frozen; vision tower + projector learn.
    for p in model.model.language_model.parameters():
        p.requires_grad_(False)
    model.get_input_embeddings().weight.requires_grad_(False)
    # A level whose base checks no word has no alignment target: its stage 1 aligns through
    # the frozen language model's next-token loss instead (LLaVA's own stage 1).
    report["align_loss"] = _run_stage(model, processor, tokenizer, config, rng,
                                      config.align_steps,
                                      lm_weight=0.0 if config.level.matched else 1.0,
                                      align_weight=1.0, log=log, name="align",
                                      prefetch=prefetch)
    for p in model.parameters():
        p.requires_grad_(True)
    report["tune_loss"] = _run_stage(model, processor, tokenizer, config, rng, config.tune_steps,
                                     lm_weight=1.0, align_weight=config.align_weight, log=log,
                                     name="tune", prefetch=prefetch)
    log(f"pre-trained in {time.perf_counter() - start:.0f} s")   # not in the report: DVC
                                                                # tracks it, byte for byte
    model.eval()
    report["grounding"] = grounding_accuracy(model, processor, config)
    log(f"grounding accuracy on {config.eval_scenes} held-out scenes: "
        f"{report['grounding']['overall']:.3f} {report['grounding']['by_attribute']}")
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    write_atomic(folder / "pretrain_report.json", json.dumps(report, indent=2) + "\n")
    return report


def stage_batches(processor, config: TinyVLMConfig, rng: random.Random, steps: int, *,
                  single: bool, itm: bool):
    """A stage's batches, drawn from ``rng`` alone (never from the model), so that they can be
    made ahead: per step the scenes, their question-answer batch and, with ``itm``, an
    image-text matching batch. Stage 1 (``single``) shows single things only: an image token
    has one alignment target there."""
    for _ in range(steps):
        scenes = [pretrain_scene(rng, config.level, single=single)
                  for _ in range(config.batch_size)]
        batch = make_batch(processor, scenes, [task(s, rng, config.level.matched)
                                               for s in scenes], config.image_size)
        matching = itm_batch(processor, rng, config.batch_size, config.image_size,
                             config.itm_graded, config.level) if itm else None
        yield scenes, batch, matching


def prefetched(items, depth: int = 2):
    """The items of an iterator, made up to ``depth`` ahead in a background thread (drawing
    and tokenizing overlap the model's step; the order, and so every batch, stays the same).
    The iterator is drained before this returns, so a next stage can go on with its rng; a
    consumer that stops early (an error in its step) stops the thread too."""
    queue: Queue = Queue(maxsize=depth)
    done, stop = object(), threading.Event()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                queue.put(entry, timeout=0.05)
                return True
            except Full:
                continue
        return False

    def produce():
        try:
            for item in items:
                if not put((item, None)):
                    return
        except BaseException as error:    # noqa: BLE001 - handed to the consumer
            put((None, error))
            return
        put((done, None))

    worker = threading.Thread(target=produce, daemon=True, name="pretrain-batches")
    worker.start()
    try:
        while True:
            item, error = queue.get()
            if error is not None:
                raise error
            if item is done:
                break
            yield item
    finally:
        stop.set()
        worker.join()


def _run_stage(model, processor, tokenizer, config, rng, steps, lm_weight, align_weight, log,
               name, prefetch=True) -> float:
    if steps == 0:
        return float("nan")
    params = [p for p in model.parameters() if p.requires_grad]
    probes = torch.nn.Linear(config.hidden_size, 2)
    use_itm = bool(lm_weight and config.itm_weight and config.level.matched)
    if use_itm:
        params += list(probes.parameters())
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup)
                                                 * 0.5 * (1 + math.cos(math.pi * s / steps)))
    model.train()
    running = None
    batches = stage_batches(processor, config, rng, steps, single=not lm_weight, itm=use_itm)
    for step, (scenes, batch, matching) in enumerate(prefetched(batches) if prefetch
                                                     else batches):
        loss = torch.zeros(())
        if lm_weight:
            loss = loss + lm_weight * model(**batch).loss
        if use_itm:
            loss = loss + config.itm_weight * itm_loss(model, probes, *matching,
                                                       config.level.sentence_matching)
        singles = torch.tensor([len(s.things) == 1 for s in scenes])
        if align_weight and singles.any() and config.level.matched:
            targets = attribute_targets(model, tokenizer, scenes, config.level.matched)
            loss = loss + align_weight * alignment_loss(model, batch["pixel_values"][singles],
                                                        targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        if (step + 1) % 50 == 0 or step + 1 == steps:
            log(f"{name} step {step + 1}/{steps} loss {running:.4f}")
        if lm_weight and config.eval_every and (step + 1) % config.eval_every == 0:
            model.eval()
            log(f"{name} step {step + 1}: grounding {grounding_accuracy(model, processor, config)}")
            model.train()
    return running


@torch.no_grad()
def grounding_accuracy(model, processor, config: TinyVLMConfig) -> dict:
    """Yes/no accuracy on held-out scenes: for each attribute, the true value and a wrong one.

    A question is answered correctly when the logit of the right word (``yes``/``no``) beats
    the other at the answer position. Single-thing scenes are asked about their thing
    (``by_attribute``); for a level of several things, as many scenes of the level are asked
    whether some thing has a value (``several``); ``overall`` counts every question.
    """
    rng = random.Random(f"grounding-eval/{config.seed}")
    questions = []          # (scene, question, truth, group)
    for scene in [Scene.random(rng) for _ in range(config.eval_scenes)]:
        for attribute in ATTRIBUTES:
            value = getattr(scene.thing, attribute)
            wrong = rng.choice([v for v in VALUES[attribute] if v != value])
            for asked, truth in ((value, True), (wrong, False)):
                questions.append((scene, QUESTION[attribute].format(value=asked), truth,
                                  attribute))
    level = config.level
    if level.things > 1:
        for _ in range(config.eval_scenes):
            scene = Scene.random(rng, level.things, level.hollow_rate)
            for attribute in ATTRIBUTES:
                present = scene.present(attribute)
                absent = [v for v in VALUES[attribute] if v not in present]
                asked = [(rng.choice(sorted(present)), True)] + \
                    ([(rng.choice(absent), False)] if absent else [])
                for value, truth in asked:
                    questions.append((scene, QUESTION_ANY[attribute].format(value=value), truth,
                                      "several"))
    correct = _answer_yes_no(model, processor, config, questions)
    groups = [a for a in (*ATTRIBUTES, "several") if any(q[3] == a for q in questions)]
    accuracy = {g: round(sum(c for c, q in zip(correct, questions) if q[3] == g)
                         / sum(q[3] == g for q in questions), 4) for g in groups}
    report = {"overall": round(sum(correct) / len(correct), 4),
              "by_attribute": {a: accuracy[a] for a in ATTRIBUTES},
              "questions": len(questions)}
    if "several" in accuracy:
        report["several"] = accuracy["several"]
    report["naming"] = naming_accuracy(model, processor, config)
    return report


@torch.no_grad()
def naming_accuracy(model, processor, config: TinyVLMConfig) -> dict[str, float]:
    """How often the base names each attribute of a held-out single thing right ("What colour
    is the shape?": the value with the highest logit among the attribute's values). A base
    that checks no word (V3) still sees: it names what is there."""
    tokenizer = processor.tokenizer
    rng = random.Random(f"naming-eval/{config.seed}")
    scenes = [Scene.random(rng) for _ in range(config.eval_scenes)]
    accuracy = {}
    for attribute in ATTRIBUTES:
        values = list(VALUES[attribute])
        ids = tokenizer.convert_tokens_to_ids(values)
        correct = 0
        for start in range(0, len(scenes), 192):
            chunk = scenes[start:start + 192]
            texts = [processor.apply_chat_template(
                conversation(ATTRIBUTE_QUESTION[attribute], None, True), tokenize=False,
                add_generation_prompt=True)] * len(chunk)
            tokenizer.padding_side = "left"
            batch = processor(text=texts, images=[draw(s, config.image_size) for s in chunk],
                              return_tensors="pt", padding=True)
            tokenizer.padding_side = "right"
            said = model(**batch).logits[:, -1, ids].argmax(-1).tolist()
            correct += sum(values[k] == getattr(s.thing, attribute) for k, s in zip(said, chunk))
        accuracy[attribute] = round(correct / len(scenes), 4)
    return accuracy


def _answer_yes_no(model, processor, config: TinyVLMConfig, questions: list) -> list[bool]:
    tokenizer = processor.tokenizer
    yes, no = tokenizer.convert_tokens_to_ids("yes"), tokenizer.convert_tokens_to_ids("no")
    correct = []
    for start in range(0, len(questions), 192):
        chunk = questions[start:start + 192]
        texts = [processor.apply_chat_template(conversation(q, None, True), tokenize=False,
                                               add_generation_prompt=True)
                 for _, q, _, _ in chunk]
        tokenizer.padding_side = "left"
        batch = processor(text=texts, images=[draw(s, config.image_size) for s, *_ in chunk],
                          return_tensors="pt", padding=True)
        tokenizer.padding_side = "right"
        logits = model(**batch).logits[:, -1]
        said_yes = (logits[:, yes] > logits[:, no]).tolist()
        correct += [answer == truth for answer, (_, _, truth, _) in zip(said_yes, chunk)]
    return correct


#: Randomly initialised LLaVA-style shapes for measuring speed and memory at the image sizes
#: users train (the tiny base's vocabulary and chat template; untrained weights do the same
#: work): ``llava-small`` 256 image tokens (224 px, 14 px patches), ``llava-576`` 576 (336
#: px), both 128 wide; ``1b`` a 1.0B-parameter model with 576 image tokens (for a GPU).
BENCHMARK_SHAPES = {
    "llava-small": TinyVLMConfig(image_size=224, patch_size=14, hidden_size=128,
                                 vision_layers=2, text_layers=2, heads=2),
    "llava-576": TinyVLMConfig(image_size=336, patch_size=14, hidden_size=128,
                               vision_layers=2, text_layers=2, heads=2),
    "1b": TinyVLMConfig(image_size=336, patch_size=14, hidden_size=2048, vision_layers=4,
                        text_layers=12, heads=16),
}


def random_base(shape: str, folder: Path) -> Path:
    """A randomly initialised LLaVA-style base of ``BENCHMARK_SHAPES[shape]`` in ``folder``
    (a Hugging Face model folder, as :func:`pretrain` writes, without the pre-training)."""
    config = BENCHMARK_SHAPES[shape].model_copy(update={"attention_prior": False})
    tokenizer = build_tokenizer(vocabulary_corpus())
    build_model(tokenizer, config).save_pretrained(folder)
    build_processor(tokenizer, config).save_pretrained(folder)
    return Path(folder)
