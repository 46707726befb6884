"""Instruction paraphrases for demonstrations and evaluation. Training and held-out evaluation use disjoint
sentence templates, so evaluation measures whether the policy grounds the object words rather than
memorising sentences. Every template keeps a noun the instruction parser (and so the geometric baseline)
can ground."""
from __future__ import annotations

import numpy as np

from dino_vla.sim.scene import catalogue_object

TRAIN_TEMPLATES = (
    "pick up the {}", "grasp the {}", "take the {}", "get the {}", "fetch the {}", "hand me the {}",
    "please pick up the {}", "pick up the {} please", "can you pick up the {}", "give me the {}",
    "bring me the {}", "bring the {}", "pick up the {} for me", "hold the {}", "pick up that {}",
    "could you take the {}",
)
# held out: never seen in training (the examples among them)
EVAL_TEMPLATES = (
    "grab the {}", "lift the {}", "pick the {} up", "would you grab the {} for me", "kindly lift the {}",
    "please grab the {}",
)
SPLITS = {"train": TRAIN_TEMPLATES, "eval": EVAL_TEMPLATES}


def paraphrase(name: str, rng: np.random.Generator, split: str = "train", colour_probability: float = 0.4
               ) -> tuple[str, dict]:
    """An instruction naming catalogue object `name` by one of its nouns, sometimes with its colour
    ("lift the red mug"), in a template of `split`; also what was drawn, for the episode record."""
    templates = SPLITS[split]
    kind = catalogue_object(name)
    template = int(rng.integers(len(templates)))
    noun = kind.synonyms[int(rng.integers(len(kind.synonyms)))]
    coloured = bool(rng.random() < colour_probability)
    phrase = f"{kind.colour} {noun}" if coloured else noun
    return templates[template].format(phrase), {"split": split, "template": template, "noun": noun,
                                                "coloured": coloured}
