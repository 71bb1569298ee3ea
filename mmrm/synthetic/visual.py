"""The visual-cost axis: how expensive it is to check an answer against the image.

In real preference data the textual cue is cheap and the visual evidence is expensive (a
text-only RM comes within a point or two of the multimodal one in distribution). A level
sets the cost of the visual evidence through what the base was taught to *check* (it names
every attribute at every level) and through the scenes:

====  ======================================================================================
V0    one thing; the base is pre-trained on sentence-level image-text matching read at the
      last token, the very state a value head reads (the visual decision is a linear
      read-out the base already has).
V1    the V0 data; the base keeps word-level matching (each attribute word: is it in the
      image?), attribute QA and captioning, but no sentence-level matching.
V2    the V0 data; the base checks colour and size words, but shape words it only ever
      *names* (captions, "which shape is shown?"): a wrong shape is for the reward model to
      learn to see.
V3    the V0 data; the base checks no word against the image (no word-level matching, no
      yes/no questions); it captions and answers attribute questions, so it sees, but every
      check is the reward model's to learn.
V4    V1's base recipe on scenes of two things described left to right; half of the
      mistakes swap an attribute between them (binding: every word of the wrong answer is
      true of *some* thing, so word-level matching cannot see the mistake).
V5    V4, and things may be hollow; answers name each thing's fill, which the base saw but
      never heard named, and a third of the mistakes are on it.
====  ======================================================================================

The base is the same for data and measurements of a level: ``mmrm base pretrain`` and the
benchmark both take the level's name.
"""

from __future__ import annotations

import random
from typing import Annotated

from pydantic import AfterValidator, ConfigDict, Field

from mmrm.config import Strict

from mmrm.synthetic.scenes import ATTRIBUTES, VALUES, Scene


class VisualCost(Strict):
    """One level of the visual-cost axis (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)   # a named level never changes

    things: int = Field(1, ge=1, le=3, description="Things per benchmark scene.")
    binding_rate: float = Field(0.0, ge=0, le=1, description="P(an error swaps an attribute "
                                "between two things), where there are two.")
    hollow_rate: float = Field(0.0, ge=0, le=1, description="P(a thing is drawn hollow).")
    novel_rate: float = Field(0.0, ge=0, le=1, description="P(an error flips a thing's fill, "
                              "the attribute the base was not taught to name).")
    sentence_matching: bool = Field(False, description="The base is pre-trained on graded "
                                    "sentence-level image-text matching at the last token.")
    matched: tuple[str, ...] = Field(ATTRIBUTES, description="Attributes whose words the base "
                                     "is taught to check against the image (word-level "
                                     "matching, yes/no questions); the others it only names "
                                     "(captions, 'what colour is it?').")

    @property
    def styled(self) -> bool:
        """Whether answers name each thing's fill."""
        return self.novel_rate > 0

    def scene(self, rng: random.Random) -> Scene:
        return Scene.random(rng, self.things, self.hollow_rate, self.styled)


LEVELS: dict[str, VisualCost] = {
    "V0": VisualCost(sentence_matching=True),
    "V1": VisualCost(),
    "V2": VisualCost(matched=("size", "colour")),
    "V3": VisualCost(matched=()),
    "V4": VisualCost(things=2, binding_rate=0.5),
    "V5": VisualCost(things=2, binding_rate=0.5, hollow_rate=0.5, novel_rate=0.33),
}


def visual_level(name: str) -> VisualCost:
    """The named level; an unknown name raises with the known ones."""
    if name not in LEVELS:
        raise ValueError(f"unknown visual level {name!r}; known: {', '.join(LEVELS)}")
    return LEVELS[name]


def _known_level(name: str) -> str:
    visual_level(name)
    return name


#: A config field that holds a level's name, checked when the config is read.
LevelName = Annotated[str, AfterValidator(_known_level)]


def corrupt(scene: Scene, rng: random.Random, errors: int = 1, visual: VisualCost | None = None,
            attribute: str | None = None) -> Scene:
    """The scene with ``errors`` distinct mistakes in it: an answer describing the result
    makes exactly ``errors`` mistakes (each touches facts no other one touches, so none
    undoes another).

    A fact is one (thing, attribute). A mistake is, by ``visual``'s rates: a *swap* of one
    attribute's values between two things (a binding mistake; it makes two facts wrong), a
    *fill* flip (the novel attribute), or an *attribute* change to a value no thing has, where
    one exists (what word-level grounding can see). ``attribute`` restricts mistakes to one
    attribute (RLHF-V-like corrections name it).

    A single filled thing with neither swaps nor fills draws exactly what earlier releases
    drew (their data stay byte-identical).
    """
    visual = visual or VisualCost()
    if len(scene.things) == 1 and not visual.novel_rate:
        for name in ([attribute] * errors if attribute else rng.sample(ATTRIBUTES, errors)):
            value = rng.choice([v for v in VALUES[name] if v != getattr(scene.thing, name)])
            scene = scene.with_attribute(name, value)
        return scene
    touched: set[tuple[int, str]] = set()
    for _ in range(errors):
        scene = _one_error(scene, rng, visual, attribute, touched)
    return scene


def _one_error(scene: Scene, rng: random.Random, visual: VisualCost, attribute: str | None,
               touched: set[tuple[int, str]]) -> Scene:
    n = len(scene.things)
    free = [(i, a) for i in range(n) for a in ATTRIBUTES if (i, a) not in touched
            and (attribute is None or a == attribute)]
    fills = [i for i in range(n) if (i, "style") not in touched]
    if visual.novel_rate and fills and attribute in (None, "style") and \
            (attribute == "style" or rng.random() < visual.novel_rate):
        i = rng.choice(fills)
        touched.add((i, "style"))
        flipped = "hollow" if scene.things[i].style == "filled" else "filled"
        return scene.with_thing(i, style=flipped)
    swaps = [(i, j, a) for i in range(n) for j in range(i + 1, n) for a in ATTRIBUTES
             if (i, a) in free and (j, a) in free
             and getattr(scene.things[i], a) != getattr(scene.things[j], a)]
    if swaps and visual.binding_rate and rng.random() < visual.binding_rate:
        i, j, a = rng.choice(swaps)
        touched.update({(i, a), (j, a)})
        first, second = getattr(scene.things[i], a), getattr(scene.things[j], a)
        return scene.with_thing(i, **{a: second}).with_thing(j, **{a: first})
    if not free:
        raise ValueError(f"no fact left to make wrong in {scene.describe()!r}")
    i, a = rng.choice(free)
    touched.add((i, a))
    current = getattr(scene.things[i], a)
    absent = [v for v in VALUES[a] if v not in scene.present(a)]
    value = rng.choice(absent or [v for v in VALUES[a] if v != current])
    return scene.with_thing(i, **{a: value})
