"""Seeded table-top tasks where the words matter: a scene (random paint, lighting and table; duplicates of a
category) and an instruction whose answer is one instance, or nothing (absent). Used by `eval --split` and
by the demonstrations, so both draw the same kinds of task; evaluation and training differ in seeds, in
sentence templates and in held-out compositions (colour-category and relation-reference pairs that no
demonstration names).

Splits:
  paraphrase          categories once each, named by noun (sometimes with its colour) in varied wording
  attribute           2-3 of the target's category, told apart by colour or by a size word
  duplicate           the target's colour on other categories too and its category in other colours:
                      only colour and noun together name it
  recolour            no object in its usual colour, another one wearing the target's usual colour; named
                      by noun only
  relation            two alike instances of the target's category, told apart by a spatial relation
  absent              the named object is not on the table (its category, or its colour of that category)
  unseen-composition  attribute, duplicate and relation tasks naming only held-out compositions

Ground truth is decided from the true layout with wider margins than the pick's own rules
(geometry.grounding), so a task's answer is clear to a person looking at the scene.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dino_vla.sim.scene import (
    CAMERA_POSITION, CAMERA_TARGET, CATALOGUE, COLOURS, PlacedObject, SceneSpec, catalogue_object, layout, look_at,
    random_appearance)

SPLITS = ("paraphrase", "attribute", "duplicate", "recolour", "relation", "absent", "unseen-composition")
TRAINING_SPLITS = SPLITS[:-1]
CATEGORIES = tuple(o.name for o in CATALOGUE)
PALETTE = tuple(COLOURS)
MAX_OBJECTS = 8
CLEAR_M = 0.06          # a relation's answer is this much clearer than any alike instance's
SIZES = {"big": 1.2, "small": 0.8}

# Sentence templates: training and evaluation never share one.
TEMPLATES = {
    "train": ("pick up the {}", "grasp the {}", "take the {}", "get the {}", "fetch the {}", "hand me the {}",
              "please pick up the {}", "pick up the {} please", "can you pick up the {}", "give me the {}",
              "bring me the {}", "bring the {}", "pick up the {} for me", "hold the {}", "could you take the {}"),
    "eval": ("grab the {}", "lift the {}", "pick the {} up", "would you grab the {} for me", "kindly lift the {}",
             "please grab the {}", "collect the {}", "i need the {}"),
}
RELATION_WORDS = {
    "train": {"left_of": ("to the left of the {}",), "right_of": ("to the right of the {}",),
              "in_front_of": ("in front of the {}",), "behind": ("behind the {}",), "near": ("next to the {}",),
              "between": ("between the {} and the {}",), "leftmost": ("on the far left",),
              "rightmost": ("on the far right",), "nearest": ("nearest to the camera",),
              "farthest": ("farthest from the camera",)},
    "eval": {"left_of": ("left of the {}", "on the left side of the {}"),
             "right_of": ("right of the {}", "on the right side of the {}"),
             "in_front_of": ("in front of the {}",), "behind": ("behind the {}",),
             "near": ("beside the {}", "close to the {}"), "between": ("between the {} and the {}",),
             "leftmost": ("on the left",), "rightmost": ("on the right",), "nearest": ("closest to the camera",),
             "farthest": ("furthest from the camera",)},
}
RELATIONS = tuple(RELATION_WORDS["train"])


def held_out_colour(colour: str, category: str) -> bool:
    """Colour-category pairs no demonstration names (about one in five)."""
    return (PALETTE.index(colour) + 2 * CATEGORIES.index(category)) % 5 == 0


def held_out_reference(relation: str, category: str) -> bool:
    """Relation-reference pairs no demonstration names (about one in five)."""
    return (RELATIONS.index(relation) + CATEGORIES.index(category)) % 5 == 0


@dataclass(frozen=True)
class Task:
    split: str
    spec: SceneSpec            # spec.target: the instance meant, None when it is absent
    instruction: str
    about: dict                # what was drawn (phrase, relation, ...), for the record

    @property
    def target(self) -> str | None:
        return self.spec.target


def draw_task(split: str, seed: int, wording: str = "eval") -> Task:
    """The task of `split` drawn from `seed` alone; `wording` "train" or "eval" picks the sentence templates,
    and "train" never names a held-out composition."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; splits are {', '.join(SPLITS)}")
    if wording not in TEMPLATES:
        raise ValueError(f"wording must be 'train' or 'eval', got {wording!r}")
    if split == "unseen-composition" and wording == "train":
        raise ValueError("unseen-composition tasks name held-out compositions: they are never training tasks")
    rng = np.random.default_rng([seed, SPLITS.index(split), 11])
    for _ in range(200):
        task = _DRAW[split](rng, seed, wording)
        if task is not None:
            return task
    raise RuntimeError(f"no {split} task found for seed {seed}")


