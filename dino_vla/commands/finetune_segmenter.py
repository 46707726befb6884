"""`dino-vla finetune-segmenter`: SAM fine-tuned on a dataset's instance masks (seeded, resumable)."""
from __future__ import annotations

import argparse
import json
import sys

from dino_vla.commands.common import fail

RANDOM_TINY = "random-tiny"


def add_parser(subparsers) -> None:
    from dino_vla.adaptation.settings import SegmenterTraining as S

    p = subparsers.add_parser("finetune-segmenter", help="fine-tune SAM on a dataset's instance masks (box prompts "
                              "from the masks; seeded, resumable); the result loads as the segmenter's model")
    p.add_argument("--data", required=True, help="dataset directory (record-sim or the recorder node)")
    p.add_argument("--out", "-o", required=True, help="output directory: a transformers SamModel (safetensors) "
                   "with finetune_segmenter.json and the training state, written every --validate-every steps")
    p.add_argument("--model", default=RANDOM_TINY, help="SAM to start from: random-tiny (offline; the default "
                   "here) or a hub id / local directory such as facebook/sam-vit-base")
    p.add_argument("--steps", type=int, default=S.steps, help=f"optimiser steps in all (default {S.steps})")
    p.add_argument("--minutes", type=float, default=0.0, help="also stop after this much wall time (0: no limit)")
    p.add_argument("--batch-size", type=int, default=S.batch_size)
    p.add_argument("--lr", type=float, default=S.learning_rate)
    p.add_argument("--crop-context", type=float, default=S.crop_context, help="each example a square crop this "
                   "many times its box (0: whole frames); set the segmenter node's crop_context to the same "
                   f"(default {S.crop_context})")
    p.add_argument("--train", choices=("all", "decoder"), default=S.train, help="all: every weight (needed from "
                   "random weights); decoder: mask decoder + prompt encoder, the image encoder frozen (pretrained "
                   "SAM on few frames)")
    p.add_argument("--max-frames", type=int, default=0, help="use at most this many frames (0: all)")
    p.add_argument("--validate-every", type=int, default=S.validate_every)
    p.add_argument("--seed", type=int, default=S.seed)
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:N (default cpu)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's choice)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out (to --steps in all)")
    p.set_defaults(main=main)


def main(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from dino_vla.adaptation.segmenter import finetune_segmenter
    from dino_vla.adaptation.settings import SegmenterTraining
    from dino_vla.dataset.format import DatasetError
    from dino_vla.models.loading import ModelUnavailableError
    from dino_vla.models.random_init import build_random_models
    from dino_vla.training_state import TrainingStateError

    if args.steps < 1 or args.batch_size < 1 or not args.lr > 0 or args.minutes < 0 or args.crop_context < 0 \
            or args.validate_every < 1 or args.max_frames < 0:
        fail("--steps, --batch-size and --validate-every must be >= 1, --lr > 0, --minutes, --crop-context and "
             "--max-frames >= 0")
    model = build_random_models("tiny", stages=("segmenter",)).segmenter if args.model == RANDOM_TINY else args.model
    if args.model == RANDOM_TINY and not args.resume:
        print("NOTICE: starting from a RANDOM-WEIGHT tiny SAM; pass --model facebook/sam-vit-base (or a local copy) "
              "where the weights exist", file=sys.stderr, flush=True)
    settings = SegmenterTraining(steps=args.steps, minutes=args.minutes, batch_size=args.batch_size,
                                 learning_rate=args.lr, crop_context=args.crop_context, train=args.train,
                                 validate_every=args.validate_every, seed=args.seed, max_frames=args.max_frames)
    bar = tqdm(total=args.steps, desc="finetune-segmenter", unit="step", file=sys.stderr)

    def progress(step: int, parts: dict) -> None:
        bar.n = step
        bar.set_postfix(loss=f"{parts['loss']:.3f}", iou=f"{parts['low_res_iou']:.2f}", refresh=False)
        bar.update(0)

    try:
        summary = finetune_segmenter(args.data, args.out, model, settings, resume=args.resume, device=args.device,
                                     threads=args.threads, progress=progress)
    except (DatasetError, TrainingStateError, ModelUnavailableError, ValueError) as err:
        fail(str(err))
    finally:
        bar.close()
    print(json.dumps(summary))
    return 0
