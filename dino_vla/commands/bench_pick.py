"""`dino-vla bench-pick`: pick success, wrong-object rate, localisation error and timings of the pick decision
over seeded simulated scenes, beside an oracle grasp of the true pose in the same scenes."""
from __future__ import annotations

import argparse
import sys

from dino_vla.commands.common import (TRAINED, add_config_option, add_perception_option, add_trained_options,
                                      choose_perception, fail, load_params, trained_models)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("bench-pick", help="pick success, wrong-object rate, localisation error and "
                              "timings over seeded simulated scenes, beside an oracle grasp")
    p.add_argument("-n", "--scenes", type=int, default=50, help="seeded scenes per target (default 50)")
    p.add_argument("--targets", nargs="+", help="catalogue objects to pick (default: cup bottle box block ball can)")
    p.add_argument("--distractors", type=int, default=3, help="other objects per scene (default 3)")
    p.add_argument("--first-seed", type=int, default=0)
    add_perception_option(p, extra=("true-boxes", TRAINED), extra_help="; true-boxes: the simulator's boxes of what "
                          "the instruction names (a perfect detector), masked by the configured segmenter; trained: "
                          "--detector and --segmenter (finetune-detector / finetune-segmenter outputs)")
    add_trained_options(p)
    add_config_option(p, ("perception.yaml", "pick.yaml", "sim.yaml"))
    p.add_argument("--json", help="also write the figures and every episode to this JSON file")
    p.set_defaults(main=main)


def main(args: argparse.Namespace) -> int:
    from dino_vla.evaluation.episodes import table_lines, write_json
    from dino_vla.evaluation.pick import (DEFAULT_TARGETS, ORACLE, PLANNER, ground_truth_perception_of,
                                          model_perception, run_pick_benchmark, segmenter_on_true_boxes)
    from dino_vla.models.loading import ModelUnavailableError
    from dino_vla.sim.scene import ORIGINAL_CATEGORIES, catalogue_object
    from dino_vla.sim.stand_in import SOURCE

    targets = tuple(args.targets or DEFAULT_TARGETS)
    for target in targets:
        try:
            catalogue_object(target)
        except ValueError as err:
            fail(str(err))
    if args.scenes < 1 or not 0 <= args.distractors < len(ORIGINAL_CATEGORIES):
        fail(f"--scenes must be >= 1 and --distractors in [0, {len(ORIGINAL_CATEGORIES) - 1}]")
    params = load_params(args)
    trained_models(args, params)
    if args.perception == "true-boxes":
        from dino_vla.pipeline import PerceptionPipeline

        try:
            pipeline = PerceptionPipeline.from_config(params, stages=("segmenter",))
        except ModelUnavailableError as err:
            fail(str(err))
        perceive = segmenter_on_true_boxes(pipeline)
        segmenter = params["segmenter"]
        source = f"simulator boxes + {segmenter['model']} (crop_context {segmenter['crop_context']:g})"
    elif choose_perception(args, params)[0]:
        from dino_vla.pipeline import PerceptionPipeline

        try:
            pipeline = PerceptionPipeline.from_config(params, stages=("detector", "segmenter"))
        except ModelUnavailableError as err:
            fail(str(err))
        perceive = model_perception(pipeline)
        segmenter = params["segmenter"]
        source = f"{params['detector']['model']} + {segmenter['model']} (crop_context {segmenter['crop_context']:g})"
    else:
        perceive, source = ground_truth_perception_of, SOURCE
    print(f"bench-pick: {args.scenes} seeded scenes per target, {args.distractors} distractors, "
          f"perception: {source}", file=sys.stderr, flush=True)
    result = run_pick_benchmark(params["pick"], targets, args.scenes, args.first_seed, args.distractors, perceive,
                                source)
    print("\n".join(table_lines(result, {PLANNER: "planner (localise + plan)", ORACLE: "oracle (true pose)"})))
    if args.json:
        write_json(result, args.json)
    return 0
