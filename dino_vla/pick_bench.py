"""`dino-vla bench-pick`: the pick decision (localise -> plan) driven by perception, run in the MuJoCo
table-top over N seeded scenes per target object with distractors. Prints success, wrong-object rate,
localisation error against the simulator's ground truth, planning time and end-to-end time per pick, and
the same scenes grasped by an oracle (the true object pose) as the baseline of the same run."""
from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from dino_vla.geometry.transforms import transform_from_pose
from dino_vla.instruction import parse_instruction
from dino_vla.pick import DepthFrame, PickFailure, PickPlanner, PickSettings
from dino_vla.sim.mujoco_sim import TabletopSim
from dino_vla.sim.scene import CAMERA_FRAME, random_scene
from dino_vla.sim.stand_in import SOURCE, ground_truth_perception

DEFAULT_TARGETS = ("cup", "bottle", "box", "block", "ball", "can")


@dataclass(frozen=True)
class Episode:
    target: str
    seed: int
    success: bool              # the target was lifted
    wrong_object: bool         # something else was lifted
    failure: str               # pick failure reason or the executor's reason; "" on success
    centroid_error_m: float | None   # localised box centre vs the object's true origin
    grasp_xy_error_m: float | None   # planned grasp point vs the object's true axis, horizontally
    planning_ms: float | None  # localise + plan
    pick_ms: float             # render + perceive + localise + plan + execute (simulated motion)
    oracle_success: bool       # the true-pose grasp in the same scene


def run_episode(target: str, seed: int, distractors: int, planner: PickPlanner, camera_pose, perceive
                ) -> Episode:
    query = parse_instruction(f"pick up the {target}")
    start = time.perf_counter()
    with TabletopSim(random_scene(seed, target=target, n_distractors=distractors)) as sim:
        sim.settle()
        frame = sim.render()
        detections, masks = perceive(sim, frame, query)
        t_plan = time.perf_counter()
        depth = DepthFrame(frame.depth, sim.intrinsics(), CAMERA_FRAME)
        truth = sim.object_poses()[target].translation
        try:
            plan = planner.plan(depth, detections, masks, query.target, camera_pose)
        except PickFailure as err:
            return Episode(target, seed, False, False, err.reason, None, None,
                           (time.perf_counter() - t_plan) * 1e3, (time.perf_counter() - start) * 1e3,
                           _oracle(sim, target))
        planning_ms = (time.perf_counter() - t_plan) * 1e3
        outcome = sim.execute(plan.grasp)
        pick_ms = (time.perf_counter() - start) * 1e3
        lifted = outcome.lifted_object if outcome.success else None
        oracle = _oracle(sim, target)
    return Episode(target, seed, lifted == target, lifted not in (None, target),
                   "" if lifted == target else (f"lifted {lifted}" if lifted else outcome.reason),
                   float(np.linalg.norm(plan.chosen.centroid - truth)),
                   float(np.linalg.norm(plan.grasp.position[:2] - truth[:2])), planning_ms, pick_ms, oracle)


def _oracle(sim: TabletopSim, target: str) -> bool:
    sim.reset()
    sim.settle()
    outcome = sim.execute(sim.reference_grasp(target))
    return outcome.success and outcome.lifted_object == target


def _median(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(float(np.median(values)), 4) if values else None


def summarise(episodes: list[Episode]) -> dict:
    n = len(episodes)
    return {
        "picks": n,
        "success_rate": round(sum(e.success for e in episodes) / n, 4),
        "wrong_object_rate": round(sum(e.wrong_object for e in episodes) / n, 4),
        "oracle_success_rate": round(sum(e.oracle_success for e in episodes) / n, 4),
        "median_centroid_error_cm": _round_cm(_median(e.centroid_error_m for e in episodes)),
        "median_grasp_xy_error_cm": _round_cm(_median(e.grasp_xy_error_m for e in episodes)),
        "median_planning_ms": _median(e.planning_ms for e in episodes),
        "median_pick_ms": _median(e.pick_ms for e in episodes),
        "failures": dict(sorted(_count(e.failure for e in episodes if not e.success).items())),
    }


def _round_cm(metres: float | None) -> float | None:
    return None if metres is None else round(metres * 100, 2)


def _count(items) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return out


def _perception(args, files):
    """(perceive function, label): the simulator's ground truth or the detector + segmenter models."""
    from dino_vla.cli import _choose_perception

    if not _choose_perception(args, files)[0]:
        return (lambda sim, frame, query: ground_truth_perception(sim, frame, query.phrases)), SOURCE
    from dino_vla.config import load_config
    from dino_vla.pipeline import PerceptionPipeline

    params = load_config(*files)
    pipeline = PerceptionPipeline.from_config(params, stages=("detector", "segmenter"))

    def perceive(sim, frame, query):
        detections = pipeline.detect(frame.rgb, query)
        return detections, pipeline.segment(frame.rgb, detections)

    return perceive, f"{params['detector']['model']} + {params['segmenter']['model']}"


def run_pick_benchmark(args) -> int:
    from dino_vla.cli import _config_files
    from dino_vla.config import load_config

    files = _config_files(args, ("perception.yaml", "pick.yaml", "sim.yaml"))
    params = load_config(*files)["pick"]
    planner = PickPlanner(PickSettings.from_params(params))
    camera_pose = transform_from_pose(params["camera_pose_in_target"], params["target_frame"], CAMERA_FRAME)
    perceive, source = _perception(args, files)
    targets = args.targets or DEFAULT_TARGETS
    print(f"bench-pick: {args.scenes} seeded scenes per target, {args.distractors} distractors, "
          f"perception: {source}", file=sys.stderr, flush=True)
    episodes: list[Episode] = []
    for target in targets:
        for seed in range(args.first_seed, args.first_seed + args.scenes):
            episodes.append(run_episode(target, seed, args.distractors, planner, camera_pose, perceive))
        s = summarise([e for e in episodes if e.target == target])
        print(f"  {target:8s} success {s['success_rate']:.0%}  wrong object {s['wrong_object_rate']:.0%}  "
              f"oracle {s['oracle_success_rate']:.0%}  centroid err {s['median_centroid_error_cm']} cm  "
              f"grasp xy err {s['median_grasp_xy_error_cm']} cm  plan {s['median_planning_ms']} ms  "
              f"pick {s['median_pick_ms']} ms  failures {s['failures']}", file=sys.stderr, flush=True)
    report = {
        "perception": source, "scenes_per_target": args.scenes, "distractors": args.distractors,
        "first_seed": args.first_seed,
        "per_target": {t: summarise([e for e in episodes if e.target == t]) for t in targets},
        "overall": summarise(episodes),
    }
    overall = report["overall"]
    report["success_vs_oracle"] = (round(overall["success_rate"] / overall["oracle_success_rate"], 4)
                                   if overall["oracle_success_rate"] else None)
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps({**report, "episodes": [asdict(e) for e in episodes]}, indent=2))
    return 0