# ---- drawing ----------------------------------------------------------------------------------------------

def _pick(rng: np.random.Generator, options):
    options = list(options)
    return options[int(rng.integers(len(options)))]


def noun_for(rng: np.random.Generator, category: str) -> str:
    """One of the nouns a category answers to ("cup" or "mug"), drawn from rng."""
    return _pick(rng, catalogue_object(category).synonyms)


def _allowed(colour: str, category: str, wording: str, unseen: bool) -> bool:
    held = held_out_colour(colour, category)
    return held if unseen else not (wording == "train" and held)


def _others(rng: np.random.Generator, exclude: set[str], count: int) -> list[PlacedObject]:
    names = [c for c in CATEGORIES if c not in exclude]
    chosen = [names[i] for i in rng.permutation(len(names))[:count]]
    return [PlacedObject(c, 0.0, 0.0, 0.0, colour=_pick(rng, PALETTE)) for c in chosen]


def _labelled(objects: list[PlacedObject]) -> list[PlacedObject]:
    """Unique instance names: a category's first instance keeps its name, the next are "<category>_2", ..."""
    seen: dict[str, int] = {}
    out = []
    for o in objects:
        seen[o.category] = seen.get(o.category, 0) + 1
        out.append(PlacedObject(o.category, o.x, o.y, o.yaw, o.colour, o.scale,
                                o.category if seen[o.category] == 1 else f"{o.category}_{seen[o.category]}"))
    return out


def _scene(rng: np.random.Generator, seed: int, objects: list[PlacedObject], target_index: int | None
           ) -> SceneSpec:
    """The objects placed in a shuffled order (so the target is not always first), with a random look."""
    labelled = _labelled(objects)
    target = labelled[target_index].name if target_index is not None else None
    order = rng.permutation(len(labelled))
    placed = layout([labelled[i] for i in order], rng, f"(task seed {seed})")
    return SceneSpec(placed, target, seed, random_appearance(rng))


def sentence(rng: np.random.Generator, wording: str, phrase: str, relation: str = "") -> str:
    return _pick(rng, TEMPLATES[wording]).format(f"{phrase} {relation}".strip())


def _paraphrase(rng, seed, wording, unseen=False):
    objects = _others(rng, set(), int(rng.integers(4, MAX_OBJECTS)))
    target = int(rng.integers(len(objects)))
    t = objects[target]
    noun = noun_for(rng, t.category)
    coloured = bool(rng.random() < 0.4) and _allowed(t.kind.colour, t.category, wording, False)
    phrase = f"{t.kind.colour} {noun}" if coloured else noun
    spec = _scene(rng, seed, objects, target)
    return Task("paraphrase", spec, sentence(rng, wording, phrase), {"phrase": phrase})


def _attribute(rng, seed, wording, unseen=False):
    category = _pick(rng, CATEGORIES)
    copies = int(rng.integers(2, 4))
    if rng.random() < 0.5:      # by colour
        colours = [PALETTE[i] for i in rng.permutation(len(PALETTE))[:copies]]
        alike = [PlacedObject(category, 0, 0, 0, colour=c) for c in colours]
        target = int(rng.integers(copies))
        if not _allowed(colours[target], category, wording, unseen):
            return None
        phrase_words = [colours[target]]
    else:                       # by size: same paint, one clearly bigger or smaller
        colour = _pick(rng, PALETTE)
        if not _allowed(colour, category, wording, unseen):
            return None
        size = _pick(rng, SIZES)
        scales = [SIZES[size]] + [1.0 if size == "big" else 1.15] * (copies - 1)
        alike = [PlacedObject(category, 0, 0, 0, colour=colour, scale=s) for s in scales]
        target = 0
        phrase_words = [size] + ([colour] if unseen or rng.random() < 0.3 else [])
    noun = noun_for(rng, category)
    phrase = " ".join(phrase_words + [noun])
    objects = alike + _others(rng, {category}, int(rng.integers(1, MAX_OBJECTS - copies + 1)))
    return Task("unseen-composition" if unseen else "attribute", _scene(rng, seed, objects, target),
                sentence(rng, wording, phrase), {"phrase": phrase, "kind": "colour" if len(phrase_words) == 1
                                                  and phrase_words[0] in COLOURS else "size"})


