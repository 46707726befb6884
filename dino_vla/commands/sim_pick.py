"""`dino-vla sim-pick`: the simulated robot and the pick graph over loopback DDS, one Pick goal, a visual record
and a summary."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dino_vla.commands.common import (TRAINED, add_config_option, add_dds_option, add_perception_option,
                                      add_trained_options, choose_perception, config_files, load_params,
                                      loopback_environment, on_ros_domain, trained_models)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("sim-pick", help="the simulated pick: MuJoCo table-top + the pick node graph over "
                              "loopback DDS, one Pick goal, a visual record and a summary")
    p.add_argument("--instruction", "-i", default="pick up the cup")
    p.add_argument("--seed", type=int, default=0, help="scene layout (default 0)")
    p.add_argument("--out", "-o", default="out/sim_pick", help="directory for the record (default out/sim_pick)")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for the pick result")
    add_perception_option(p, extra=(TRAINED,), extra_help="; trained: --detector and --segmenter "
                          "(finetune-detector / finetune-segmenter outputs)")
    add_trained_options(p)
    add_config_option(p, ("perception.yaml", "pick.yaml", "policy.yaml", "sim.yaml"))
    p.add_argument("--grasp-source", choices=("planner", "policy"), default="planner",
                   help="planner: the geometric grasp planner; policy: the VLA policy node (config/policy.yaml's "
                        "checkpoint, default the shipped one) on DINOv2 features and class-agnostic masks; a "
                        "mask-free checkpoint runs on the image and depth alone: no masks, no ground truth")
    p.add_argument("--policy-checkpoint", help="with --grasp-source policy: the checkpoint directory (default: "
                   "config/policy.yaml's)")
    p.add_argument("--device", help="torch device of the model nodes (auto, cpu, cuda, cuda:N)")
    add_dds_option(p)
    p.set_defaults(main=main)


def main(args: argparse.Namespace) -> int:
    from dino_vla.graph import is_mask_free, pick_graph_and_params, policy_checkpoint
    from dino_vla.policy.checkpoint import CheckpointError
    from dino_vla.ros.pick_client import pick_in_graph, write_record

    env = loopback_environment(args)
    files = config_files(args)
    if args.policy_checkpoint and args.grasp_source != "policy":
        print("dino-vla sim-pick: --policy-checkpoint needs --grasp-source policy", file=sys.stderr)
        return 1
    params = load_params(args)
    models = trained_models(args, params)
    try:
        mask_free = args.grasp_source == "policy" and is_mask_free(policy_checkpoint(files, args.policy_checkpoint))
        # a mask-free policy takes no masks: neither the models nor the simulator's stand-in for them run
        model_perception, banner = (False, None) if mask_free else choose_perception(args, params)
        specs, node_params = pick_graph_and_params(True, model_perception, args.grasp_source, files,
                                                   args.policy_checkpoint)
    except CheckpointError as err:
        print(f"dino-vla sim-pick: policy checkpoint: {err}", file=sys.stderr)
        return 1
    node_params["sim"]["seed"] = args.seed
    if model_perception:
        for stage, values in models.items():
            node_params.setdefault(stage, {}).update(values)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "nodes.log", "w") as log, on_ros_domain(args, env) as env:
        try:
            record = pick_in_graph(args.instruction, files, env, specs, node_params, log, args.timeout, args.device)
        except RuntimeError as err:
            print(f"dino-vla sim-pick: {err}; node logs in {out_dir / 'nodes.log'}", file=sys.stderr)
            return 1
    summary = write_record(record, out_dir, banner)
    print(json.dumps(summary, indent=2))
    return 0 if record.result.success else 3
