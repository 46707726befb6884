"""`bench-pick`: the pick decision (localise -> plan, the PickPlanner the pick node runs) driven by perception,
in the MuJoCo table-top over N seeded scenes per target object with distractors; beside it, in the same
scenes, an oracle grasp planned from the object's true pose. Localisation error is measured against the
simulator's ground truth."""
from __future__ import annotations

import time
from typing import Callable

import numpy as np

from dino_vla.evaluation.episodes import Attempt, Episode, executed, refused, report, run_episodes
from dino_vla.geometry.depth import DepthFrame
from dino_vla.geometry.transforms import transform_from_pose
from dino_vla.instruction import GroundingQuery, parse_instruction
from dino_vla.pick import PickFailure, PickPlanner, PickSettings
from dino_vla.sim.mujoco_sim import RenderedFrame, TabletopSim
from dino_vla.sim.scene import CAMERA_FRAME, random_scene
from dino_vla.sim.stand_in import SOURCE, ground_truth_perception
from dino_vla.types import Detections, Masks

DEFAULT_TARGETS = ("cup", "bottle", "box", "block", "ball", "can")
PLANNER, ORACLE = "planner", "oracle"

# (simulator, its rendered frame, the parsed instruction) -> what the planner is given
Perceive = Callable[[TabletopSim, RenderedFrame, GroundingQuery], tuple[Detections, Masks]]


def ground_truth_perception_of(sim: TabletopSim, frame: RenderedFrame, query: GroundingQuery
                               ) -> tuple[Detections, Masks]:
    return ground_truth_perception(sim, frame, query.phrases)


def model_perception(pipeline) -> Perceive:
    """The detector + segmenter of a PerceptionPipeline."""
    def perceive(sim: TabletopSim, frame: RenderedFrame, query: GroundingQuery) -> tuple[Detections, Masks]:
        detections = pipeline.detect(frame.rgb, query)
        return detections, pipeline.segment(frame.rgb, detections)

    return perceive


def segmenter_on_true_boxes(pipeline) -> Perceive:
    """The simulator's boxes of what the instruction names (a perfect detector), masked by the pipeline's
    segmenter: a segmenter's own effect on the pick, apart from detection."""
    def perceive(sim: TabletopSim, frame: RenderedFrame, query: GroundingQuery) -> tuple[Detections, Masks]:
        detections, _ = ground_truth_perception(sim, frame, query.phrases)
        return detections, pipeline.segment(frame.rgb, detections)

    return perceive


def pick_episode(target: str, seed: int, distractors: int, planner: PickPlanner, camera_pose,
                 perceive: Perceive) -> Episode:
    """The planner's pick of `target`, then (scene reset) the oracle's, in random_scene(seed, target)."""
    instruction = f"pick up the {target}"
    query = parse_instruction(instruction)
    start = time.perf_counter()
    with TabletopSim(random_scene(seed, target=target, n_distractors=distractors)) as sim:
        sim.settle()
        frame = sim.render()
        detections, masks = perceive(sim, frame, query)
        t_plan = time.perf_counter()
        depth = DepthFrame(frame.depth, sim.intrinsics(), CAMERA_FRAME)
        truth = sim.object_poses()[target].translation
        try:
            plan = planner.plan(depth, detections, masks, query, camera_pose)
        except PickFailure as err:
            planned = refused(err.reason, decision_ms=(time.perf_counter() - t_plan) * 1e3,
                              centroid_error_cm=None, grasp_xy_error_cm=None,
                              pick_ms=(time.perf_counter() - start) * 1e3)
        else:
            planning_ms = (time.perf_counter() - t_plan) * 1e3
            outcome = sim.execute(plan.grasp)
            planned = executed(outcome, target, seen_object(sim, frame, masks.masks[plan.detection_index]) == target,
                               planning_ms,
                               centroid_error_cm=100 * float(np.linalg.norm(plan.chosen.centroid - truth)),
                               grasp_xy_error_cm=100 * float(np.linalg.norm(plan.grasp.position[:2] - truth[:2])),
                               pick_ms=(time.perf_counter() - start) * 1e3)
        oracle = _oracle(sim, target)
        objects = len(sim.object_poses())
    return Episode(seed, target, instruction, objects, {PLANNER: planned, ORACLE: oracle})


def seen_object(sim: TabletopSim, frame: RenderedFrame, mask: np.ndarray) -> str | None:
    """The instance most of a mask's pixels show in the simulator's segmentation (None: table or background)."""
    ids = frame.segmentation[mask]
    ids = ids[ids > 0]
    if ids.size == 0:
        return None
    seg_id = int(np.bincount(ids).argmax())
    return next((name for name, i in sim.segmentation_ids.items() if i == seg_id), None)


def _oracle(sim: TabletopSim, target: str) -> Attempt:
    sim.reset()
    sim.settle()
    return executed(sim.execute(sim.reference_grasp(target)), target, True, None)


def run_pick_benchmark(pick_params: dict, targets: tuple[str, ...] = DEFAULT_TARGETS, scenes: int = 50,
                       first_seed: int = 0, distractors: int = 3, perceive: Perceive = ground_truth_perception_of,
                       perception: str = SOURCE, progress: bool = True) -> dict:
    """Every target picked in `scenes` seeded scenes by the planner (pick node parameters `pick_params`) on
    `perceive`'s masks, and by the oracle; the report of evaluation.episodes (methods planner, oracle)."""
    planner = PickPlanner(PickSettings.from_params(pick_params))
    camera_pose = transform_from_pose(pick_params["camera_pose_in_target"], pick_params["target_frame"],
                                      CAMERA_FRAME)
    episodes = [episode for target in targets
                for episode in run_episodes(range(first_seed, first_seed + scenes),
                                            lambda seed, t=target: pick_episode(t, seed, distractors, planner,
                                                                                camera_pose, perceive),
                                            f"bench-pick {target}", progress)]
    return report(episodes, (PLANNER, ORACLE), baseline=ORACLE, perception=perception, scenes_per_target=scenes,
                  distractors=distractors, first_seed=first_seed)
