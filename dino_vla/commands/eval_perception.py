"""`dino-vla eval-perception`: a segmenter's masks on a dataset's frames, prompted with the recorded instances'
boxes (mask IoU per object and overall), and a detector's boxes (AP50 and recall per phrase, top-1 accuracy of
the recorded instructions' targets); JSON; several checkpoints on the same frames."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from dino_vla.commands.common import fail


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("eval-perception", help="score segmenter masks (each recorded instance's box as the "
                              "prompt: mean mask IoU, share >= 0.8, per object) and detector boxes (AP50, recall "
                              "per phrase, the instructions' target top-1) on a dataset's frames; JSON")
    p.add_argument("--data", required=True, help="dataset directory, frames never trained on (e.g. record-sim "
                   "--first-seed 900000)")
    p.add_argument("--segmenter", action="append", default=[], metavar="MODEL",
                   help="SAM hub id or directory; repeat to compare checkpoints on the same frames")
    p.add_argument("--detector", action="append", default=[], metavar="MODEL",
                   help="Grounding DINO hub id or directory (e.g. a finetune-detector output); repeat to compare")
    p.add_argument("--crop-context", type=float, default=0.0, help="as the segmenter node's crop_context "
                   "(0: whole frames)")
    p.add_argument("--box-threshold", type=float, default=0.35, help="score a box needs to count for recall, "
                   "as the detector node's box_threshold (AP50 and top-1 use every box; default 0.35)")
    p.add_argument("--frames", type=int, default=0, help="score the first N frames (0: all)")
    p.add_argument("--json", help="write the scores to this file")
    p.add_argument("--device", default="cpu")
    p.set_defaults(main=main)


def main(args: argparse.Namespace) -> int:
    from dino_vla.adaptation.detector import evaluate_boxes
    from dino_vla.adaptation.segmenter import evaluate_masks
    from dino_vla.dataset.format import Dataset, DatasetError
    from dino_vla.models.detector import GroundingDetector
    from dino_vla.models.loading import ModelUnavailableError
    from dino_vla.models.segmenter import Segmenter

    if args.crop_context < 0 or args.frames < 0 or not 0 <= args.box_threshold <= 1:
        fail("--crop-context and --frames must be >= 0, --box-threshold in [0, 1]")
    if not args.segmenter and not args.detector:
        fail("name at least one --segmenter or --detector to score")
    masks, boxes = {}, {}
    try:
        dataset = Dataset(args.data)
        frames = list(range(min(dataset.num_frames, args.frames) if args.frames else dataset.num_frames))
        for source in args.segmenter:
            segmenter = Segmenter.load(source, args.device, "float32", args.crop_context)
            masks[source] = asdict(evaluate_masks(args.data, segmenter, frames))
        for source in args.detector:
            detector = GroundingDetector.load(source, args.device, "float32", box_threshold=args.box_threshold)
            boxes[source] = asdict(evaluate_boxes(dataset, detector, frames))
    except (DatasetError, ModelUnavailableError) as err:
        fail(str(err))
    if masks:
        print(f"{'segmenter':60s} {'masks':>6s} {'mean IoU':>9s} {'IoU>=0.8':>9s}")
    for source, r in masks.items():
        print(f"{source[-60:]:60s} {r['instances']:6d} {r['mean_iou']:9.3f} {r['at_least_0_8']:9.3f}")
    if boxes:
        print(f"{'detector':60s} {'boxes':>6s} {'AP50':>6s} {'recall':>7s} {'top-1':>6s} {'instr':>6s}")
    for source, r in boxes.items():
        print(f"{source[-60:]:60s} {r['instances']:6d} {r['ap50']:6.3f} {r['recall']:7.3f} {r['target_top1']:6.3f} "
              f"{r['instructions']:6d}")
    if args.json:
        Path(args.json).write_text(json.dumps({"data": args.data, "crop_context": args.crop_context,
                                               "box_threshold": args.box_threshold, "frames": len(frames),
                                               "segmenters": masks, "detectors": boxes}, indent=2) + "\n")
        print(f"scores written to {args.json}", file=sys.stderr)
    return 0
