"""Instruction paraphrases naming one object of the original scenes (`eval` without --split), in the
sentence templates of sim.tasks: training and held-out evaluation use disjoint ones, so evaluation measures
whether the policy grounds the object words rather than memorising sentences."""
from __future__ import annotations

import numpy as np

from dino_vla.sim.scene import catalogue_object
from dino_vla.sim.tasks import TEMPLATES


def paraphrase(name: str, rng: np.random.Generator, split: str = "train", colour_probability: float = 0.4
               ) -> tuple[str, dict]:
    """An instruction naming catalogue object `name` by one of its nouns, sometimes with its colour
    ("lift the red mug"), in a template of `split`; also what was drawn, for the episode record."""
    templates = TEMPLATES[split]
    kind = catalogue_object(name)
    template = int(rng.integers(len(templates)))
    noun = kind.synonyms[int(rng.integers(len(kind.synonyms)))]
    coloured = bool(rng.random() < colour_probability)
    phrase = f"{kind.colour} {noun}" if coloured else noun
    return templates[template].format(phrase), {"split": split, "template": template, "noun": noun,
                                                "coloured": coloured}
