"""`dino-vla eval`: the policy and the geometric baseline on the same held-out simulated scenes.

Each scene (seeds disjoint from the training recordings by default) holds a random target and 2-5 distractors;
the instruction is a held-out paraphrase naming the target. The policy sees DINOv2 features of the rendered
image, every visible object's mask (class-agnostic: it must ground the words itself), depth and the camera
pose, and its grasp is executed in MuJoCo. The scene is then reset and the geometric baseline (PickPlanner,
the pick node's planner) grasps from the same frame, given the simulator's masks of exactly the objects the
parsed instruction names: perfect grounding, so its wrong-object rate shows what perfect perception gives."""
from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dino_vla.geometry.transforms import transform_from_pose
from dino_vla.instruction import parse_instruction
from dino_vla.models.features import DinoFeatures
from dino_vla.pick import DepthFrame, PickFailure, PickPlanner, PickSettings
from dino_vla.policy.language import paraphrase
from dino_vla.policy.runner import GraspPolicy, PolicyFailure
from dino_vla.policy.sim_expert import class_agnostic, scene_layout
from dino_vla.sim.mujoco_sim import TabletopSim
from dino_vla.sim.scene import CAMERA_FRAME
from dino_vla.sim.stand_in import ground_truth_perception
from dino_vla.types import Masks

EVAL_FIRST_SEED = 1_000_000   # training recordings use seeds from 0: far apart


@dataclass(frozen=True)
class Trial:
    seed: int
    target: str
    instruction: str
    objects: int
    policy_success: bool
    policy_correct_object: bool      # the pointer chose the target's mask
    policy_wrong_lift: bool          # something other than the target was lifted
    policy_failure: str
    policy_confidence: float | None
    policy_ms: float | None          # DINOv2 features + tokens + network
    baseline_success: bool
    baseline_correct_object: bool
    baseline_wrong_lift: bool
    baseline_failure: str
    baseline_ms: float | None        # localise + plan (ground-truth masks cost nothing here)


def _lifted(outcome, target: str) -> tuple[bool, bool, str]:
    lifted = outcome.lifted_object if outcome.success else None
    return lifted == target, lifted not in (None, target), ("" if lifted == target else
                                                            f"lifted {lifted}" if lifted else outcome.reason)


def run_trial(seed: int, policy: GraspPolicy, features: DinoFeatures, planner: PickPlanner, camera_pose,
              split: str) -> Trial:
    spec, rng = scene_layout(seed)
    target = spec.target
    instruction, _ = paraphrase(target, rng, split)
    with TabletopSim(spec) as sim:
        sim.settle()
        frame = sim.render()
        depth = DepthFrame(frame.depth, sim.intrinsics(), CAMERA_FRAME)
        names, masks = class_agnostic(frame, sim)
        start = time.perf_counter()
        try:
            decision = policy.decide(instruction, features.extract(frame.rgb), depth,
                                     Masks(masks, np.ones(len(masks), np.float32)), camera_pose)
            policy_ms = (time.perf_counter() - start) * 1e3
            success, wrong, failure = _lifted(sim.execute(decision.grasp), target)
            policy = (success, names[decision.object_index] == target, wrong, failure, decision.confidence, policy_ms)
        except PolicyFailure as err:
            policy = (False, False, False, err.reason, None, None)
        sim.reset()
        sim.settle()
        query = parse_instruction(instruction)
        detections, gt_masks = ground_truth_perception(sim, frame, query.phrases)
        start = time.perf_counter()
        try:
            plan = planner.plan(depth, detections, gt_masks, query.target, camera_pose)
            baseline_ms = (time.perf_counter() - start) * 1e3
            success, wrong, failure = _lifted(sim.execute(plan.grasp), target)
            baseline = (success, True, wrong, failure, baseline_ms)
        except PickFailure as err:
            baseline = (False, err.reason not in ("no_object",), False, err.reason, None)
    return Trial(seed, target, instruction, len(names), *policy, *baseline)


def _rate(flags) -> float:
    flags = list(flags)
    return round(sum(flags) / len(flags), 4) if flags else 0.0


def _median(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(float(np.median(values)), 2) if values else None


def summarise(trials: list[Trial]) -> dict:
    out = {"scenes": len(trials)}
    for who in ("policy", "baseline"):
        failures: dict[str, int] = {}
        for t in trials:
            reason = getattr(t, f"{who}_failure")
            if reason:
                failures[reason] = failures.get(reason, 0) + 1
        out[who] = {"success_rate": _rate(getattr(t, f"{who}_success") for t in trials),
                    "correct_object_rate": _rate(getattr(t, f"{who}_correct_object") for t in trials),
                    "wrong_object_rate": _rate(getattr(t, f"{who}_wrong_lift") for t in trials),
                    "median_decision_ms": _median(getattr(t, f"{who}_ms") for t in trials),
                    "failures": dict(sorted(failures.items()))}
    return out


def evaluate(checkpoint: str, scenes: int, first_seed: int, params: dict, split: str = "eval",
             device: str = "cpu", progress: bool = True) -> dict:
    policy = GraspPolicy.load(checkpoint, device=device)
    features = DinoFeatures.load(policy.backbone, device=device)
    planner = PickPlanner(PickSettings.from_params(params))
    camera_pose = transform_from_pose(params["camera_pose_in_target"], params["target_frame"], CAMERA_FRAME)
    trials = [run_trial(seed, policy, features, planner, camera_pose, split)
              for seed in tqdm(range(first_seed, first_seed + scenes), desc="evaluating", unit="scene",
                               file=sys.stderr, disable=not progress)]
    targets = sorted({t.target for t in trials})
    return {"checkpoint": checkpoint, "backbone": policy.backbone, "paraphrases": split,
            "first_seed": first_seed, "overall": summarise(trials),
            "per_target": {name: summarise([t for t in trials if t.target == name]) for name in targets},
            "trials": [asdict(t) for t in trials]}


def report_lines(report: dict) -> list[str]:
    lines = [f"{'':10s} {'policy':>34s}   {'geometric baseline (GT masks)':>34s}",
             f"{'target':10s} {'n':>3s} {'success':>8s} {'correct':>8s} {'wrong':>6s} {'ms':>6s}   "
             f"{'success':>8s} {'correct':>8s} {'wrong':>6s} {'ms':>6s}"]
    rows = [*report["per_target"].items(), ("overall", report["overall"])]
    for name, s in rows:
        p, b = s["policy"], s["baseline"]
        lines.append(f"{name:10s} {s['scenes']:3d} {p['success_rate']:8.1%} {p['correct_object_rate']:8.1%} "
                     f"{p['wrong_object_rate']:6.1%} {p['median_decision_ms'] or 0:6.1f}   "
                     f"{b['success_rate']:8.1%} {b['correct_object_rate']:8.1%} {b['wrong_object_rate']:6.1%} "
                     f"{b['median_decision_ms'] or 0:6.1f}")
    o = report["overall"]
    p, b = o["policy"], o["baseline"]
    if b["success_rate"] and b["median_decision_ms"] and p["median_decision_ms"]:
        lines.append(f"policy / baseline: success x{p['success_rate'] / b['success_rate']:.3f}, time per decision "
                     f"x{p['median_decision_ms'] / b['median_decision_ms']:.1f} (policy time includes DINOv2 features)")
    lines.append(f"failures: policy {p['failures']}, baseline {b['failures']}")
    return lines


def write_report(report: dict, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(report, indent=2))
