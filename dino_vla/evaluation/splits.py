"""`eval --split`: the policy and the geometric pick side by side on the same seeded tasks of sim.tasks, one
report per split.

Both are given what they would have on the robot, nothing more:
  * the policy: DINOv2 features of the rendered image, every visible object's mask (class-agnostic), depth and
    the camera pose, and the instruction;
  * the geometric pick (PickPlanner, the pick node's): the simulator's stand-in for the detector + segmenter
    on the instruction's phrases (every visible object whose category the phrase's noun names, labelled with
    the phrase, each mask with its paint), depth and the camera pose. Colour, size and relation are its own
    to resolve.
A method is right when it lifts the meant instance; on `absent`, when it refuses with no_object."""
from __future__ import annotations

import time
from typing import Callable

import numpy as np

from dino_vla.evaluation.episodes import Attempt, Episode, executed, expecting_refusal, refused, report, run_episodes
from dino_vla.evaluation.pick import seen_object
from dino_vla.geometry.depth import DepthFrame
from dino_vla.instruction import InstructionError, parse_instruction
from dino_vla.pick import PickFailure, PickPlanner
from dino_vla.sim.mujoco_sim import RenderedFrame, TabletopSim
from dino_vla.sim.scene import CAMERA_FRAME
from dino_vla.sim.stand_in import ground_truth_perception
from dino_vla.sim.tasks import Task, draw_task
from dino_vla.types import RigidTransform

GEOMETRIC, POLICY = "geometric", "policy"
ABSENT = "(absent)"

# (task, simulator, its frame, depth) -> the method's attempt (before execution is judged)
Method = Callable[[Task, TabletopSim, RenderedFrame, DepthFrame], Attempt]


def geometric_method(planner: PickPlanner, camera_pose: RigidTransform) -> Method:
    def attempt(task: Task, sim: TabletopSim, frame: RenderedFrame, depth: DepthFrame) -> Attempt:
        start = time.perf_counter()
        try:
            query = parse_instruction(task.instruction)
            detections, masks = ground_truth_perception(sim, frame, query.phrases)
            plan = planner.plan(depth, detections, masks, query, camera_pose)
        except InstructionError as err:
            return refused(getattr(err, "reason", "bad_instruction"))
        except PickFailure as err:
            return refused(err.reason, decision_ms=(time.perf_counter() - start) * 1e3)
        decided_ms = (time.perf_counter() - start) * 1e3
        chosen = seen_object(sim, frame, masks.masks[plan.detection_index])
        return executed(sim.execute(plan.grasp), task.target, chosen == task.target, decided_ms)

    return attempt


def policy_decision(policy, features, instruction: str, sim: TabletopSim, frame: RenderedFrame, depth: DepthFrame,
                    camera_pose: RigidTransform, planner: PickPlanner | None = None):
    """(the decision, the name of the object it chose, ms of features + decision) of either kind of policy
    (runner.load_policy) on a rendered frame, given what it takes on the robot: the object-token policy every
    visible object's mask (class-agnostic), the mask-free one the image and depth alone. Which object a
    mask-free grasp chose is the one the simulator's segmentation shows around the pixel it pointed at
    (scoring only: the policy never sees it). Raises PolicyFailure."""
    from dino_vla.policy.runner import MaskFreePolicy

    if isinstance(policy, MaskFreePolicy):
        start = time.perf_counter()
        decision = policy.decide(instruction, features.extract(frame.rgb), frame.rgb, depth, camera_pose,
                                 planner=planner)
        decided_ms = (time.perf_counter() - start) * 1e3
        u, v = decision.pixel
        rows, cols = np.ogrid[:frame.rgb.shape[0], :frame.rgb.shape[1]]
        pointed = (rows - v) ** 2 + (cols - u) ** 2 <= POINTED_RADIUS_PX ** 2
        return decision, seen_object(sim, frame, pointed), decided_ms
    everything, masks = sim.ground_truth_all(frame)
    start = time.perf_counter()
    decision = policy.decide(instruction, features.extract(frame.rgb), depth, masks, camera_pose, rgb=frame.rgb)
    return decision, everything.phrases[decision.object_index], (time.perf_counter() - start) * 1e3


POINTED_RADIUS_PX = 4


def policy_method(policy, features, camera_pose: RigidTransform, planner: PickPlanner | None = None) -> Method:
    """A policy of either kind (runner.load_policy) and the DinoFeatures of its backbone; a mask-free one
    takes its grasp's pose from `planner` where given (MaskFreePolicy.decide)."""
    from dino_vla.policy.runner import PolicyFailure

    def attempt(task: Task, sim: TabletopSim, frame: RenderedFrame, depth: DepthFrame) -> Attempt:
        start = time.perf_counter()
        try:
            decision, chosen, decided_ms = policy_decision(policy, features, task.instruction, sim, frame, depth,
                                                           camera_pose, planner)
        except PolicyFailure as err:
            return refused(err.reason, decision_ms=(time.perf_counter() - start) * 1e3)
        return executed(sim.execute(decision.grasp), task.target, chosen == task.target, decided_ms,
                        confidence=decision.confidence)

    return attempt


def task_episode(task: Task, methods: dict[str, Method]) -> Episode:
    """Every method on the task's scene in turn (the scene reset between them)."""
    attempts = {}
    with TabletopSim(task.spec) as sim:
        sim.settle()
        frame = sim.render()
        depth = DepthFrame(frame.depth, sim.intrinsics(), CAMERA_FRAME)
        for name, method in methods.items():
            sim.reset()
            sim.settle()
            attempt = method(task, sim, frame, depth)
            attempts[name] = attempt if task.target is not None else expecting_refusal(attempt)
    target = task.spec.get(task.target).category if task.target else ABSENT
    return Episode(task.spec.seed, target, task.instruction, len(task.spec.objects), attempts)


def evaluate_split(split: str, methods: dict[str, Method], scenes: int, first_seed: int,
                   progress: bool = True, **about) -> dict:
    """The report (evaluation.episodes) of every method on `scenes` tasks of `split` (eval wording)."""
    episodes = run_episodes(range(first_seed, first_seed + scenes),
                            lambda seed: task_episode(draw_task(split, seed, "eval"), methods),
                            f"eval {split}", progress)
    return report(episodes, tuple(methods), split=split, first_seed=first_seed, **about)
