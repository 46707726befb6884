"""`dino-vla eval-perception`: a segmenter's masks on a dataset's frames, prompted with the recorded instances'
boxes (mask IoU per object and overall; JSON)."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from dino_vla.commands.common import fail


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("eval-perception", help="score segmenter masks on a dataset's frames (each recorded "
                              "instance's box as the prompt): mean mask IoU, share >= 0.8, per object; JSON")
    p.add_argument("--data", required=True, help="dataset directory, frames never trained on (e.g. record-sim "
                   "--first-seed 900000)")
    p.add_argument("--segmenter", action="append", required=True, metavar="MODEL",
                   help="SAM hub id or directory; repeat to compare checkpoints on the same frames")
    p.add_argument("--crop-context", type=float, default=0.0, help="as the segmenter node's crop_context "
                   "(0: whole frames)")
    p.add_argument("--frames", type=int, default=0, help="score the first N frames (0: all)")
    p.add_argument("--json", help="write the scores to this file")
    p.add_argument("--device", default="cpu")
    p.set_defaults(main=main)


def main(args: argparse.Namespace) -> int:
    from dino_vla.adaptation.segmenter import evaluate_masks
    from dino_vla.dataset.format import Dataset, DatasetError
    from dino_vla.models.loading import ModelUnavailableError
    from dino_vla.models.segmenter import Segmenter

    if args.crop_context < 0 or args.frames < 0:
        fail("--crop-context and --frames must be >= 0")
    results = {}
    try:
        frames = Dataset(args.data).num_frames
        frames = list(range(min(frames, args.frames) if args.frames else frames))
        for source in args.segmenter:
            segmenter = Segmenter.load(source, args.device, "float32", args.crop_context)
            results[source] = asdict(evaluate_masks(args.data, segmenter, frames))
    except (DatasetError, ModelUnavailableError) as err:
        fail(str(err))
    print(f"{'segmenter':60s} {'masks':>6s} {'mean IoU':>9s} {'IoU>=0.8':>9s}")
    for source, r in results.items():
        print(f"{source[-60:]:60s} {r['instances']:6d} {r['mean_iou']:9.3f} {r['at_least_0_8']:9.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"data": args.data, "crop_context": args.crop_context,
                                               "frames": len(frames), "segmenters": results}, indent=2) + "\n")
        print(f"scores written to {args.json}", file=sys.stderr)
    return 0
