"""The colour-blind probe of a features backbone (`dino-vla probe-backbone`): k-NN classification of object
crops by category where colour says nothing about the category.

On the simulator's objects colour separates many categories (issue 12 measured 96 % k-NN accuracy for a
random network on crops in their usual colours; the tiny random DINOv2 here reaches 40 %), so a probe that lets
colour through cannot show whether training the backbone taught it shape. Here every scene paints all its
objects one colour, drawn per scene from the palette, so each category appears in every colour and only shape
tells it. Scenes are fresh simulator renders (seeds of their
own, random lighting and table); crops of the first `reference_fraction` of the scenes are the k-NN's
memory, those of the others its queries, so no query object was seen in its own scene."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from dino_vla.adaptation.settings import PROBE_PAINTS
from dino_vla.models.features import DinoFeatures
from dino_vla.models.segmenter import crop_window
from dino_vla.sim.scene import COLOURS, PlacedObject, SceneSpec, layout, random_appearance
from dino_vla.sim.tasks import CATEGORIES
from dino_vla.types import tight_box



@dataclass(frozen=True)
class ObjectCrops:
    images: list[np.ndarray]      # square RGB crops around each visible object
    categories: list[str]
    scenes: list[int]             # the seed of the scene each crop comes from


def render_object_crops(scenes: int, first_seed: int = 7_000_000, paint: str = "one", per_scene: int = 5,
                        context: float = 2.0, min_pixels: int = 200) -> ObjectCrops:
    """Crops (a square `context` times the object's box) of every object showing at least min_pixels pixels,
    in `scenes` simulator scenes of `per_scene` different categories each."""
    from dino_vla.sim.mujoco_sim import TabletopSim   # MuJoCo only when rendering

    if paint not in PROBE_PAINTS:
        raise ValueError(f"paint must be one of {PROBE_PAINTS}, got {paint!r}")
    if scenes < 2 or not 1 <= per_scene <= len(CATEGORIES):
        raise ValueError(f"scenes must be >= 2 and per_scene in [1, {len(CATEGORIES)}]")
    images, categories, seeds = [], [], []
    palette = tuple(COLOURS)
    for seed in range(first_seed, first_seed + scenes):
        rng = np.random.default_rng([seed, 12])
        drawn = palette[int(rng.integers(len(palette)))]    # drawn either way: both paints share their layouts
        colour = drawn if paint == "one" else None
        chosen = [CATEGORIES[i] for i in rng.permutation(len(CATEGORIES))[:per_scene]]
        spec = SceneSpec(layout([PlacedObject(c, 0.0, 0.0, 0.0, colour=colour) for c in chosen], rng),
                         seed=seed, appearance=random_appearance(rng))
        with TabletopSim(spec) as sim:
            frame = sim.render()
            for name, label in sim.segmentation_ids.items():
                mask = frame.segmentation == label
                if mask.sum() < min_pixels:
                    continue
                x0, y0, x1, y1 = crop_window(tight_box(mask), mask.shape, context)
                images.append(np.ascontiguousarray(frame.rgb[y0:y1, x0:x1]))
                categories.append(spec.get(name).category)
                seeds.append(seed)
    return ObjectCrops(images, categories, seeds)


@dataclass(frozen=True)
class ProbeScores:
    references: int
    queries: int
    cls_accuracy: float           # k-NN on the class token
    patch_accuracy: float         # k-NN on the mean of the patch tokens
    chance: float                 # the most frequent query category's share


def embed(features: DinoFeatures, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(class tokens, mean patch tokens) of each image, as the features node computes them."""
    out = [features.extract(image) for image in images]
    return (np.stack([f.cls for f in out]), np.stack([f.patch_tokens.reshape(-1, f.patch_tokens.shape[-1]).mean(0)
                                                     for f in out]))


def knn_accuracy(references: np.ndarray, reference_labels: list[str], queries: np.ndarray, query_labels: list[str],
                 k: int = 20, temperature: float = 0.07) -> float:
    """DINO's weighted k-NN classifier: the k most cosine-similar references vote with weight exp(sim / T)."""
    names = sorted(set(reference_labels) | set(query_labels))
    ref = F.normalize(torch.as_tensor(references, dtype=torch.float32), dim=-1)
    qry = F.normalize(torch.as_tensor(queries, dtype=torch.float32), dim=-1)
    similarity, index = (qry @ ref.t()).topk(min(k, len(ref)), dim=1)
    ref_ids = torch.tensor([names.index(n) for n in reference_labels])
    votes = torch.zeros(len(qry), len(names)).scatter_add_(1, ref_ids[index], torch.exp(similarity / temperature))
    predicted = votes.argmax(1)
    truth = torch.tensor([names.index(n) for n in query_labels])
    return float((predicted == truth).float().mean())


def probe(features: DinoFeatures, crops: ObjectCrops, reference_fraction: float = 2 / 3, k: int = 20) -> ProbeScores:
    """k-NN accuracy by category of the query scenes' crops against the reference scenes' crops."""
    seeds = sorted(set(crops.scenes))
    cut = seeds[max(1, min(len(seeds) - 1, round(reference_fraction * len(seeds))))]
    is_ref = np.array([s < cut for s in crops.scenes])
    cls, patch = embed(features, crops.images)
    labels = np.array(crops.categories)
    ref_labels, query_labels = labels[is_ref].tolist(), labels[~is_ref].tolist()
    _, counts = np.unique(query_labels, return_counts=True)
    return ProbeScores(int(is_ref.sum()), int((~is_ref).sum()),
                       knn_accuracy(cls[is_ref], ref_labels, cls[~is_ref], query_labels, k),
                       knn_accuracy(patch[is_ref], ref_labels, patch[~is_ref], query_labels, k),
                       float(counts.max() / counts.sum()))
