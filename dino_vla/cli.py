"""`dino-vla`: run the perception pipeline on image files, benchmark it, evaluate and train the policy, or start
the node graph. Each subcommand lives in dino_vla/commands/."""
from __future__ import annotations

import argparse
import sys

from dino_vla.commands import (bench, bench_pick, detect, eval, eval_perception, finetune_detector,
                               finetune_segmenter, launch, parse, pretrain_backbone, probe_backbone, record_sim,
                               sim_pick, train)

COMMANDS = (sim_pick, detect, parse, bench, bench_pick, launch, record_sim, train, eval, finetune_segmenter,
            finetune_detector, eval_perception, pretrain_backbone, probe_backbone)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dino-vla", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.main(args)


if __name__ == "__main__":
    sys.exit(main())
