"""Demonstrations from the simulator's scripted expert on the seeded tasks of sim.tasks (training wording,
never a held-out composition): every scene is one task of a training split in turn (paraphrase, attribute,
duplicate, recolour, relation, absent), plus instructions the same frame answers without rendering again: up
to MORE_RELATIONS other relations a relation scene answers clearly, up to EXTRA_NAMED objects named by their
noun where the category is alone or by colour and noun where that pair is alone, and two objects that are not
there (a missing category; a present category in a colour it does not wear): the demonstrated action is none.
The expert's grasp is the geometric grasp of the true pose (TabletopSim.reference_grasp: TCP at the object's
origin, closing across its grasp side, opened 3 cm wider than it). Masks are the simulator's instance segmentation."""
from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dino_vla.dataset.format import DatasetWriter, RecordedFrame
from dino_vla.sim.mujoco_sim import RenderedFrame, TabletopSim
from dino_vla.sim.scene import BASE_FRAME, CATALOGUE
from dino_vla.sim.tasks import (PALETTE, TRAINING_SPLITS, Task, draw_task, held_out_colour, more_relations, noun_for,
                                sentence)
from dino_vla.types import Masks

EXPERT = "sim reference_grasp (true object pose)"
EXTRA_NAMED = 3
MORE_RELATIONS = 3   # other relations a relation scene answers, taught on the same frame


def recorded_frame(frame: RenderedFrame, sim: TabletopSim, names: list[str], masks: Masks) -> RecordedFrame:
    return RecordedFrame(frame.rgb, frame.depth, masks.label_image(), tuple(names), sim.intrinsics(),
                         sim.camera_pose())


def _extra_instructions(task: Task, visible: list[str], rng: np.random.Generator) -> list[tuple[str, str | None]]:
    """(instruction, instance meant or None for absent) the frame answers besides its task: up to
    EXTRA_NAMED objects that a noun or a colour and a noun name alone, one category that is not there, and
    one that is there but not in the colour asked for (the harder refusal: the noun alone would match)."""
    categories = Counter(o.category for o in task.spec.objects)
    paints = Counter((o.kind.colour, o.category) for o in task.spec.objects)
    named = []
    for o in (task.spec.get(visible[i]) for i in rng.permutation(len(visible))):
        noun = noun_for(rng, o.category)
        if categories[o.category] == 1 and rng.random() < 0.5:
            named.append((sentence(rng, "train", noun), o.name))
        elif paints[o.kind.colour, o.category] == 1 and not held_out_colour(o.kind.colour, o.category):
            named.append((sentence(rng, "train", f"{o.kind.colour} {noun}"), o.name))
    missing = [c for c in CATALOGUE if c.name not in categories]
    absent = []
    if missing:
        category = missing[int(rng.integers(len(missing)))].name
        absent.append((sentence(rng, "train", noun_for(rng, category)), None))
    present = sorted(categories)
    category = present[int(rng.integers(len(present)))]
    unworn = [c for c in PALETTE if (c, category) not in paints and not held_out_colour(c, category)]
    if unworn:
        colour = unworn[int(rng.integers(len(unworn)))]
        absent.append((sentence(rng, "train", f"{colour} {noun_for(rng, category)}"), None))
    return named[:EXTRA_NAMED] + absent


def record_sim_demonstrations(out: str | Path, scenes: int, first_seed: int = 0, width: int = 640,
                               height: int = 480, append: bool = False, splits: tuple[str, ...] = TRAINING_SPLITS
                               ) -> dict:
    """Write `scenes` seeded task scenes' demonstrations to `out`, the scene of seed s a task of
    splits[s % len(splits)]; returns counts."""
    counts = {"frames": 0, "episodes": 0, "absent": 0}
    with DatasetWriter(out, source=EXPERT, base_frame=BASE_FRAME, append=append,
                       description=f"simulated table-top tasks ({', '.join(splits)}), seeds "
                                   f"{first_seed}..{first_seed + scenes - 1}, training wording") as writer:
        for seed in tqdm(range(first_seed, first_seed + scenes), desc="recording", unit="scene", file=sys.stderr):
            task = draw_task(splits[seed % len(splits)], seed, "train")
            rng = np.random.default_rng([seed, 23])
            with TabletopSim(task.spec, width=width, height=height) as sim:
                sim.settle()
                frame = sim.render()
                everything, masks = sim.ground_truth_all(frame)
                names = list(everything.phrases)
                index = writer.add_frame(recorded_frame(frame, sim, names, masks))
                counts["frames"] += 1
                relations = more_relations(task, rng)
                chosen = [relations[i] for i in rng.permutation(len(relations))[:MORE_RELATIONS]]
                for instruction, meant in [(task.instruction, task.target), *chosen,
                                           *_extra_instructions(task, names, rng)]:
                    about = {"seed": seed, "split": task.split, "expert": EXPERT}
                    if meant is None:
                        writer.add_absent(index, instruction, extra=about)
                        counts["absent"] += 1
                    elif meant in names:
                        writer.add_episode(index, instruction, sim.reference_grasp(meant),
                                           target_object=names.index(meant),
                                           extra={**about, "target": meant,
                                                  "symmetry": task.spec.get(meant).kind.grasp_symmetry})
                    else:
                        continue     # hidden behind another object: no demonstration
                    counts["episodes"] += 1
    return counts