def _duplicate(rng, seed, wording, unseen=False):
    category = _pick(rng, CATEGORIES)
    colour = _pick(rng, PALETTE)
    if not _allowed(colour, category, wording, unseen):
        return None
    other_colours = [c for c in PALETTE if c != colour]
    alike = [PlacedObject(category, 0, 0, 0, colour=colour)] + [
        PlacedObject(category, 0, 0, 0, colour=c)
        for c in (other_colours[i] for i in rng.permutation(len(other_colours))[:int(rng.integers(1, 3))])]
    same_paint = [PlacedObject(o.category, 0, 0, 0, colour=colour)
                  for o in _others(rng, {category}, int(rng.integers(1, 3)))]
    rest = _others(rng, {category} | {o.category for o in same_paint}, int(rng.integers(0, 3)))
    objects = (alike + same_paint + rest)[:MAX_OBJECTS]
    noun = noun_for(rng, category)
    phrase = f"{colour} {noun}"
    return Task("unseen-composition" if unseen else "duplicate", _scene(rng, seed, objects, 0),
                sentence(rng, wording, phrase), {"phrase": phrase})


def _recolour(rng, seed, wording, unseen=False):
    objects = _others(rng, set(), int(rng.integers(4, MAX_OBJECTS)))
    target = int(rng.integers(len(objects)))
    usual = catalogue_object(objects[target].category).colour
    painted = []
    for i, o in enumerate(objects):
        choices = [c for c in PALETTE if c != catalogue_object(o.category).colour]
        painted.append(PlacedObject(o.category, 0, 0, 0, colour=_pick(rng, choices)))
    wearer = _pick(rng, [i for i in range(len(objects)) if i != target
                         and catalogue_object(objects[i].category).colour != usual])
    painted[wearer] = PlacedObject(painted[wearer].category, 0, 0, 0, colour=usual)
    noun = noun_for(rng, objects[target].category)
    return Task("recolour", _scene(rng, seed, painted, target), sentence(rng, wording, noun),
                {"phrase": noun, "wearing_its_usual_colour": painted[wearer].category})


def _absent(rng, seed, wording, unseen=False):
    objects = _others(rng, set(), int(rng.integers(3, MAX_OBJECTS)))
    present = {o.category for o in objects}
    if rng.random() < 0.5 or len(present) == len(CATEGORIES):
        # a category that is there, in a colour none of its instances has
        o = _pick(rng, objects)
        painted = {p.kind.colour for p in objects if p.category == o.category}
        colour = _pick(rng, [c for c in PALETTE if c not in painted])
        phrase = f"{colour} {noun_for(rng, o.category)}"
    else:
        phrase = noun_for(rng, _pick(rng, [c for c in CATEGORIES if c not in present]))
    return Task("absent", _scene(rng, seed, objects, None), sentence(rng, wording, phrase), {"phrase": phrase})


def _needs(relation: str) -> int:
    """How many reference objects a relation names."""
    return 2 if relation == "between" else 1 if relation in ("left_of", "right_of", "in_front_of", "behind",
                                                             "near") else 0


def _relation(rng, seed, wording, unseen=False):
    # the relation first, then layouts until one answers it: drawing both together would under-represent the
    # relations few layouts answer (near, between)
    relation = _pick(rng, [r for r in RELATIONS if _needs(r)] if unseen else RELATIONS)
    for _ in range(50):
        task = _relation_task(rng, seed, wording, unseen, relation)
        if task is not None:
            return task
    return None


def _relation_task(rng, seed, wording, unseen, relation):
    category = _pick(rng, CATEGORIES)
    colour = _pick(rng, PALETTE)
    ref_categories = [c for c in CATEGORIES if c != category]
    refs = [ref_categories[i] for i in rng.permutation(len(ref_categories))[:_needs(relation)]]
    if not all(_reference_allowed(relation, r, wording, unseen) for r in refs):
        return None
    alike = [PlacedObject(category, 0, 0, 0, colour=colour) for _ in range(2)]
    references = [PlacedObject(r, 0, 0, 0, colour=_pick(rng, PALETTE)) for r in refs]
    rest = _others(rng, {category, *refs}, int(rng.integers(0, 3)))
    spec = _scene(rng, seed, alike + references + rest, None)
    instances = [o for o in spec.objects if o.category == category]
    ref_objects = sorted((o for o in spec.objects if o.category in refs), key=lambda o: refs.index(o.category))
    answer = _answer(relation, instances, ref_objects)
    if answer is None:
        return None
    noun = noun_for(rng, category)
    ref_phrases = [noun_for(rng, r.category) for r in ref_objects]
    return Task("unseen-composition" if unseen else "relation", SceneSpec(spec.objects, answer.name, seed,
                                                                          spec.appearance),
                sentence(rng, wording, noun, relation_words(rng, wording, relation, ref_phrases)),
                {"phrase": noun, "relation": relation, "references": ref_phrases})


