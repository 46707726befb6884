"""Demonstrations from the simulator's scripted expert: seeded table-top scenes with 2-5 distractors; every
visible object becomes the target of one episode (a paraphrased instruction naming it), and the expert's
grasp is the geometric grasp of its true pose (TabletopSim.reference_grasp: TCP at the object's origin,
closing across its grasp side, opened 3 cm wider than it). Masks are the simulator's instance segmentation."""
from __future__ import annotations

import sys
from pathlib import Path

from tqdm import tqdm

from dino_vla.dataset.format import DatasetWriter, RecordedFrame
from dino_vla.dataset.paraphrases import paraphrase
from dino_vla.sim.mujoco_sim import RenderedFrame, TabletopSim
from dino_vla.sim.scene import BASE_FRAME, MAX_DISTRACTORS, MIN_DISTRACTORS, varied_scene
from dino_vla.types import Masks

EXPERT = "sim reference_grasp (true object pose)"


def recorded_frame(frame: RenderedFrame, sim: TabletopSim, names: list[str], masks: Masks) -> RecordedFrame:
    return RecordedFrame(frame.rgb, frame.depth, masks.label_image(), tuple(names), sim.intrinsics(),
                         sim.camera_pose())


def record_sim_demonstrations(out: str | Path, scenes: int, first_seed: int = 0, width: int = 640,
                               height: int = 480, append: bool = False) -> dict:
    """Write `scenes` seeded scenes' demonstrations to `out`; returns counts."""
    counts = {"frames": 0, "episodes": 0}
    with DatasetWriter(out, source=EXPERT, base_frame=BASE_FRAME, append=append,
                       description=f"simulated table-top picks, seeds {first_seed}..{first_seed + scenes - 1}, "
                                   f"{MIN_DISTRACTORS}-{MAX_DISTRACTORS} distractors, training paraphrases") as writer:
        for seed in tqdm(range(first_seed, first_seed + scenes), desc="recording", unit="scene", file=sys.stderr):
            spec, rng = varied_scene(seed)
            with TabletopSim(spec, width=width, height=height) as sim:
                sim.settle()
                frame = sim.render()
                everything, masks = sim.ground_truth_all(frame)
                names = list(everything.phrases)
                index = writer.add_frame(recorded_frame(frame, sim, names, masks))
                counts["frames"] += 1
                for k, name in enumerate(names):
                    instruction, drawn = paraphrase(name, rng, "train")
                    writer.add_episode(index, instruction, sim.reference_grasp(name), target_object=k,
                                       extra={"seed": seed, "target": name, "expert": EXPERT,
                                              "symmetry": spec.get(name).kind.grasp_symmetry, **drawn})
                    counts["episodes"] += 1
    return counts
