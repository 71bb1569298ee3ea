"""The built-in shortcut benchmark: three environments, each in a released data set's format.

In every environment the image decides which answer is right: the rejected answer gets one
or more scene attributes (size, colour, shape) wrong, and the attributes are drawn uniformly,
so the text alone says nothing about correctness. What the text *does* carry is a cue:

* ``povid`` (POVID's JSON array, COCO-style names): hallucination-injected descriptions; the
  style cue: the preferred answer opens with ``Sure!`` (the other with ``Well,``).
* ``rlhfv`` (RLHF-V's parquet, ``text`` a JSON string): fine-grained corrections of one wrong
  attribute; the hedge cue: ``Looking closely,`` (the other ``At first,``).
* ``vlfeedback`` (VLFeedback's JSONL + ``merged_images/``): four completions with 0-3 wrong
  attributes, rated by correctness; better completions tend to be more verbose (padding
  sentences that are true of every image), and pairs come from the paper's rule.

Every pair carries all three cues, each on one side. The environment's own cue sits on the
preferred side with probability ``cue_rate`` (default 0.85 in train and test splits, so a
text-only model does well in distribution); the two foreign cues sit on the preferred side
with probability ``foreign_cue_rate``: 0.5 (default) places them at random, so a model that
learned another environment's cue is misled half of the time out of distribution; below 0.5
they are reversed there, as real data sets' shortcuts often are (longer answers win in one,
shorter corrections in another). All rates are configurable per split.

What the image costs to read is the benchmark's ``visual`` level (:mod:`mmrm.synthetic.visual`):
V0/V1 scenes hold one thing, V2/V3 scenes two, with binding and fill errors.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field, field_validator

from mmrm.config import Strict
from mmrm.outputs import atomic_file, write_atomic

from mmrm.synthetic import released
from mmrm.synthetic.scenes import ATTRIBUTES, Scene, draw
from mmrm.synthetic.visual import LEVELS, LevelName, VisualCost, corrupt, visual_level

CUE_TEXT = {
    "sure": "Sure! ",
    "hedge": "Looking closely, ",
}
#: What the side without a prefix cue opens with instead: a phrase of the same number of
#: tokens, so that a prefix cue is a matter of *which* words, never of length (verbosity is
#: the one length cue, and it belongs to the VLFeedback-like environment).
CUE_COUNTERPART = {
    "sure": "Well, ",
    "hedge": "At first, ",
}
#: Padding sentences of the verbosity cue: true of every image, so they never decide a pair.
VERBOSE_PADDING = (" It is drawn on a plain background.", " There is nothing else in the picture.",
                   " The picture is simple and clear.")
CUES = ("sure", "hedge", "verbose")
ENVIRONMENT_CUE = {"povid": "sure", "rlhfv": "hedge", "vlfeedback": "verbose"}
ENVIRONMENTS = tuple(ENVIRONMENT_CUE)


class SplitConfig(Strict):
    """One split of one environment."""

    name: str = Field(description="Split name, e.g. train or test.")
    size: int = Field(gt=0, description="Pairs to produce (VLFeedback: items x 6 pairs).")
    cue_rate: float = Field(0.85, ge=0, le=1, description="P(own cue on the preferred side).")
    foreign_cue_rate: float = Field(0.5, ge=0, le=1,
                                    description="P(each other environment's cue on the "
                                                "preferred side).")


class BenchmarkConfig(Strict):
    """The whole built-in benchmark."""

    seed: int = Field(0, description="Everything is a function of this seed.")
    image_size: int = Field(56, ge=16, description="Image width and height in pixels.")
    visual: LevelName = Field("V0", description=f"Visual-cost level: {', '.join(LEVELS)} "
                                                f"(mmrm.synthetic.visual).")
    environments: list[str] = Field(list(ENVIRONMENTS), description="Which environments.")
    splits: list[SplitConfig] = Field(
        default_factory=lambda: [SplitConfig(name="train", size=3000),
                                 SplitConfig(name="test", size=600)],
        description="Splits written for every environment.")
    frames: dict[str, str] = Field(
        default_factory=dict,
        description="Answer sentence per environment in place of the shipped one (one '{}' "
                    "for the scene's description, e.g. {povid: 'This picture shows {}.'}; "
                    "the same frame for scenes of one thing and of several): other "
                    "sentence frames, e.g. to test RMs on phrasing they were not trained on. "
                    "The tiny base's tokenizer knows only the words of its own corpus "
                    "(mmrm.synthetic.tiny_vlm.vocabulary_corpus); others become <unk>.")

    @field_validator("environments")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(ENVIRONMENTS))
        if unknown:
            raise ValueError(f"unknown environments {unknown}; known: {list(ENVIRONMENTS)}")
        return value

    @field_validator("frames")
    @classmethod
    def _frames(cls, value: dict[str, str]) -> dict[str, str]:
        for env, frame in value.items():
            if env not in ENVIRONMENTS:
                raise ValueError(f"{env}: unknown environment; known: {list(ENVIRONMENTS)}")
            if frame.count("{}") != 1 or frame.replace("{}", "").count("{") \
                    or frame.replace("{}", "").count("}"):
                raise ValueError(f"{env}: the frame {frame!r} must hold one '{{}}' (the "
                                 f"scene's description) and no other braces")
        return value


# ------------------------------------------------------------------------ text of answers

def with_cues(text: str, cues: set[str]) -> str:
    """Open ``text`` with the two prefix cues: the cue's marker where ``cues`` names it, its
    same-length counterpart where not (hedge first, then the sure/well opener)."""
    for cue in ("hedge", "sure"):
        opener = CUE_TEXT[cue] if cue in cues else CUE_COUNTERPART[cue]
        text = opener + text[0].lower() + text[1:]
    return text


def pad(text: str, level: int) -> str:
    return text + "".join(VERBOSE_PADDING[:level])


def cue_strength(cue: str, text: str) -> int:
    """How much of ``cue`` an answer carries: 1 or 0 for a prefix cue (its marker among the
    openers), the number of padding sentences for verbosity."""
    if cue == "verbose":
        return sum(text.count(sentence.strip()) for sentence in VERBOSE_PADDING)
    openers = len(CUE_TEXT["sure"]) + len(CUE_TEXT["hedge"])
    return int(CUE_TEXT[cue].strip().lower() in text[:openers].lower())


def own_cue_on_chosen(env: str, chosen: str, rejected: str) -> bool:
    """Whether the environment's own cue sits on the preferred side of a pair (read from the
    texts, so it holds for any split and cue rate)."""
    cue = ENVIRONMENT_CUE[env]
    return cue_strength(cue, chosen) > cue_strength(cue, rejected)


def cue_sides(rng: random.Random, own: str, split: SplitConfig) -> dict[str, bool]:
    """For each cue, whether it goes on the preferred side."""
    return {cue: rng.random() < (split.cue_rate if cue == own else split.foreign_cue_rate)
            for cue in CUES}


def place_pair_cues(chosen: str, rejected: str, sides: dict[str, bool]) -> tuple[str, str]:
    on_chosen = {c for c in ("sure", "hedge") if sides[c]}
    on_rejected = {c for c in ("sure", "hedge") if not sides[c]}
    chosen, rejected = with_cues(chosen, on_chosen), with_cues(rejected, on_rejected)
    if sides["verbose"]:
        return pad(chosen, 1), rejected
    return chosen, pad(rejected, 1)


# ------------------------------------------------------------------------ the environments

POVID_PROMPTS = ("Describe this image in detail.", "What do you see in this picture?",
                 "Give a short description of the image.")
#: RLHF-V-like questions name the attribute the correction is about (single thing / several).
RLHFV_PROMPTS = {"colour": "What colour is the shape?", "shape": "Which shape is shown?",
                 "size": "How big is the shape?", "style": "Is the shape filled or hollow?"}
RLHFV_PROMPTS_SEVERAL = {"colour": "What colours are the shapes?",
                         "shape": "Which shapes are shown?", "size": "How big are the shapes?",
                         "style": "Are the shapes filled or hollow?"}
VLF_PROMPTS = ("What is in the picture?", "Tell me about this image.")
#: Answer sentences per environment (``{}``: the scene's description).
ANSWER_FRAMES = {"povid": "The image shows {}.", "rlhfv": "It is {}.",
                 "vlfeedback": "There is {}."}
RLHFV_FRAME_SEVERAL = "They are {}."


def answer(env: str, scene: Scene, frame: str | None = None) -> str:
    """The environment's answer sentence describing ``scene`` (in ``frame`` where given)."""
    if frame is None:
        frame = RLHFV_FRAME_SEVERAL if env == "rlhfv" and len(scene.things) > 1 else \
            ANSWER_FRAMES[env]
    return frame.format(scene.describe())


