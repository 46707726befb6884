"""`dino-vla finetune-detector`: Grounding DINO trained on a dataset's boxes and phrases (seeded, resumable;
torchrun for several processes)."""
from __future__ import annotations

import argparse
import json
import os
import sys

from dino_vla.commands.common import fail
from dino_vla.commands.finetune_segmenter import RANDOM_TINY


def add_parser(subparsers) -> None:
    from dino_vla.adaptation.settings import DetectorTraining as S

    p = subparsers.add_parser("finetune-detector", help="train Grounding DINO on a dataset's boxes and phrases "
                              "(instance masks' boxes; nouns, synonyms, colours, the recorded instructions' "
                              "phrases; seeded, resumable; torchrun for DistributedDataParallel)")
    p.add_argument("--data", required=True, help="dataset directory (record-sim or the recorder node)")
    p.add_argument("--out", "-o", required=True, help="output directory: a transformers "
                   "GroundingDinoForObjectDetection (safetensors) with finetune_detector.json and the training "
                   "state, written every --validate-every steps")
    p.add_argument("--model", default=RANDOM_TINY, help="Grounding DINO to start from: random-tiny (offline; the "
                   "default here) or a hub id / local directory such as IDEA-Research/grounding-dino-tiny")
    p.add_argument("--steps", type=int, default=S.steps, help=f"optimiser steps in all (default {S.steps})")
    p.add_argument("--minutes", type=float, default=0.0, help="also stop after this much wall time (0: no limit)")
    p.add_argument("--batch-size", type=int, default=S.batch_size, help="images per step and process "
                   f"(default {S.batch_size})")
    p.add_argument("--lr", type=float, default=S.learning_rate)
    p.add_argument("--instruction-share", type=float, default=S.instruction_share, help="share of prompts made of "
                   "a recorded instruction's phrases; the others name the frame's objects "
                   f"(default {S.instruction_share})")
    p.add_argument("--max-frames", type=int, default=0, help="use at most this many frames (0: all)")
    p.add_argument("--validate-every", type=int, default=S.validate_every, help="checkpoint (and score boxes) "
                   f"every N steps (default {S.validate_every})")
    p.add_argument("--validation-data", help="dataset scored at each checkpoint (default: the frames split off "
                   "--data, never trained on)")
    p.add_argument("--validation-frames", type=int, default=S.validation_frames, help="frames scored at each "
                   f"checkpoint (0: none; default {S.validation_frames})")
    p.add_argument("--seed", type=int, default=S.seed)
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda (under torchrun: each process's "
                   "own GPU), cuda:N (default cpu)")
    p.add_argument("--no-amp", action="store_true", help="full float32 on CUDA too (default: bfloat16 autocast "
                   "on CUDA; CPUs always train in float32)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads per process (0: torch's choice)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out (to --steps in all)")
    p.set_defaults(main=main)


def main(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from dino_vla.adaptation.detector import finetune_detector
    from dino_vla.adaptation.settings import DetectorTraining
    from dino_vla.dataset.format import DatasetError
    from dino_vla.models.loading import ModelUnavailableError
    from dino_vla.models.random_init import build_random_models
    from dino_vla.training_state import TrainingStateError

    if args.steps < 1 or args.batch_size < 1 or not args.lr > 0 or args.minutes < 0 or args.validate_every < 1 \
            or args.max_frames < 0 or args.validation_frames < 0 or not 0 <= args.instruction_share <= 1:
        fail("--steps, --batch-size and --validate-every must be >= 1, --lr > 0, --minutes, --max-frames and "
             "--validation-frames >= 0, --instruction-share in [0, 1]")
    main_process = os.environ.get("RANK", "0") == "0"
    model = build_random_models("tiny", stages=("detector",)).detector if args.model == RANDOM_TINY else args.model
    if args.model == RANDOM_TINY and not args.resume and main_process:
        print("NOTICE: starting from a RANDOM-WEIGHT tiny Grounding DINO; pass --model "
              "IDEA-Research/grounding-dino-tiny (or a local copy) where the weights exist", file=sys.stderr,
              flush=True)
    settings = DetectorTraining(steps=args.steps, minutes=args.minutes, batch_size=args.batch_size,
                                learning_rate=args.lr, instruction_share=args.instruction_share,
                                validation_frames=args.validation_frames, validate_every=args.validate_every,
                                seed=args.seed, max_frames=args.max_frames, amp=not args.no_amp)
    bar = tqdm(total=args.steps, desc="finetune-detector", unit="step", file=sys.stderr, disable=not main_process)

    def progress(step: int, loss: float) -> None:
        bar.n = step
        bar.set_postfix(loss=f"{loss:.2f}", refresh=False)
        bar.update(0)

    try:
        summary = finetune_detector(args.data, args.out, model, settings, resume=args.resume, device=args.device,
                                    threads=args.threads, validation_data=args.validation_data, progress=progress)
    except (DatasetError, TrainingStateError, ModelUnavailableError, ValueError) as err:
        fail(str(err))
    finally:
        bar.close()
    if main_process:
        print(json.dumps(summary))
    return 0
