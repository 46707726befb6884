"""`eval`: the VLA policy and the geometric baseline on the same held-out simulated scenes.

Each scene (seeds disjoint from the training recordings by default) holds a random target and 2-5 distractors;
the instruction is a held-out paraphrase naming the target. The policy sees DINOv2 features of the rendered
image, every visible object's mask (class-agnostic: it must ground the words itself), depth and the camera
pose, and its grasp is executed in MuJoCo. The scene is then reset and the geometric baseline (PickPlanner,
the pick node's planner) grasps from the same frame, given the simulator's masks of exactly the objects the
parsed instruction names: perfect grounding, so its wrong-object rate shows what perfect perception gives."""
from __future__ import annotations

import time

from dino_vla.dataset.paraphrases import paraphrase
from dino_vla.evaluation.episodes import Episode, executed, refused, report, run_episodes
from dino_vla.geometry.depth import DepthFrame
from dino_vla.geometry.transforms import transform_from_pose
from dino_vla.instruction import parse_instruction
from dino_vla.models.features import DinoFeatures
from dino_vla.pick import PickFailure, PickPlanner, PickSettings
from dino_vla.evaluation.splits import policy_decision
from dino_vla.policy.runner import DEPTH, GraspPolicy, MaskFreePolicy, PolicyFailure, load_policy
from dino_vla.sim.mujoco_sim import TabletopSim
from dino_vla.sim.scene import CAMERA_FRAME, varied_scene
from dino_vla.sim.stand_in import ground_truth_perception

EVAL_FIRST_SEED = 1_000_000   # training recordings use seeds from 0: far apart
POLICY, BASELINE = "policy", "baseline"


def policy_episode(seed: int, policy: GraspPolicy | MaskFreePolicy, features: DinoFeatures, planner: PickPlanner,
                   camera_pose, paraphrases: str, grasp_geometry: str = DEPTH) -> Episode:
    spec, rng = varied_scene(seed)
    target = spec.target
    instruction, _ = paraphrase(target, rng, paraphrases)
    with TabletopSim(spec) as sim:
        sim.settle()
        frame = sim.render()
        depth = DepthFrame(frame.depth, sim.intrinsics(), CAMERA_FRAME)
        objects = len(sim.ground_truth_all(frame)[0])
        try:
            decision, chosen, decided_ms = policy_decision(policy, features, instruction, sim, frame, depth,
                                                           camera_pose, planner if grasp_geometry == DEPTH else None)
            by_policy = executed(sim.execute(decision.grasp), target, chosen == target, decided_ms,
                                 confidence=decision.confidence)
        except PolicyFailure as err:
            by_policy = refused(err.reason, confidence=None)
        sim.reset()
        sim.settle()
        query = parse_instruction(instruction)
        detections, named = ground_truth_perception(sim, frame, query.phrases)
        start = time.perf_counter()
        try:
            plan = planner.plan(depth, detections, named, query, camera_pose)
            planned_ms = (time.perf_counter() - start) * 1e3
            by_baseline = executed(sim.execute(plan.grasp), target, True, planned_ms)
        except PickFailure as err:
            # given the target's true masks, any refusal but "nothing named was there" still grounded it
            by_baseline = refused(err.reason, correct_object=err.reason != "no_object")
    return Episode(seed, target, instruction, objects, {POLICY: by_policy, BASELINE: by_baseline})


def evaluate(checkpoint: str, pick_params: dict, scenes: int = 100, first_seed: int = EVAL_FIRST_SEED,
             paraphrases: str = "eval", device: str = "cpu", progress: bool = True, grasp_geometry: str = DEPTH
             ) -> dict:
    """The policy in `checkpoint` (a directory) and the planner (pick node parameters `pick_params`) on
    `scenes` seeded scenes, instructions from the `paraphrases` templates; the report of evaluation.episodes
    (methods policy, baseline). grasp_geometry: a mask-free policy's (config.GRASP_GEOMETRIES)."""
    policy = load_policy(checkpoint, device=device)
    features = DinoFeatures.load(policy.backbone, device=device)
    planner = PickPlanner(PickSettings.from_params(pick_params))
    camera_pose = transform_from_pose(pick_params["camera_pose_in_target"], pick_params["target_frame"],
                                      CAMERA_FRAME)
    episodes = run_episodes(range(first_seed, first_seed + scenes),
                            lambda seed: policy_episode(seed, policy, features, planner, camera_pose, paraphrases,
                                                        grasp_geometry),
                            "evaluating", progress)
    return report(episodes, (POLICY, BASELINE), baseline=BASELINE, checkpoint=checkpoint, backbone=policy.backbone,
                  paraphrases=paraphrases, first_seed=first_seed,
                  **({"grasp_geometry": grasp_geometry} if isinstance(policy, MaskFreePolicy) else {}))