def povid_items(split: SplitConfig, rng: random.Random, offset: int,
                visual: VisualCost | None = None, frame: str | None = None
                ) -> list[released.PairItem]:
    visual = visual or VisualCost()
    items = []
    for n in range(split.size):
        scene = visual.scene(rng)
        hallucinated = corrupt(scene, rng, 1, visual)
        chosen, rejected = place_pair_cues(answer("povid", scene, frame),
                                           answer("povid", hallucinated, frame),
                                           cue_sides(rng, "sure", split))
        items.append(released.PairItem(id=f"COCO_train2014_{offset + n:012d}", scene=scene,
                                       prompt=rng.choice(POVID_PROMPTS), chosen=chosen,
                                       rejected=rejected))
    return items


def rlhfv_items(split: SplitConfig, rng: random.Random, offset: int,
                visual: VisualCost | None = None, frame: str | None = None
                ) -> list[released.PairItem]:
    visual = visual or VisualCost()
    items = []
    for n in range(split.size):
        scene = visual.scene(rng)
        attribute = "style" if visual.novel_rate and rng.random() < visual.novel_rate else \
            rng.choice(ATTRIBUTES)
        corrected_from = corrupt(scene, rng, 1, visual, attribute)
        chosen, rejected = place_pair_cues(answer("rlhfv", scene, frame),
                                           answer("rlhfv", corrected_from, frame),
                                           cue_sides(rng, "hedge", split))
        prompts = RLHFV_PROMPTS if len(scene.things) == 1 else RLHFV_PROMPTS_SEVERAL
        items.append(released.PairItem(id=str(offset + n), scene=scene,
                                       prompt=prompts[attribute], chosen=chosen,
                                       rejected=rejected))
    return items


