"""`dino-vla probe-backbone`: k-NN accuracy by category of object crops from fresh simulator scenes whose objects
are all painted one colour per scene, so only shape tells the category (colour-blind); backbones compared on the
same crops."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from dino_vla.commands.common import fail

RANDOM_TINY = "random-tiny"


def add_parser(subparsers) -> None:
    from dino_vla.adaptation.settings import PROBE_PAINTS

    p = subparsers.add_parser("probe-backbone", help="colour-blind probe of DINOv2 backbones: k-NN accuracy by "
                              "category on crops of repainted simulator objects (category by shape)")
    p.add_argument("--backbone", action="append", required=True, metavar="MODEL",
                   help="DINOv2 hub id or directory, or random-tiny; repeat to compare on the same crops")
    p.add_argument("--scenes", type=int, default=150, help="simulator scenes to render (default 150): the first "
                   "two thirds the k-NN's references, the rest its queries")
    p.add_argument("--first-seed", type=int, default=7_000_000, help="seed of the first scene (held out from "
                   "record-sim's seeds)")
    p.add_argument("--paint", choices=PROBE_PAINTS, default="one", help="one: every object of a scene one colour drawn "
                   "per scene (colour-blind, the default); usual: the catalogue's colours (colour helps)")
    p.add_argument("-k", type=int, default=20, help="neighbours voting (default 20)")
    p.add_argument("--json", help="write the scores to this file")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's choice)")
    p.set_defaults(main=main)


def main(args: argparse.Namespace) -> int:
    import torch

    from dino_vla.adaptation.probe import probe, render_object_crops
    from dino_vla.models.features import DinoFeatures
    from dino_vla.models.loading import ModelUnavailableError
    from dino_vla.models.random_init import build_random_models

    if args.scenes < 2 or args.k < 1:
        fail("--scenes must be >= 2 and -k >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    crops = render_object_crops(args.scenes, args.first_seed, args.paint)
    results = {}
    try:
        for name in args.backbone:
            source = build_random_models("tiny", stages=("features",)).features if name == RANDOM_TINY else name
            results[name] = asdict(probe(DinoFeatures.load(source, args.device, "float32"), crops, k=args.k))
    except (ModelUnavailableError, ValueError) as err:
        fail(str(err))
    print(f"{'backbone':50s} {'refs':>5s} {'queries':>7s} {'k-NN CLS':>9s} {'k-NN patches':>13s} {'chance':>7s}")
    for name, r in results.items():
        print(f"{name[-50:]:50s} {r['references']:5d} {r['queries']:7d} {r['cls_accuracy']:9.3f} "
              f"{r['patch_accuracy']:13.3f} {r['chance']:7.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"scenes": args.scenes, "first_seed": args.first_seed,
                                               "paint": args.paint, "k": args.k, "backbones": results},
                                              indent=2) + "\n")
        print(f"scores written to {args.json}", file=sys.stderr)
    return 0
