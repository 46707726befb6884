"""`dino-vla record-sim`: demonstrations of the simulator's scripted expert, in the dataset format."""
from __future__ import annotations

import argparse
import json

from dino_vla.commands.common import fail
from dino_vla.sim.tasks import TRAINING_SPLITS


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("record-sim", help="record demonstrations of the simulator's scripted expert on seeded "
                              "tasks (training splits and wording, absent objects included)")
    p.add_argument("--out", "-o", default="out/policy/demos", help="dataset directory (default out/policy/demos)")
    p.add_argument("-n", "--scenes", type=int, default=1000, help="scenes to record (default 1000)")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--append", action="store_true", help="add to an existing dataset")
    p.add_argument("--splits", default=",".join(TRAINING_SPLITS),
                   help="comma-separated task splits, one per scene in turn (default all: "
                   f"{','.join(TRAINING_SPLITS)})")
    p.set_defaults(main=main)


def main(args: argparse.Namespace) -> int:
    from dino_vla.dataset.format import DatasetError
    from dino_vla.dataset.sim_recording import record_sim_demonstrations

    if args.scenes < 1:
        fail("--scenes must be >= 1")
    splits = tuple(s.strip() for s in args.splits.split(",") if s.strip())
    unknown = [s for s in splits if s not in TRAINING_SPLITS]
    if unknown or not splits:
        fail(f"--splits: {', '.join(unknown) or 'none given'} not among the training splits "
             f"{', '.join(TRAINING_SPLITS)}")
    try:
        counts = record_sim_demonstrations(args.out, args.scenes, args.first_seed, append=args.append, splits=splits)
    except DatasetError as err:
        fail(str(err))
    print(json.dumps({"dataset": args.out, **counts}))
    return 0