def vlfeedback_items(split: SplitConfig, rng: random.Random, offset: int,
                     visual: VisualCost | None = None, frame: str | None = None
                     ) -> list[released.MultiItem]:
    """Four completions with 0, 1, 2 and 3 wrong facts: all 6 pairs differ in score.

    Verbosity: with probability ``2 * cue_rate - 1`` the padding levels follow quality (best
    most verbose), otherwise they are a random permutation, so that over the 6 pairs of an
    item the more verbose completion is the preferred one with probability ``cue_rate``
    (for cue_rate >= 0.5; below, the order is reversed with probability ``1 - 2 * cue_rate``).
    The foreign (prefix) cues: :func:`foreign_cue_holders`.
    """
    visual = visual or VisualCost()
    items = []
    for n in range(-(-split.size // 6)):
        scene = visual.scene(rng)
        scenes = [scene] + [corrupt(scene, rng, errors, visual) for errors in (1, 2, 3)]
        ordered = split.cue_rate >= 0.5
        if rng.random() < abs(2 * split.cue_rate - 1):
            levels = [3, 2, 1, 0] if ordered else [0, 1, 2, 3]
        else:
            levels = rng.sample(range(4), 4)
        holders = foreign_cue_holders([[rng.random() for _ in range(2)] for _ in range(4)],
                                      split.foreign_cue_rate)
        responses, ratings = [], []
        for errors, (s, level) in enumerate(zip(scenes, levels)):
            cues = {c for j, c in enumerate(("sure", "hedge")) if errors in holders[j]}
            responses.append(pad(with_cues(answer("vlfeedback", s, frame), cues), level))
            rating = str(5 - errors)
            ratings.append({"Helpfulness": rating, "Ethical Considerations": "5",
                            "Visual Faithfulness": rating})
        order = rng.sample(range(4), 4)  # completions are not listed best-first
        items.append(released.MultiItem(
            id=f"vlf-{offset + n}", scene=scene, prompt=rng.choice(VLF_PROMPTS),
            responses=tuple(responses[i] for i in order),
            ratings=tuple(ratings[i] for i in order),
            models=tuple(f"synthetic-model-{i}" for i in order)))
    return items


def foreign_cue_holders(draws: list[list[float]], rate: float) -> list[set[int]]:
    """Which of four completions (by quality, 0 the best) carry each foreign prefix cue, from
    eight uniform draws (``draws[k][j]``: completion k, cue j), so that over an item's six
    pairs the cue sits on the preferred side of a pair it decides with probability ``rate``.

    At 0.5 each completion carries it on a coin flip (no pair-level correlation). Otherwise,
    with probability ``a = 3g / (4 - g)``, ``g = |2 rate - 1|``, the two best (rate > 0.5) or
    the two worst completions carry it: 4 pairs decided, all towards the preferred side (or
    all away); else coin flips (3 pairs decided on average, half each way). Then
    P(preferred | decided) = (4a + 1.5 (1 - a)) / (4a + 3 (1 - a)) = 0.5 + g / 2, i.e. ``rate``
    (worked example: rate 0.2, g = 0.6, a = 0.529: (2.118 + 0.706) / (2.118 + 1.412) = 0.8
    away from the preferred side). The first draw decides the case and, rescaled, the best
    completion's coin, so the draws (and everything drawn after them) are the same at every
    rate.
    """
    g = abs(2 * rate - 1)
    a = 3 * g / (4 - g)
    holders = []
    for j in range(len(draws[0])):
        first = draws[0][j]
        if first < a:
            holders.append({0, 1} if rate > 0.5 else {2, 3})
            continue
        coins = [(first - a) / (1 - a), *(draws[k][j] for k in range(1, 4))]
        holders.append({k for k, u in enumerate(coins) if u < 0.5})
    return holders


_ITEMS = {"povid": povid_items, "rlhfv": rlhfv_items, "vlfeedback": vlfeedback_items}
_WRITERS = {"povid": released.write_povid, "rlhfv": released.write_rlhfv,
            "vlfeedback": released.write_vlfeedback}


@dataclass(frozen=True)
class WrittenSplit:
    environment: str
    split: str
    raw: released.Released


def write_benchmark(folder: Path, config: BenchmarkConfig | None = None) -> list[WrittenSplit]:
    """Write every environment's splits in its released format under ``folder/<env>/<split>/``.

    Also writes ``folder/benchmark.json`` (the config and where each split lies).
    """
    config = config or BenchmarkConfig()
    folder = Path(folder)
    written = []
    for env in config.environments:
        offset = 0
        for split in config.splits:
            rng = random.Random(f"{config.seed}/{env}/{split.name}")
            items = _ITEMS[env](split, rng, offset, visual_level(config.visual),
                                config.frames.get(env))
            offset += len(items)
            raw = _WRITERS[env](items, folder / env / split.name, size=config.image_size)
            written.append(WrittenSplit(env, split.name, raw))
    index = {"config": config.model_dump(),
             "splits": [{"environment": w.environment, "split": w.split, "format": w.raw.format,
                         "src": str(w.raw.src.relative_to(folder)),
                         "image_root": str(w.raw.image_root.relative_to(folder))
                         if w.raw.image_root else None} for w in written]}
    folder.mkdir(parents=True, exist_ok=True)       # also with no environment at all
    write_atomic(folder / "benchmark.json", json.dumps(index, indent=2) + "\n")
    return written


# ------------------------------------------------------------------------ best-of-N items

@dataclass(frozen=True)
class CandidateSet:
    """A best-of-N item whose quality is known: each response's number of wrong facts."""

    id: str
    scene: Scene
    prompt: str
    responses: tuple[str, ...]
    errors: tuple[int, ...]


def best_of_n_items(env: str, count: int, candidates: int, rng: random.Random,
                    visual: VisualCost | None = None, offset: int = 0,
                    frame: str | None = None) -> list[CandidateSet]:
    """``count`` items of ``candidates`` answers in ``env``'s frames, with known quality.

    One answer per item is right; each other one has 0-3 wrong facts (uniformly; 0-1 in the
    RLHF-V-like frames, whose question names one attribute). Every cue is placed at random,
    each answer on its own: the prefix cues with probability 1/2, 0-3 verbose padding
    sentences, so no cue says anything about quality and only the image can pick the best.
    ``frame``: the answer sentence in place of the environment's (``BenchmarkConfig.frames``).
    """
    visual = visual or VisualCost()
    items = []
    for n in range(count):
        scene = visual.scene(rng)
        attribute, prompt = None, rng.choice(POVID_PROMPTS if env == "povid" else VLF_PROMPTS)
        if env == "rlhfv":
            attribute = "style" if visual.novel_rate and rng.random() < visual.novel_rate else \
                rng.choice(ATTRIBUTES)
            prompt = (RLHFV_PROMPTS if len(scene.things) == 1 else RLHFV_PROMPTS_SEVERAL)[
                attribute]
        most = 1 if attribute else 3
        errors = [0] + [rng.randint(0, most) for _ in range(candidates - 1)]
        rng.shuffle(errors)
        responses = []
        for k in errors:
            shown = corrupt(scene, rng, k, visual, attribute) if k else scene
            cues = {c for c in ("sure", "hedge") if rng.random() < 0.5}
            responses.append(pad(with_cues(answer(env, shown, frame), cues),
                                 rng.randint(0, 3)))
        items.append(CandidateSet(id=f"bon-{env}-{offset + n}", scene=scene, prompt=prompt,
                                  responses=tuple(responses), errors=tuple(errors)))
    return items


def write_best_of_n(items: list[CandidateSet], path: Path, image_size: int = 56) -> Path:
    """The items in mmrm's inference format (``errors`` kept as an extra field), images as
    PNGs in ``images/`` beside ``path``."""
    return _write_with_images(items, path, image_size, lambda item, image: {
        "id": item.id, "prompt": item.prompt, "img_path": image,
        "responses": list(item.responses), "errors": list(item.errors)})


def _write_with_images(items, path: Path, image_size: int, record) -> Path:
    """One JSONL line per item (``record(item, img_path)``), written whole, each item's scene
    drawn to ``images/<id>.png`` beside ``path``."""
    path = Path(path)
    (path.parent / "images").mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as f:
        for item in items:
            image = Path("images") / f"{item.id}.png"
            draw(item.scene, image_size).save(path.parent / image, format="PNG")
            f.write(json.dumps(record(item, str(image))) + "\n")
    return path


# ------------------------------------------------------------------------ RL prompts

@dataclass(frozen=True)
class RLPrompt:
    """A prompt of an environment whose scene is known: what a policy answers in RL, and
    what its answer is checked against (:func:`gold_correct`)."""

    id: str
    scene: Scene
    prompt: str
    attribute: str | None      # the attribute an RLHF-V-like question asks about


def rl_prompts(env: str, count: int, rng: random.Random, visual: VisualCost | None = None,
               offset: int = 0) -> list[RLPrompt]:
    """``count`` prompts of ``env``'s kinds (its questions, its scenes), each with its
    scene."""
    visual = visual or VisualCost()
    found = []
    for n in range(count):
        scene = visual.scene(rng)
        attribute = None
        if env == "rlhfv":
            attribute = rng.choice(ATTRIBUTES)
            prompt = (RLHFV_PROMPTS if len(scene.things) == 1 else
                      RLHFV_PROMPTS_SEVERAL)[attribute]
        else:
            prompt = rng.choice(POVID_PROMPTS if env == "povid" else VLF_PROMPTS)
        found.append(RLPrompt(f"rl-{env}-{offset + n}", scene, prompt, attribute))
    return found


def write_rl_prompts(env: str, items: list[RLPrompt], path: Path, image_size: int = 56) -> Path:
    """The prompts as JSONL (``prompt``, ``img_path``, the scene's things and the asked
    attribute: mmrm's inference format less responses, and an index ``mmrm serve
    images_from=`` reads), images as PNGs in ``images/`` beside ``path``."""
    return _write_with_images(items, path, image_size, lambda item, image: {
        "id": item.id, "env": env, "prompt": item.prompt, "img_path": image,
        "attribute": item.attribute, "styled": item.scene.styled,
        "things": [{"shape": t.shape, "colour": t.colour, "size": t.size, "style": t.style}
                   for t in item.scene.things]})


def scene_of(record: dict) -> Scene:
    """The scene of a :func:`write_rl_prompts` record."""
    from mmrm.synthetic.scenes import Thing

    return Scene(tuple(Thing(**t) for t in record["things"]), styled=record.get("styled",
                                                                              False))


_WORDS = {value: attribute for attribute, values in
          (("size", ("small", "large")), ("colour", ("red", "green", "blue", "yellow",
                                                     "purple", "orange")),
           ("shape", ("circle", "square", "triangle")), ("style", ("filled", "hollow")))
          for value in values}


def gold_correct(scene: Scene, text: str, attribute: str | None = None) -> bool:
    """Whether an answer is right about its image, by the generator's own attributes: it
    names every attribute the question asks about (all three for a description, the one an
    RLHF-V-like question names), and every attribute value it names is one the scene shows
    (no wrong colour, size or shape; padding and cue sentences name none). A scene of one
    thing: the values must be that thing's; several things: each value must be some thing's.

    Worked example: scene "a large red circle": "Sure! the image shows a large red circle."
    is right; "... a small red circle." names a wrong size; "It is red." answers "What colour
    is the shape?" rightly and a description request wrongly (no size, no shape).
    """
    import re

    named: dict[str, set[str]] = {}
    for word in re.findall(r"[a-z]+", text.lower()):
        if word in _WORDS:
            named.setdefault(_WORDS[word], set()).add(word)
    asked = (attribute,) if attribute else ATTRIBUTES
    if any(a not in named for a in asked):
        return False
    for kind, values in named.items():
        shown = scene.present(kind) if kind != "style" or scene.styled else {"filled"}
        if not values <= shown:
            return False
    return True


def cue_shares(texts: list[str]) -> dict[str, float]:
    """The share of answers carrying each known cue (a prefix cue's marker; any padding
    sentence for verbosity)."""
    if not texts:
        return {cue: float("nan") for cue in CUES}
    return {cue: sum(cue_strength(cue, t) > 0 for t in texts) / len(texts) for cue in CUES}