def relation_words(rng: np.random.Generator, wording: str, relation: str, references: list[str]) -> str:
    return _pick(rng, RELATION_WORDS[wording][relation]).format(*references)


def more_relations(task: Task, rng: np.random.Generator, wording: str = "train") -> list[tuple[str, str]]:
    """(instruction, instance meant) of the other relations a relation task's scene answers clearly: the same
    frame teaches several relations at no extra rendering."""
    if "relation" not in task.about:
        return []
    target = task.spec.get(task.target)
    instances = [o for o in task.spec.objects if o.category == target.category]
    others = [o for o in task.spec.objects if o.category != target.category]
    out = []
    for relation in RELATIONS:
        if relation == task.about["relation"]:
            continue
        refs = [others[i] for i in rng.permutation(len(others))[:_needs(relation)]]
        if len(refs) < _needs(relation) or not all(_reference_allowed(relation, r.category, wording, False)
                                                   for r in refs):
            continue
        if len({r.category for r in refs}) < len(refs) or any(
                sum(o.category == r.category for o in others) > 1 for r in refs):
            continue      # a reference must be the only one of its kind
        answer = _answer(relation, instances, refs)
        if answer is not None:
            phrases = [noun_for(rng, r.category) for r in refs]
            noun = noun_for(rng, target.category)
            out.append((sentence(rng, wording, noun, relation_words(rng, wording, relation, phrases)), answer.name))
    return out


def _reference_allowed(relation: str, category: str, wording: str, unseen: bool) -> bool:
    held = held_out_reference(relation, category)
    return held if unseen else not (wording == "train" and held)


def _unseen(rng, seed, wording, unseen=True):
    return _pick(rng, (_attribute, _duplicate, _relation))(rng, seed, wording, unseen=True)


_DRAW = {"paraphrase": _paraphrase, "attribute": _attribute, "duplicate": _duplicate, "recolour": _recolour,
         "relation": _relation, "absent": _absent, "unseen-composition": _unseen}


# ---- ground truth of relations ------------------------------------------------------------------------------

_VIEW = look_at(CAMERA_POSITION, CAMERA_TARGET)
RIGHT = np.array([*_VIEW[:2, 0], 0.0]) / np.linalg.norm(_VIEW[:2, 0])
FORWARD = np.array([*_VIEW[:2, 2], 0.0]) / np.linalg.norm(_VIEW[:2, 2])


def _answer(relation: str, instances: list[PlacedObject], refs: list[PlacedObject]) -> PlacedObject | None:
    """The one instance the relation picks out with CLEAR_M to spare over the other, else None."""
    def xy(o):
        return np.array([o.x, o.y, 0.0])

    if relation in ("leftmost", "rightmost"):
        sign = 1 if relation == "leftmost" else -1
        values = [sign * float(xy(o) @ RIGHT) for o in instances]
    elif relation in ("nearest", "farthest"):
        sign = 1 if relation == "nearest" else -1
        camera = np.asarray(CAMERA_POSITION)
        values = [sign * float(np.linalg.norm((o.position - camera)[:2])) for o in instances]
    elif relation == "near":
        values = [float(np.linalg.norm(xy(o) - xy(refs[0]))) for o in instances]
        if min(values) > 0.6 * max(values):
            return None
    elif relation == "between":
        p, q = xy(refs[0])[:2], xy(refs[1])[:2]
        span = q - p
        length = float(np.linalg.norm(span))
        inside = []
        for o in instances:
            t = float((xy(o)[:2] - p) @ span) / length ** 2
            d = xy(o)[:2] - p
            off = abs(float(span[0] * d[1] - span[1] * d[0])) / length
            inside.append(0.15 < t < 0.85 and off < 0.25 * length)
        if sum(inside) != 1:
            return None
        return instances[inside.index(True)]
    else:
        axis, sign = {"left_of": (RIGHT, -1), "right_of": (RIGHT, 1), "in_front_of": (FORWARD, -1),
                      "behind": (FORWARD, 1)}[relation]
        offsets = [sign * float((xy(o) - xy(refs[0])) @ axis) for o in instances]
        fits = [o > CLEAR_M for o in offsets]
        if sum(fits) != 1 or max(o for o, f in zip(offsets, fits) if not f) > 0.0:
            return None
        return instances[fits.index(True)]
    best = int(np.argmin(values))
    if relation != "near" and abs(values[0] - values[1]) < CLEAR_M:
        return None
    return instances[best]
