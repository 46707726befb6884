"""Demonstrations from the simulator's scripted expert: seeded table-top scenes with 2-5 distractors; every
visible object becomes the target of one episode (a paraphrased instruction naming it), and the expert's
grasp is the geometric grasp of its true pose (TabletopSim.reference_grasp: TCP at the object's origin,
closing across its grasp side, opened 3 cm wider than it). Masks are the simulator's instance segmentation."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dino_vla.policy.dataset import DatasetWriter, RecordedFrame
from dino_vla.policy.language import paraphrase
from dino_vla.sim.mujoco_sim import RenderedFrame, TabletopSim
from dino_vla.sim.scene import BASE_FRAME, CATALOGUE, CatalogueObject, catalogue_object, random_scene

EXPERT = "sim reference_grasp (true object pose)"
MIN_DISTRACTORS, MAX_DISTRACTORS = 2, len(CATALOGUE) - 1


def grasp_symmetry(kind: CatalogueObject) -> int:
    """How many turns about z give the same grasp of this object: 0 for round bodies (any), 4 for a square
    box, else 2 (the parallel gripper's own symmetry; also for a round cup with a handle)."""
    body, extras = kind.parts[0], kind.parts[1:]
    if any(math.hypot(p.pos[0], p.pos[1]) > 1e-9 for p in extras):
        return 2
    if body.shape == "box":
        return 4 if math.isclose(body.size[0], body.size[1]) else 2
    return 0


def scene_layout(seed: int, min_distractors: int = MIN_DISTRACTORS, max_distractors: int = MAX_DISTRACTORS):
    """The seeded scene (random target and distractor count) and a generator for what else is drawn."""
    rng = np.random.default_rng([seed, 7])
    return random_scene(seed, n_distractors=int(rng.integers(min_distractors, max_distractors + 1))), rng


def class_agnostic(frame: RenderedFrame, sim: TabletopSim) -> tuple[list[str], np.ndarray]:
    """(names, (N, H, W) masks) of every visible object: what a class-agnostic segmenter would give."""
    detections, masks = sim.ground_truth_all(frame)
    return list(detections.phrases), masks.masks


def recorded_frame(frame: RenderedFrame, sim: TabletopSim, names: list[str], masks: np.ndarray) -> RecordedFrame:
    labels = np.zeros(frame.segmentation.shape, np.uint16)
    for k, mask in enumerate(masks):
        labels[mask] = k + 1
    return RecordedFrame(frame.rgb, frame.depth, labels, tuple(names), sim.intrinsics(), sim.camera_pose())


def record(out: str | Path, scenes: int, first_seed: int = 0, width: int = 640, height: int = 480,
           append: bool = False) -> dict:
    """Write `scenes` seeded scenes' demonstrations to `out`; returns counts."""
    counts = {"frames": 0, "episodes": 0}
    with DatasetWriter(out, source=EXPERT, base_frame=BASE_FRAME, append=append,
                       description=f"simulated table-top picks, seeds {first_seed}..{first_seed + scenes - 1}, "
                                   f"{MIN_DISTRACTORS}-{MAX_DISTRACTORS} distractors, training paraphrases") as writer:
        for seed in tqdm(range(first_seed, first_seed + scenes), desc="recording", unit="scene", file=sys.stderr):
            spec, rng = scene_layout(seed)
            with TabletopSim(spec, width=width, height=height) as sim:
                sim.settle()
                frame = sim.render()
                names, masks = class_agnostic(frame, sim)
                index = writer.add_frame(recorded_frame(frame, sim, names, masks))
                counts["frames"] += 1
                for k, name in enumerate(names):
                    instruction, drawn = paraphrase(name, rng, "train")
                    writer.add_episode(index, instruction, sim.reference_grasp(name), target_object=k,
                                       extra={"seed": seed, "target": name, "expert": EXPERT,
                                              "symmetry": grasp_symmetry(catalogue_object(name)), **drawn})
                    counts["episodes"] += 1
    return counts
