"""`dino-vla pretrain-backbone`: DINOv2 self-distillation of the features backbone on unlabelled frames (seeded,
resumable)."""
from __future__ import annotations

import argparse
import json
import sys

from dino_vla.commands.common import fail

RANDOM_TINY = "random-tiny"


def add_parser(subparsers) -> None:
    from dino_vla.adaptation.settings import BACKBONE_VIEWS, OBJECT_VIEWS
    from dino_vla.adaptation.settings import BackboneDistillation as S

    def default(name: str) -> str:
        """The help's note of a default that views=objects changes."""
        return f"default {getattr(S, name)}; {OBJECT_VIEWS[name]} with --views objects"

    p = subparsers.add_parser("pretrain-backbone", help="self-distil the DINOv2 backbone (DINOv2 recipe: EMA "
                              "teacher, multi-crop, iBOT, KoLeo; Gram anchoring from pretrained weights) on "
                              "unlabelled frames; the result loads as the features model and as train --backbone")
    p.add_argument("--data", required=True, help="a dataset directory (record-sim or the recorder node) or a "
                   "folder of images")
    p.add_argument("--out", "-o", required=True, help="output directory: a transformers Dinov2Model (the "
                   "teacher; safetensors + processor) with pretrain_backbone.json and the training state, written "
                   "every --save-every steps")
    p.add_argument("--views", choices=BACKBONE_VIEWS, default=S.views, help="frames: DINO's crops of windows of "
                   "frames; objects: objects cut out of a dataset's frames by depth, the teacher seeing each one "
                   "neutral (grey, flat background) and the student repainted on random backgrounds, so that it "
                   "learns to see past paint and background (the run measured in the README)")
    p.add_argument("--table-height", type=float, default=S.table_height_m, help="--views objects: the table's "
                   f"height in the dataset's base frame in metres (default {S.table_height_m}, the simulator's)")
    p.add_argument("--head-batch-norm", action=argparse.BooleanOptionalAction, default=None,
                   help=f"BatchNorm in the heads' MLP (DINO's use_bn_in_head; {default('head_batch_norm')})")
    p.add_argument("--model", default=RANDOM_TINY, help="DINOv2 to start from: random-tiny (offline; the default "
                   "here) or a hub id / local directory such as facebook/dinov2-small")
    p.add_argument("--steps", type=int, default=S.steps, help=f"optimiser steps in all (default {S.steps})")
    p.add_argument("--minutes", type=float, default=0.0, help="also stop after this much wall time (0: no limit)")
    p.add_argument("--batch-size", type=int, default=S.batch_size, help="frames per step (objects with --views "
                   "objects)")
    p.add_argument("--lr", type=float, default=None, help=f"peak learning rate after the warm-up "
                   f"({default('learning_rate')})")
    p.add_argument("--warmup-steps", type=int, default=S.warmup_steps)
    p.add_argument("--prototypes", type=int, default=S.prototypes, help="K, the heads' prototypes")
    p.add_argument("--centering", choices=("sinkhorn", "centre"), default=S.centering)
    p.add_argument("--teacher-momentum", type=float, default=S.teacher_momentum)
    p.add_argument("--teacher-temp-start", type=float, default=S.teacher_temperature_start)
    p.add_argument("--teacher-temp", type=float, default=None, help="teacher temperature after the warm-up "
                   f"({default('teacher_temperature')}; DINO's 0.07)")
    p.add_argument("--teacher-temp-warmup", type=int, default=S.teacher_temperature_warmup,
                   help="steps of the teacher temperature's linear warm-up")
    p.add_argument("--local-crops", type=int, default=S.local_crops)
    p.add_argument("--global-size", type=int, default=None, help="side of the global crops in pixels "
                   f"({default('global_size')})")
    p.add_argument("--local-size", type=int, default=None, help=default("local_size"))
    p.add_argument("--koleo", type=float, default=S.koleo_weight, help="KoLeo loss weight (0: off)")
    p.add_argument("--ibot", type=float, default=None, help=f"iBOT masked-patch loss weight, 0: off "
                   f"({default('ibot_weight')})")
    p.add_argument("--gram", type=float, default=None, help="Gram anchoring weight (default: 1 when --model is "
                   "pretrained, 0 from random weights, where there is nothing to anchor to)")
    p.add_argument("--max-frames", type=int, default=0, help="use at most this many frames (0: all)")
    p.add_argument("--save-every", type=int, default=S.save_every)
    p.add_argument("--seed", type=int, default=S.seed)
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:N (default cpu)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's choice)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out (to --steps in all)")
    p.set_defaults(main=main)


def main(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from dino_vla.adaptation.backbone import pretrain_backbone
    from dino_vla.adaptation.settings import backbone_distillation
    from dino_vla.dataset.format import DatasetError
    from dino_vla.models.loading import ModelUnavailableError
    from dino_vla.models.random_init import build_random_models, is_random_model
    from dino_vla.training_state import TrainingStateError

    if args.save_every < 1 or args.warmup_steps < 0 or args.teacher_temp_warmup < 0 \
            or (args.gram is not None and args.gram < 0):
        fail("--save-every must be >= 1, --warmup-steps, --teacher-temp-warmup and --gram >= 0")
    model = build_random_models("tiny", stages=("features",)).features if args.model == RANDOM_TINY else args.model
    if args.model == RANDOM_TINY and not args.resume:
        print("NOTICE: starting from a RANDOM-WEIGHT tiny DINOv2; pass --model facebook/dinov2-small (or a local "
              "copy) where the weights exist", file=sys.stderr, flush=True)
    gram = args.gram if args.gram is not None else (0.0 if is_random_model(model) else 1.0)
    settings = backbone_distillation(
        args.views, table_height_m=args.table_height, head_batch_norm=args.head_batch_norm, steps=args.steps,
        minutes=args.minutes, batch_size=args.batch_size, learning_rate=args.lr,
        warmup_steps=args.warmup_steps, prototypes=args.prototypes, centering=args.centering,
        teacher_momentum=args.teacher_momentum, teacher_temperature_start=args.teacher_temp_start,
        teacher_temperature=args.teacher_temp, teacher_temperature_warmup=args.teacher_temp_warmup,
        local_crops=args.local_crops, global_size=args.global_size, local_size=args.local_size,
        koleo_weight=args.koleo, ibot_weight=args.ibot, gram_weight=gram, max_frames=args.max_frames,
        save_every=args.save_every, seed=args.seed)
    bar = tqdm(total=args.steps, desc="pretrain-backbone", unit="step", file=sys.stderr)

    def progress(step: int, parts: dict) -> None:
        bar.n = step
        bar.set_postfix(loss=f"{parts['loss']:.3f}", H=f"{parts['teacher_entropy']:.2f}/{parts['log_k']:.2f}",
                        nn=f"{parts['nn_distance']:.3f}", koleo=f"{parts.get('koleo', 0):.2f}",
                        **({"collapse": parts["collapse"]} if parts["collapse"] else {}), refresh=False)
        bar.update(0)

    try:
        summary = pretrain_backbone(args.data, args.out, model, settings, resume=args.resume, device=args.device,
                                    threads=args.threads, progress=progress)
    except (DatasetError, TrainingStateError, ModelUnavailableError, ValueError) as err:
        fail(str(err))
    finally:
        bar.close()
    if summary["collapse"]:
        print(f"WARNING: the run ends collapsed ({summary['collapse']}: teacher entropy {summary['teacher_entropy']} "
              f"of log K {summary['log_k']}, nearest-neighbour distance {summary['nn_distance']})", file=sys.stderr)
    print(json.dumps(summary))
    return 0
