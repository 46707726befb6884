"""`dino-vla eval`: the VLA policy beside the geometric baseline on held-out seeded scenes and paraphrases."""
from __future__ import annotations

import argparse

from dino_vla.commands.common import add_config_option, add_device_option, fail, load_params
from dino_vla.config import GRASP_GEOMETRIES
from dino_vla.sim.tasks import SPLITS


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("eval", help="policy vs geometric baseline on held-out seeded sim scenes and held-out "
                              "paraphrases: success, correct-object and wrong-object rates, time per decision")
    p.add_argument("--checkpoint", default="shipped", help="checkpoint directory (default: the shipped one)")
    p.add_argument("-n", "--scenes", type=int, default=100, help="held-out scenes (default 100)")
    p.add_argument("--first-seed", type=int, default=1_000_000, help="first scene seed (default 1000000; "
                   "record-sim uses 0..)")
    p.add_argument("--paraphrases", choices=("eval", "train"), default="eval",
                   help="held-out (eval, default) or training sentence templates (without --split)")
    p.add_argument("--split", choices=(*SPLITS, "all"),
                   help="tasks where the words matter (sim.tasks): the policy and the geometric pick (stand-in "
                   "perception, resolving colour, size and relations itself) on the same scenes, one report per "
                   "split; 'all' runs every split")
    p.add_argument("--grasp-geometry", choices=GRASP_GEOMETRIES, default=GRASP_GEOMETRIES[0],
                   help="a mask-free policy's grasp pose: depth (default, as the policy node's grasp_geometry: "
                   "the geometric planner on the object the depth shows where the policy points) or learned (the "
                   "network's regressed offset there)")
    add_config_option(p, ("perception.yaml", "pick.yaml", "sim.yaml"))
    add_device_option(p, "cpu")
    p.add_argument("--json", help="also write every episode to this JSON file; with --split, a folder that gets "
                   "one <split>.json per split")
    p.set_defaults(main=main)


def main(args: argparse.Namespace) -> int:
    from dino_vla.evaluation.episodes import table_lines, write_json
    from dino_vla.evaluation.policy import BASELINE, evaluate
    from dino_vla.policy.checkpoint import CheckpointError, resolve_checkpoint
    from dino_vla.policy.runner import PolicyFailure

    if args.scenes < 1:
        fail("--scenes must be >= 1")
    params = load_params(args)["pick"]
    checkpoint = resolve_checkpoint(args.checkpoint)
    if args.split:
        return _splits(args, params, checkpoint)
    try:
        result = evaluate(checkpoint, params, args.scenes, args.first_seed, args.paraphrases, args.device,
                          grasp_geometry=args.grasp_geometry)
    except (CheckpointError, PolicyFailure) as err:
        fail(f"checkpoint {checkpoint!r}: {err}")
    print(f"eval: {args.scenes} held-out scenes (seeds {args.first_seed}..), 2-5 distractors, "
          f"{args.paraphrases} paraphrases, checkpoint {checkpoint}")
    print("\n".join(table_lines(result, {BASELINE: "geometric baseline (GT masks)"})))
    if args.json:
        write_json(result, args.json)
    return 0


def _splits(args: argparse.Namespace, params: dict, checkpoint: str) -> int:
    from pathlib import Path

    from dino_vla.evaluation.episodes import table_lines, write_json
    from dino_vla.evaluation.splits import GEOMETRIC, POLICY, evaluate_split, geometric_method, policy_method
    from dino_vla.geometry.transforms import transform_from_pose
    from dino_vla.models.features import DinoFeatures
    from dino_vla.pick import PickPlanner, PickSettings
    from dino_vla.policy.checkpoint import CheckpointError
    from dino_vla.policy.runner import DEPTH, MaskFreePolicy, PolicyFailure, load_policy
    from dino_vla.sim.scene import CAMERA_FRAME

    camera_pose = transform_from_pose(params["camera_pose_in_target"], params["target_frame"], CAMERA_FRAME)
    try:
        policy = load_policy(checkpoint, device=args.device)
        features = DinoFeatures.load(policy.backbone, device=args.device)
    except (CheckpointError, PolicyFailure) as err:
        fail(f"checkpoint {checkpoint!r}: {err}")
    planner = PickPlanner(PickSettings.from_params(params))
    methods = {POLICY: policy_method(policy, features, camera_pose,
                                     planner if args.grasp_geometry == DEPTH else None),
               GEOMETRIC: geometric_method(planner, camera_pose)}
    about = {"grasp_geometry": args.grasp_geometry} if isinstance(policy, MaskFreePolicy) else {}
    labels = {GEOMETRIC: "geometric pick (stand-in perception)"}
    for split in SPLITS if args.split == "all" else (args.split,):
        result = evaluate_split(split, methods, args.scenes, args.first_seed, checkpoint=checkpoint,
                                backbone=policy.backbone, **about)
        print(f"eval --split {split}: {args.scenes} held-out tasks (seeds {args.first_seed}..), "
              f"checkpoint {checkpoint}")
        print("\n".join(table_lines(result, labels)))
        if args.json:
            write_json(result, Path(args.json) / f"{split}.json")
    return 0
